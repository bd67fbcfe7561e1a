"""Quantity sources: constants, headers, byte counts, duration, callables."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.quantities import (
    QUANTITY_EXPECTED,
    ResponseInfo,
    compile_quantity,
    parse_number,
    parse_quantity_spec,
)


class View:
    native = "req"

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def query(self, name: str) -> str | None:
        return None

    def state(self, name: str) -> object | None:
        return None

    def user(self) -> object | None:
        return None


def info(headers: Any = None, view: View | None = None, **kwargs: Any) -> ResponseInfo:
    values: dict[str, Any] = {
        "status": 200,
        "request_bytes": 11,
        "response_bytes": 222,
        "duration_ms": 3.5,
        "completed": True,
        "error": False,
    }
    values.update(kwargs)
    return ResponseInfo(
        view or View(),
        values["status"],
        headers,
        values["request_bytes"],
        values["response_bytes"],
        values["duration_ms"],
        values["completed"],
        values["error"],
    )


def tokens(request: object, response: ResponseInfo) -> int:
    return len(str(request)) + response.response_bytes


def value_of(spec: Any, response: ResponseInfo) -> object:
    compiled = compile_quantity(spec)
    if compiled.constant is not None:
        return compiled.constant
    assert compiled.source is not None
    return compiled.source(response)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (1, 1),
        (2.5, 2.5),
        (Decimal("0.001"), Decimal("0.001")),
        ("3", 3),
        ("response_bytes", "response_bytes"),
        ("request_bytes", "request_bytes"),
        ("duration_ms", "duration_ms"),
        ("response_header:X-Tokens-Used", "response_header:X-Tokens-Used"),
        ("request_header:Content-Length", "request_header:Content-Length"),
        ("myapp.billing.tokens", "callable:myapp.billing.tokens"),
        ("callable:myapp.billing.tokens", "callable:myapp.billing.tokens"),
    ],
)
def test_parse(spec: Any, expected: Any) -> None:
    assert parse_quantity_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", [0, -1, True, None, float("nan"), float("inf"), "lots", "response_header:", "a b", []]
)
def test_parse_errors(spec: Any) -> None:
    with pytest.raises(ValueError, match=r"expected a number > 0|not a valid header"):
        parse_quantity_spec(spec)
    with pytest.raises(ConfigError):
        compile_quantity(spec, "quantity")


def test_error_text_is_the_documented_one() -> None:
    assert QUANTITY_EXPECTED == (
        "expected a number > 0, a source such as 'response_header:X-Tokens-Used', "
        "or a dotted path to a callable"
    )


def test_sources() -> None:
    response = info({"X-Tokens-Used": "42"}, View({"X-Units": "7"}))
    assert value_of(5, response) == 5
    assert value_of("response_header:X-Tokens-Used", response) == "42"
    assert value_of("response_header:x-tokens-used", response) == "42"
    assert value_of("response_header:X-Missing", response) is None
    assert value_of("request_header:X-Units", response) == "7"
    assert value_of("response_bytes", response) == 222
    assert value_of("request_bytes", response) == 11
    assert value_of("duration_ms", response) == 3.5
    assert value_of(tokens, response) == 3 + 222
    assert value_of(f"{__name__}.tokens", response) == 225


def test_response_header_sources() -> None:
    assert info({"x-tokens-used": "1"}).header("X-Tokens-Used") == "1"
    assert info({"X-TOKENS-USED": "2"}).header("x-tokens-used") == "2"
    assert info(lambda name: name.upper()).header("a") == "A"
    assert info(None).header("a") is None
    assert info().request == "req"
    assert "status=200" in repr(info())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (5, 5),
        ("5", 5),
        (" 12 ", 12),
        ("1.5", 1.5),
        (b"3", 3),
        (Decimal("2.50"), Decimal("2.50")),
        ("1e3", 1000.0),
        (True, None),
        ("", None),
        ("abc", None),
        ("nan", None),
        (float("inf"), None),
        (None, None),
        ([1], None),
    ],
)
def test_parse_number(raw: Any, expected: Any) -> None:
    assert parse_number(raw) == expected
