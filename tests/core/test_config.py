"""load_config(): YAML with line numbers, interpolation, overrides, validation messages."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from fluxrate_web.core.config import Config, MeterSpec, is_token, load_config
from fluxrate_web.core.errors import ConfigError

TOKEN_A = "550e8400-e29b-41d4-a716-446655440000"
TOKEN_B = "650e8400-e29b-41d4-a716-446655440001"


def write(tmp_path: Path, text: str, name: str = "fluxrate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, **kwargs: object) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


ISSUE_EXAMPLE = f"""
api_key: ${{FLUXRATE_API_KEY}}
base_url: https://api.fluxrate.co
meters:
  api_calls: {TOKEN_A}
  ai_tokens: ${{FLUXRATE_TOKENS_METER}}
  images: {TOKEN_B}
customer: header:X-Customer-Id        # default resolver
bill_on: 2xx                          # which responses are billed
exclude: [/health, /metrics, /static/*]
default_meter: api_calls              # optional: every route not excluded
endpoints:
  - route: /v1/items/{{item_id}}
    methods: [GET]
    meter: api_calls
  - route: /v1/chat/completions
    methods: [POST]
    meters:
      - meter: api_calls
      - meter: ai_tokens
        quantity: response_header:X-Tokens-Used
  - route: /v1/images/*
    meter: images
    customer: user:organization.external_id
  - route: /v1/free
    skip: true
"""

ENV = {"FLUXRATE_API_KEY": "org_live_secret", "FLUXRATE_TOKENS_METER": TOKEN_B}


def test_issue_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ISSUE_EXAMPLE), env=ENV)
    assert config.api_key == "org_live_secret"
    assert config.base_url == "https://api.fluxrate.co"
    assert config.meters["api_calls"] == MeterSpec("api_calls", TOKEN_A)
    assert config.meters["ai_tokens"].token == TOKEN_B
    assert config.customer == ("header:X-Customer-Id",)
    assert config.bill_on == "2xx"
    assert config.exclude == ("/health", "/metrics", "/static/*")
    assert config.default_meter == "api_calls"
    assert len(config.endpoints) == 4
    chat = config.endpoints[1]
    assert chat.methods == frozenset({"POST"})
    assert [m.meter for m in chat.meters] == ["api_calls", "ai_tokens"]
    assert chat.meters[1].quantity == "response_header:X-Tokens-Used"
    assert config.endpoints[2].customer == ("user:organization.external_id",)
    assert config.endpoints[3].skip
    assert config.source.endswith("fluxrate.yaml")


def test_api_key_never_in_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ISSUE_EXAMPLE), env=ENV)
    assert "org_live_secret" not in repr(config)
    assert "org_live_secret" not in str(config.describe())
    assert config.describe()["api_key"] == "set"


def test_error_names_file_line_and_key(tmp_path: Path) -> None:
    text = f"""
    meters:
      api_calls: {TOKEN_A}
    customer: header:X-Customer-Id
    endpoints:
      - route: /a
        meter: api_calls
      - route: /b
        meter: api_calls
      - route: /c
        meter: api_calls
        quantity: lots
    """
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'fluxrate.yaml'}:11: endpoints[2].quantity: ")
    assert "expected a number > 0, a source such as 'response_header:X-Tokens-Used'" in message
    assert "or a dotted path to a callable" in message


def test_relative_path_in_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "meters:\n  api_calls: 5\nbil_on: 2xx\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("fluxrate.yaml")
    assert str(info.value) == (
        "fluxrate.yaml:3: bil_on: unknown key 'bil_on' (did you mean 'bill_on'?)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("meters: [a, b]\n", "fluxrate.yaml:1: meters: expected a mapping of meter names"),
        ("meters:\n  a: x y\n", "fluxrate.yaml:2: meters.a: a meter token has no spaces"),
        (
            "meters:\n  a: ${EMPTY:-}\n",
            "fluxrate.yaml:2: meters.a: empty meter token",
        ),
        ("default_meter: nope\n", "fluxrate.yaml:1: default_meter: unknown meter 'nope'"),
        (
            "meters:\n  api_calls: t\ndefault_meter: api_cals\n",
            "fluxrate.yaml:3: default_meter: unknown meter 'api_cals' (did you mean 'api_calls'?)",
        ),
        ("bill_on: 7xx\n", "fluxrate.yaml:1: bill_on: expected 'any', a status class"),
        ("customer: cookie:sid\n", "fluxrate.yaml:1: customer: expected a customer resolver"),
        ("customer: 'header:'\n", "fluxrate.yaml:1: customer: 'header:' needs a name"),
        ("on_missing_customer: maybe\n", "fluxrate.yaml:1: on_missing_customer: expected 'skip'"),
        ("max_attempts: 0\n", "fluxrate.yaml:1: max_attempts: expected a whole number >= 1"),
        ("request_timeout: soon\n", "fluxrate.yaml:1: request_timeout: expected a number of"),
        ("base_url: api.fluxrate.co\n", "fluxrate.yaml:1: base_url: expected an http:// or"),
        ("endpoints: {}\n", "fluxrate.yaml:1: endpoints: expected a list of rules"),
        (
            "endpoints:\n  - methods: [GET]\n",
            "fluxrate.yaml:2: endpoints[0]: a rule needs 'route:'",
        ),
        (
            "endpoints:\n  - route: /a\n",
            "fluxrate.yaml:2: endpoints[0]: a rule needs 'meter:' or 'meters:'",
        ),
        (
            "endpoints:\n  - route: /a\n    skip: true\n    meter: x\n",
            "fluxrate.yaml:4: endpoints[0].meter: a rule with 'skip: true' bills nothing",
        ),
        (
            "meters: {a: t}\nendpoints:\n  - route: /a\n    meters: [a]\n    quantity: 2\n",
            "fluxrate.yaml:5: endpoints[0].quantity: with 'meters:', put 'quantity:' under each",
        ),
        (
            "meters: {a: t}\nendpoints:\n  - route: /a\n    meter: a\n    metod: GET\n",
            "fluxrate.yaml:5: endpoints[0].metod: unknown key 'metod' (did you mean 'method",
        ),
        ("api_key: 1\napi_key: 2\n", "fluxrate.yaml:2: api_key: duplicate key (first defined"),
        ("- a\n- b\n", "fluxrate.yaml:1: expected a mapping of settings at the top level"),
        ("a: [\n", "fluxrate.yaml:2: invalid YAML"),
        ("api_key: ${NOPE_NOT_SET_X}\n", "fluxrate.yaml:1: api_key: environment variable"),
        ("api_key: ${1BAD}\n", "fluxrate.yaml:1: api_key: bad environment reference"),
        ("api_key: !!python/object:os.system x\n", "fluxrate.yaml:1: api_key: unsupported tag"),
        ("api_key: !custom x\n", "fluxrate.yaml:1: api_key: unsupported tag !custom"),
        ("---\na: 1\n---\nb: 2\n", "fluxrate.yaml:4: expected one YAML document"),
        (
            "meters:\n  a: {token: t, aggregation: AVG}\n",
            "fluxrate.yaml:2: meters.a.aggregation: expected one of SUM, MAX, UNIQUE_COUNT, LAST",
        ),
        (
            "meters:\n  a: {aggregation: SUM}\n",
            "fluxrate.yaml:2: meters.a: missing 'token'",
        ),
    ],
)
def test_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fluxrate.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config("fluxrate.yaml", env={})
    assert str(info.value).startswith(expected), str(info.value)


def test_not_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fluxrate.yaml").write_bytes(b"api_key: a\nbase_url: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"^fluxrate\.yaml:2: not valid UTF-8"):
        load_config("fluxrate.yaml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "# nothing\n"))
    assert config.meters == {}
    assert config.customer == ()
    assert config.idempotency_header == "Idempotency-Key"
    assert config.on_missing_customer == "skip"


def test_interpolation(tmp_path: Path) -> None:
    text = """
    api_key: ${KEY}
    base_url: ${BASE:-http://127.0.0.1:8000}
    max_attempts: ${ATTEMPTS:-3}
    allow_insecure: ${INSECURE:-true}
    failed_events_path: "${DIR}/failed-$${literal}.jsonl"
    meters:
      quoted: "${NUMBERISH}"
    """
    env = {"KEY": "org_live_k", "DIR": "/var/fx", "NUMBERISH": "1234"}
    config = load_config(write(tmp_path, text), env=env)
    assert config.api_key == "org_live_k"
    assert config.base_url == "http://127.0.0.1:8000"
    assert config.max_attempts == 3
    assert config.allow_insecure is True
    assert config.failed_events_path == "/var/fx/failed-${literal}.jsonl"
    assert config.meters["quoted"].token == "1234"


def test_interpolation_uses_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FX_TEST_KEY", "org_live_env")
    config = load_config(write(tmp_path, "api_key: ${FX_TEST_KEY}\n"))
    assert config.api_key == "org_live_env"


def test_empty_default_allowed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "api_key: ${NOT_SET_ANYWHERE:-}\n"), env={})
    assert config.api_key is None


def test_env_value_cannot_inject_yaml(tmp_path: Path) -> None:
    env = {"EVIL": "x\nbill_on: any"}
    config = load_config(write(tmp_path, "api_key: ${EVIL}\n"), env=env)
    assert config.api_key == "x\nbill_on: any"
    assert config.bill_on == "2xx"


def test_fluxrate_config_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, f"meters:\n  api_calls: {TOKEN_A}\n")
    monkeypatch.setenv("FLUXRATE_CONFIG", str(path))
    assert load_config().meters["api_calls"].token == TOKEN_A
    monkeypatch.delenv("FLUXRATE_CONFIG")
    assert load_config().meters == {}


def test_overrides_win_and_accept_upper_case(tmp_path: Path) -> None:
    path = write(tmp_path, f"api_key: from_file\nbill_on: 2xx\nmeters:\n  api_calls: {TOKEN_A}\n")
    config = load_config(
        path,
        overrides={"API_KEY": "from_settings", "BILL_ON": ["2xx", 304]},
        overrides_name="settings.FLUXRATE",
    )
    assert config.api_key == "from_settings"
    assert config.bill_on == "2xx,304"
    assert config.meters["api_calls"].token == TOKEN_A
    assert "settings.FLUXRATE" in config.source


def test_override_error_names_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            overrides={"METERS": {"a": TOKEN_A}, "DEFAULT_METER": "b"},
            overrides_name="settings.FLUXRATE",
        )
    assert str(info.value).startswith("settings.FLUXRATE: DEFAULT_METER: unknown meter 'b'")
    with pytest.raises(ConfigError, match=r"^settings.FLUXRATE: API_KEYS: unknown key"):
        load_config(overrides={"API_KEYS": "x"}, overrides_name="settings.FLUXRATE")


def test_config_key_in_overrides_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"meters:\n  api_calls: {TOKEN_A}\n")
    config = load_config(overrides={"CONFIG": str(path), "customer": "header:X-Org"})
    assert config.meters["api_calls"].token == TOKEN_A
    assert config.customer == ("header:X-Org",)


def test_overrides_accept_python_objects() -> None:
    def who(request: object) -> str:
        return "c"

    def tokens(request: object, response: object) -> int:
        return 3

    config = load_config(
        overrides={
            "meters": {"api_calls": TOKEN_A},
            "customer": [who, "header:X-Customer-Id"],
            "endpoints": [{"route": "/x", "meter": "api_calls", "quantity": tokens}],
        }
    )
    assert config.customer[0] is who
    assert config.endpoints[0].meters[0].quantity is tokens


def test_client_kwargs(tmp_path: Path) -> None:
    text = """
    api_key: org_live_k
    base_url: http://127.0.0.1:9/
    allow_insecure: true
    verify: false
    max_queue_size: 10
    max_in_flight: 2
    max_attempts: 3
    max_retry_age: 2m
    request_timeout: 500ms
    shutdown_timeout: 0
    failed_events_path: /tmp/failed.jsonl
    """
    kwargs = load_config(write(tmp_path, text)).client_kwargs()
    assert kwargs == {
        "api_key": "org_live_k",
        "base_url": "http://127.0.0.1:9",
        "access_token": None,
        "allow_insecure": True,
        "verify": False,
        "max_queue_size": 10,
        "max_in_flight": 2,
        "max_attempts": 3,
        "max_retry_age": 120.0,
        "request_timeout": 0.5,
        "shutdown_timeout": 0.0,
        "failed_events_path": "/tmp/failed.jsonl",
    }


def test_client_kwargs_match_fluxrate_client_signature() -> None:
    client_module = pytest.importorskip("fluxrate_web.core.client")
    import inspect

    params = inspect.signature(client_module.FluxrateClient).parameters
    for name in Config().client_kwargs():
        assert name in params, f"FluxrateClient has no parameter {name!r}"


def test_meter_forms(tmp_path: Path) -> None:
    text = f"""
    meters:
      plain: {TOKEN_A}
      agg: {{token: {TOKEN_B}, aggregation: sum, window: 30s}}
      agg_default_window: {{token: t2, aggregation: MAX}}
    endpoints:
      - route: /by-token
        meter: {TOKEN_B}
    """
    config = load_config(write(tmp_path, text))
    assert config.meters["agg"] == MeterSpec("agg", TOKEN_B, "SUM", 30.0)
    assert config.meters["agg_default_window"].window == 60.0
    assert config.endpoints[0].meters[0].meter == TOKEN_B
    assert config.meter(TOKEN_B) == MeterSpec(TOKEN_B, TOKEN_B)
    assert config.meter("nope") is None
    assert is_token(TOKEN_A)
    assert not is_token("api_calls")


def test_bill_on_forms(tmp_path: Path) -> None:
    for value, expected in [
        ("2xx", "2xx"),
        ("2xx,3xx", "2xx,3xx"),
        ("[200, 201]", "200,201"),
        ("any", "any"),
        ("'200-204'", "200-204"),
        ("201", "201"),
    ]:
        config = load_config(write(tmp_path, f"bill_on: {value}\n"))
        assert config.bill_on == expected, value


def test_idempotency_header_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "idempotency_header: null\n")).idempotency_header is None
    assert load_config(write(tmp_path, "idempotency_header: false\n")).idempotency_header is None
    config = load_config(write(tmp_path, "idempotency_header: X-Request-ID\n"))
    assert config.idempotency_header == "X-Request-ID"


def test_locations_point_at_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ISSUE_EXAMPLE), env=ENV)
    assert config.where("customer") == f"{tmp_path / 'fluxrate.yaml'}:7: customer"
    assert config.endpoints[2].where == f"{tmp_path / 'fluxrate.yaml'}:21"


def test_merge_keys_and_anchors(tmp_path: Path) -> None:
    text = f"""
    meters:
      api_calls: {TOKEN_A}
    endpoints:
      - &base
        route: /a
        meter: api_calls
        methods: [GET]
      - <<: *base
        route: /b
    """
    config = load_config(write(tmp_path, text))
    assert config.endpoints[1].route == "/b"
    assert config.endpoints[1].methods == frozenset({"GET"})


def test_recursive_alias_is_an_error(tmp_path: Path) -> None:
    message = error_of(tmp_path, "a: &x [*x]\n")
    assert ":1: " in message
    assert "recursive alias" in message


def test_does_not_touch_os_environ(tmp_path: Path) -> None:
    before = dict(os.environ)
    load_config(write(tmp_path, "api_key: ${SOME_UNSET_VAR:-x}\n"))
    assert dict(os.environ) == before


def test_aggregation_window_bounds_and_client_kwargs(tmp_path: Path) -> None:
    from fluxrate_web.core.aggregation import AggregationSpec

    message = error_of(
        tmp_path, f"meters:\n  a:\n    token: {TOKEN_A}\n    aggregation: SUM\n    window: 2d\n"
    )
    assert message.endswith(":5: meters.a.window: expected between 1ms and 1 day")
    config = load_config(
        write(
            tmp_path,
            f"meters:\n  a: {{token: {TOKEN_A}, aggregation: max, window: 5m}}\n  b: {TOKEN_B}\n",
        )
    )
    assert config.client_kwargs()["aggregation"] == {TOKEN_A: AggregationSpec("MAX", 300.0)}
    assert (
        "aggregation"
        not in load_config(write(tmp_path, f"meters:\n  b: {TOKEN_B}\n")).client_kwargs()
    )
