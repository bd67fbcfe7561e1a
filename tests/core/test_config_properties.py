"""Property-based tests of the loader: any document yields a Config or a ConfigError that names
the file and a line, never any other exception."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxrate_web.core.config import Config, load_config
from fluxrate_web.core.errors import ConfigError

FILE = "fluxrate.yaml"
LOCATED = re.compile(r"^fluxrate\.yaml:(\d+): ")

TOP_KEYS = [
    "api_key", "base_url", "meters", "customer", "bill_on", "exclude", "default_meter",
    "endpoints", "on_missing_customer", "idempotency_header", "max_attempts", "request_timeout",
    "bill_on_disconnect", "allow_insecure", "verify", "bil_on", "METERS",
]  # fmt: skip
RULE_KEYS = ["route", "name", "methods", "meter", "meters", "quantity", "customer", "skip",
             "bill_on", "metadata", "rout"]  # fmt: skip
WORDS = [
    "api_calls", "ai_tokens", "550e8400-e29b-41d4-a716-446655440000", "header:X-Customer-Id",
    "user:org.id", "response_header:X-Tokens-Used", "2xx", "any", "GET", "/v1/items/{id}",
    "/static/*", "${FLUXRATE_API_KEY}", "${UNSET_VAR}", "${X:-5}", "reject", "skip", "10s",
    "myapp.billing.tokens", "", " ", "-1", "0", "true", "null", "~", "{", "[", ":", "&a", "*a",
    "!tag", "%", "@", "`", "\t", "é", "\x00", "\ufeff",
]  # fmt: skip

scalars = st.one_of(
    st.sampled_from(WORDS),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)


def values(depth: int) -> st.SearchStrategy[Any]:
    if depth <= 0:
        return scalars
    inner = values(depth - 1)
    rule = st.dictionaries(st.sampled_from(RULE_KEYS), inner, max_size=5)
    return st.one_of(
        scalars,
        st.lists(st.one_of(inner, rule), max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(WORDS), st.text(max_size=6)), inner, max_size=4),
    )


documents = st.dictionaries(st.sampled_from(TOP_KEYS), values(3), max_size=8)


def check(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / FILE
    path.write_bytes(data)
    try:
        config = load_config(path, env={})
    except ConfigError as exc:
        message = str(exc)
        prefix = f"{path}:"
        assert message.startswith(prefix), message
        rest = message[len(prefix) :]
        line = int(rest.split(":", 1)[0])
        # YAML line breaks: \r\n, \r, \n, NEL, LS, PS
        text = data.decode("utf-8", "replace")
        lines = len(re.findall("\r\n|[\r\n\x85\u2028\u2029]", text)) + 1
        assert 1 <= line <= lines, message
        return
    assert isinstance(config, Config)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(documents)
def test_structured_documents(tmp_path: Path, document: dict[str, Any]) -> None:
    try:
        text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return
    check(tmp_path, text.encode("utf-8"))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(tmp_path: Path, data: bytes) -> None:
    check(tmp_path, data)


yaml_chars = st.sampled_from(list(":-[]{}&*!|>'\"%@`#,?\n \t" + string.ascii_letters[:6] + "12$"))


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(yaml_chars, max_size=80).map("".join))
def test_yaml_ish_text(tmp_path: Path, text: str) -> None:
    check(tmp_path, text.encode("utf-8"))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(documents, st.integers(min_value=0, max_value=400), st.sampled_from([*WORDS, "\n", "  "]))
def test_corrupted_documents(tmp_path: Path, document: dict[str, Any], at: int, junk: str) -> None:
    try:
        text = yaml.safe_dump(document, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return
    at = min(at, len(text))
    check(tmp_path, (text[:at] + junk + text[at:]).encode("utf-8"))


def test_line_of_a_deep_error(tmp_path: Path) -> None:
    text = (
        "meters:\n  a: 550e8400-e29b-41d4-a716-446655440000\nendpoints:\n"
        + "".join(f"  - route: /r{i}\n    meter: a\n" for i in range(20))
        + "  - route: /bad\n    meter: a\n    quantity: -3\n"
    )
    path = tmp_path / FILE
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    match = LOCATED.match(str(info.value).replace(str(tmp_path) + "/", ""))
    assert match is not None
    assert int(match.group(1)) == 46
    assert "endpoints[20].quantity" in str(info.value)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_overrides_documents(document: dict[str, Any]) -> None:
    message = ""
    try:
        config = load_config(overrides=document, overrides_name="settings.FLUXRATE", env={})
    except ConfigError as exc:
        message = str(exc)
    else:
        assert isinstance(config, Config)
    assert not message or message.startswith("settings.FLUXRATE"), message
