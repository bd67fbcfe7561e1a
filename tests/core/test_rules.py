"""RequestRules: route normalisation, matching, precedence, exemptions."""

from __future__ import annotations

from typing import Any

import pytest

from fluxrate_web.core.config import load_config
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.rules import RequestRules, meter, normalize_route

A = "550e8400-e29b-41d4-a716-446655440000"
B = "650e8400-e29b-41d4-a716-446655440001"
C = "750e8400-e29b-41d4-a716-446655440002"


def rules(**overrides: Any) -> RequestRules:
    base: dict[str, Any] = {
        "meters": {"api_calls": A, "ai_tokens": B, "images": C},
        "customer": "header:X-Customer-Id",
    }
    base.update(overrides)
    return RequestRules(load_config(overrides=base))


def names(plan: Any) -> list[str]:
    return [m.name for m in plan.meters]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/v1/items/{item_id}", "/v1/items/{}"),
        ("/v1/items/{item_id:int}", "/v1/items/{}"),
        ("/v1/files/{path:path}", "/v1/files/{}"),
        ("v1/items/<int:pk>/", "/v1/items/{}"),
        ("v1/items/<pk>/", "/v1/items/{}"),
        ("/v1/items/<int:item_id>", "/v1/items/{}"),
        ("/v1/items/<path:rest>/", "/v1/items/{}"),
        ("^v1/items/(?P<pk>[0-9]+)/$", "/v1/items/{}"),
        (r"^articles/(?P<year>[0-9]{4})/(?P<slug>[\w-]+)\.html$", "/articles/{}/{}.html"),
        ("", "/"),
        ("/", "/"),
        ("admin/", "/admin"),
        ("//double//slash/", "/double/slash"),
    ],
)
def test_normalize_route(template: str, expected: str) -> None:
    assert normalize_route(template) == expected


def test_one_rule_matches_every_framework_template() -> None:
    r = rules(endpoints=[{"route": "/v1/items/{item_id}", "meter": "ai_tokens"}])
    for template in ("/v1/items/{item_id}", "v1/items/<int:pk>/", "/v1/items/<int:item_id>"):
        assert names(r.plan(template, "GET")) == ["ai_tokens"], template
    assert names(r.plan("/v1/items", "GET")) == []
    assert names(r.plan("/v1/items/{id}/parts", "GET")) == []


def test_django_style_rule_matches_starlette_template() -> None:
    r = rules(endpoints=[{"route": "v1/items/<int:pk>/", "meter": "ai_tokens"}])
    assert names(r.plan("/v1/items/{item_id}", "GET")) == ["ai_tokens"]


def test_globs() -> None:
    r = rules(
        endpoints=[{"route": "/v1/images/*", "meter": "images"}],
        exclude=["/static/*", "/health"],
        default_meter="api_calls",
    )
    assert names(r.plan("/v1/images/{id}", "POST")) == ["images"]
    assert names(r.plan("/v1/images/{id}/variants/{v}", "POST")) == ["images"]
    assert names(r.plan("/v1/images", "POST")) == ["api_calls"]
    assert r.plan("/static/{path:path}", "GET").exempt
    assert r.plan("/health", "GET").exempt
    assert r.plan("/health/", "GET").exempt
    assert names(r.plan("/healthz", "GET")) == ["api_calls"]


def test_methods_filter() -> None:
    r = rules(
        endpoints=[
            {"route": "/chat", "methods": ["post"], "meter": "ai_tokens"},
            {"route": "/chat", "meter": "images"},
        ]
    )
    assert names(r.plan("/chat", "POST")) == ["ai_tokens"]
    assert names(r.plan("/chat", "get")) == ["images"]


def test_first_matching_rule_wins() -> None:
    r = rules(
        endpoints=[
            {"route": "/v1/*", "meter": "api_calls"},
            {"route": "/v1/images/*", "meter": "images"},
        ]
    )
    assert names(r.plan("/v1/images/{id}", "GET")) == ["api_calls"]


def test_match_by_name() -> None:
    r = rules(
        endpoints=[
            {"name": "items-detail", "meter": "images"},
            {"name": "admin:*", "meter": "ai_tokens"},
            {"route": "/x", "name": "x-view", "meter": "api_calls"},
        ]
    )
    assert names(r.plan("whatever/<int:pk>/", "GET", name="items-detail")) == ["images"]
    assert names(r.plan("/a", "GET", name="admin:index")) == ["ai_tokens"]
    assert names(r.plan("/x", "GET", name="x-view")) == ["api_calls"]
    assert names(r.plan("/x", "GET", name="other")) == []
    assert names(r.plan("/y", "GET", name="x-view")) == []


def test_skip_rule_beats_earlier_rules() -> None:
    r = rules(
        endpoints=[
            {"route": "/v1/*", "meter": "api_calls"},
            {"route": "/v1/free", "skip": True},
        ],
        default_meter="api_calls",
    )
    plan = r.plan("/v1/free", "GET")
    assert plan.exempt
    assert plan.meters == ()
    assert names(r.plan("/v1/paid", "GET")) == ["api_calls"]


def test_default_meter_not_on_404() -> None:
    r = rules(default_meter="api_calls")
    assert names(r.plan("/anything", "GET")) == ["api_calls"]
    assert r.plan(None, "GET").meters == ()


def test_decorator_beats_yaml_and_default() -> None:
    @meter("images")
    def view() -> None: ...

    r = rules(endpoints=[{"route": "/a", "meter": "ai_tokens"}], default_meter="api_calls")
    plan = r.plan("/a", "GET", view)
    assert names(plan) == ["images"]
    assert "view" in plan.source


def test_exclusion_beats_decorator() -> None:
    @meter("images")
    def view() -> None: ...

    r = rules(exclude=["/health"], endpoints=[{"route": "/free", "skip": True}])
    assert r.plan("/health", "GET", view).exempt
    assert r.plan("/free", "GET", view).exempt


def test_exempt_beats_everything() -> None:
    @meter.exempt
    @meter("images")
    def view() -> None: ...

    r = rules(endpoints=[{"route": "/a", "meter": "ai_tokens"}], default_meter="api_calls")
    plan = r.plan("/a", "GET", view)
    assert plan.exempt
    assert plan.meters == ()


def test_stacked_decorators_all_apply() -> None:
    @meter("api_calls")
    @meter("ai_tokens", quantity="response_header:X-Tokens-Used")
    def view() -> None: ...

    plan = rules().plan("/a", "POST", view)
    assert sorted(names(plan)) == ["ai_tokens", "api_calls"]


def test_unknown_meter_in_decorator_names_the_function() -> None:
    @meter("api_callz")
    def list_items() -> None: ...

    with pytest.raises(ConfigError) as info:
        rules().plan("/a", "GET", list_items)
    message = str(info.value)
    assert "list_items" in message
    assert "unknown meter 'api_callz' (did you mean 'api_calls'?)" in message


def test_decorator_with_token_needs_no_meters_entry() -> None:
    @meter(C)
    def view() -> None: ...

    assert [m.token for m in rules(meters={}).plan("/a", "GET", view).meters] == [C]


def test_handler_and_class_rules() -> None:
    class ItemView:
        @meter("images")
        def get(self) -> None: ...

        def post(self) -> None: ...

    def as_view() -> None: ...

    as_view.view_class = ItemView  # type: ignore[attr-defined]
    r = rules(default_meter="api_calls")
    assert names(r.plan("/i", "GET", as_view, handler=ItemView.get)) == ["images"]
    assert names(r.plan("/i", "POST", as_view, handler=ItemView.post)) == ["api_calls"]

    @meter("ai_tokens")
    class Whole:
        def get(self) -> None: ...

    def whole_view() -> None: ...

    whole_view.view_class = Whole  # type: ignore[attr-defined]
    assert names(r.plan("/w", "GET", whole_view, handler=Whole.get)) == ["ai_tokens"]


def test_disabled_config_bills_nothing() -> None:
    r = rules(default_meter="api_calls", enabled=False)
    assert r.plan("/a", "GET").meters == ()


def test_bad_callable_path_fails_at_compile() -> None:
    with pytest.raises(ConfigError) as info:
        rules(endpoints=[{"route": "/a", "meter": "api_calls", "quantity": "nowhere_x.tokens"}])
    assert "cannot import 'nowhere_x.tokens'" in str(info.value)
    with pytest.raises(ConfigError, match="cannot import"):
        rules(customer="callable:nowhere_x.customer")


def test_rule_customer_and_bill_on() -> None:
    r = rules(
        endpoints=[
            {
                "route": "/img",
                "meter": "images",
                "customer": "query:org",
                "bill_on": "any",
            }
        ]
    )
    plan = r.plan("/img", "GET")
    assert plan.resolver.description == "query:org"
    assert plan.is_billable(500, True, False)
    default_plan = r.plan("/other", "GET")
    assert default_plan.resolver.description == "header:X-Customer-Id"


def test_describe_rows() -> None:
    r = rules(
        endpoints=[
            {"route": "/a", "methods": ["GET"], "meter": "api_calls"},
            {"route": "/b", "meters": [{"meter": "ai_tokens", "quantity": "response_bytes"}]},
            {"route": "/c", "skip": True},
        ]
    )
    rows = r.describe()
    assert rows[0]["methods"] == "GET"
    assert rows[1]["meters"] == "ai_tokens x response_bytes"
    assert rows[2]["meters"] == "(skip)"
