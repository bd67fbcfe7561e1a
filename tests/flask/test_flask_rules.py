"""Which meters a Flask request bills: url_rule templates, endpoint names, blueprints,
``@meter`` on views and MethodView methods, ``@fluxrate.exempt``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from flask import Blueprint, Flask
from flask.views import MethodView, View
from fluxrate_flask_support import CUSTOMER, AppFactory, RecordingClient, extension_of

from fluxrate_web.core.errors import ConfigError
from fluxrate_web.flask import meter


def test_config_rule_matches_the_url_rule_template(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app(
        endpoints=[
            {"route": "/v1/items/{id}", "methods": ["GET"], "meter": "api_calls"},
            {"route": "/v1/items/{id}", "methods": ["PUT"], "meter": "api_calls", "quantity": 3},
        ]
    )

    @app.route("/v1/items/<int:item_id>", methods=["GET", "PUT", "DELETE"])
    def item(item_id: int) -> str:
        return "ok"

    client = app.test_client()
    client.get("/v1/items/1", headers=CUSTOMER)
    client.put("/v1/items/2", headers=CUSTOMER)
    client.delete("/v1/items/3", headers=CUSTOMER)
    assert recorder.billed() == [("api_calls", "cus_1", 1), ("api_calls", "cus_1", 3)]


def test_flask_style_template_in_config(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(endpoints=[{"route": "/v1/items/<int:item_id>", "meter": "api_calls"}])

    @app.get("/v1/items/<int:item_id>")
    def item(item_id: int) -> str:
        return "ok"

    app.test_client().get("/v1/items/9", headers=CUSTOMER)
    assert len(recorder.events) == 1


def test_config_rule_by_endpoint_name(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(endpoints=[{"name": "reports.*", "meter": "api_calls", "quantity": 10}])
    reports = Blueprint("reports", __name__, url_prefix="/reports")

    @reports.get("/monthly")
    def monthly() -> str:
        return "ok"

    @app.get("/other")
    def other() -> str:
        return "ok"

    app.register_blueprint(reports)
    client = app.test_client()
    client.get("/reports/monthly", headers=CUSTOMER)
    client.get("/other", headers=CUSTOMER)
    assert recorder.billed() == [("api_calls", "cus_1", 10)]


def test_default_meter_bills_every_matched_route(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app(default_meter="api_calls", exclude=["/healthz"])

    @app.get("/a")
    def a() -> str:
        return "ok"

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    client = app.test_client()
    client.get("/a", headers=CUSTOMER)
    client.get("/healthz", headers=CUSTOMER)
    client.get("/not-a-route", headers=CUSTOMER)
    assert recorder.billed() == [("api_calls", "cus_1", 1)]


def test_automatic_options_is_never_billed(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(default_meter="api_calls", bill_on="any")

    @app.get("/a")
    def a() -> str:
        return "ok"

    response = app.test_client().options("/a", headers=CUSTOMER)
    assert response.status_code == 200
    assert recorder.events == []


def test_blueprint_meter(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app()
    fluxrate = extension_of(app)
    api = Blueprint("api", __name__, url_prefix="/api")
    fluxrate.meter_blueprint(api, "api_calls")

    @api.get("/plain")
    def plain() -> str:
        return "ok"

    @api.get("/heavy")
    @meter("api_calls", quantity=5)
    def heavy() -> str:
        return "ok"

    @api.get("/tokens")
    @meter("tokens", quantity=7)
    def tokens() -> str:
        return "ok"

    @api.get("/free")
    @fluxrate.exempt
    def free() -> str:
        return "ok"

    @app.get("/outside")
    def outside() -> str:
        return "ok"

    app.register_blueprint(api)
    client = app.test_client()
    for path in ("/api/plain", "/api/heavy", "/api/tokens", "/api/free", "/outside"):
        assert client.get(path, headers=CUSTOMER).status_code == 200
    billed = recorder.billed()
    assert billed[0] == ("api_calls", "cus_1", 1)  # /api/plain
    assert billed[1] == ("api_calls", "cus_1", 5)  # the view's own @meter replaces the bp's
    assert sorted(billed[2:]) == [("api_calls", "cus_1", 1), ("tokens", "cus_1", 7)]  # both


def test_blueprint_meter_reaches_nested_blueprints_and_renamed_registrations(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app()
    fluxrate = extension_of(app)
    parent = Blueprint("v1", __name__, url_prefix="/v1")
    child = Blueprint("items", __name__, url_prefix="/items")
    fluxrate.meter_blueprint(parent, "api_calls")
    fluxrate.meter_blueprint(child, "tokens", quantity=2)

    @child.get("/")
    def index() -> str:
        return "ok"

    parent.register_blueprint(child)
    app.register_blueprint(parent)
    app.register_blueprint(parent, name="v2", url_prefix="/v2")  # same blueprint, again
    client = app.test_client()
    client.get("/v1/items/", headers=CUSTOMER)
    client.get("/v2/items/", headers=CUSTOMER)
    billed = recorder.billed()
    assert sorted(billed) == sorted([("api_calls", "cus_1", 1), ("tokens", "cus_1", 2)] * 2)


def test_exempt_blueprint(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(default_meter="api_calls")
    internal = Blueprint("internal", __name__, url_prefix="/internal")
    extension_of(app).exempt(internal)

    @internal.get("/stats")
    def stats() -> str:
        return "ok"

    app.register_blueprint(internal)
    app.test_client().get("/internal/stats", headers=CUSTOMER)
    assert recorder.events == []


def test_blueprint_meter_declared_after_init_and_registration(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app()
    api = Blueprint("api", __name__)

    @api.get("/x")
    def x() -> str:
        return "ok"

    app.register_blueprint(api)
    extension_of(app).meter_blueprint(api, "api_calls")
    app.test_client().get("/x", headers=CUSTOMER)
    assert len(recorder.events) == 1


def test_method_view_methods(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app()

    class ItemAPI(MethodView):
        @meter("api_calls")
        def get(self, item_id: int) -> str:
            return "got"

        @meter("api_calls", quantity=4)
        def put(self, item_id: int) -> str:
            return "put"

        def delete(self, item_id: int) -> str:
            return "deleted"

    app.add_url_rule("/items/<int:item_id>", view_func=ItemAPI.as_view("item"))
    client = app.test_client()
    assert client.get("/items/1", headers=CUSTOMER).data == b"got"
    assert client.put("/items/1", headers=CUSTOMER).data == b"put"
    assert client.delete("/items/1", headers=CUSTOMER).data == b"deleted"
    assert client.head("/items/1", headers=CUSTOMER).status_code == 200  # HEAD runs get()
    assert recorder.billed() == [
        ("api_calls", "cus_1", 1),
        ("api_calls", "cus_1", 4),
        ("api_calls", "cus_1", 1),
    ]


def test_method_view_class_decorators_and_class_level_meter(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app()

    @meter("tokens")
    class Search(MethodView):
        decorators = [meter("api_calls")]

        def get(self) -> str:
            return "ok"

        def post(self) -> str:
            return "ok"

    app.add_url_rule("/search", view_func=Search.as_view("search"))
    client = app.test_client()
    client.get("/search", headers=CUSTOMER)
    client.post("/search", headers=CUSTOMER)
    assert sorted(recorder.billed()) == sorted(
        [("api_calls", "cus_1", 1), ("tokens", "cus_1", 1)] * 2
    )


def test_plain_view_class(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app()

    class Hello(View):
        @meter("api_calls", quantity=2)
        def dispatch_request(self) -> str:
            return "hello"

    app.add_url_rule("/hello", view_func=Hello.as_view("hello"))
    app.test_client().get("/hello", headers=CUSTOMER)
    assert recorder.billed() == [("api_calls", "cus_1", 2)]


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """A functools.wraps decorator like flask_login.login_required."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    return wrapper


def test_meter_under_a_functools_wraps_decorator(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app()

    @app.get("/private")
    @login_required
    @meter("api_calls")
    def private() -> str:
        return "ok"

    app.test_client().get("/private", headers=CUSTOMER)
    assert len(recorder.events) == 1


def test_exempt_view_beats_config_rules(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(endpoints=[{"route": "/*", "meter": "api_calls"}])
    fluxrate = extension_of(app)

    @app.get("/metered")
    def metered() -> str:
        return "ok"

    @app.get("/free")
    @fluxrate.exempt
    def free() -> str:
        return "ok"

    client = app.test_client()
    client.get("/metered", headers=CUSTOMER)
    client.get("/free", headers=CUSTOMER)
    assert len(recorder.events) == 1


def test_unknown_meter_in_a_decorator_does_not_break_the_request(
    make_app: AppFactory, recorder: RecordingClient, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    @app.get("/typo")
    @meter("api_cals")
    def typo() -> str:
        return "ok"

    assert app.test_client().get("/typo", headers=CUSTOMER).data == b"ok"
    assert recorder.events == []
    assert "api_cals" in caplog.text
    assert "did you mean 'api_calls'" in caplog.text
    with pytest.raises(ConfigError, match="api_cals"):
        app.extensions["fluxrate"].plan(next(app.url_map.iter_rules("typo")), "GET")


def test_plans_are_cached_per_rule(make_app: AppFactory) -> None:
    app = make_app()

    @app.get("/a/<int:x>")
    @meter("api_calls")
    def a(x: int) -> str:
        return "ok"

    client = app.test_client()
    client.get("/a/1", headers=CUSTOMER)
    state: Any = app.extensions["fluxrate"]
    first = state.route(next(app.url_map.iter_rules("a")), "GET")
    client.get("/a/2", headers=CUSTOMER)
    assert state.route(next(app.url_map.iter_rules("a")), "GET") is first


def test_record_bills_on_an_unmetered_route(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    from fluxrate_web.flask import record

    app = make_app()

    @app.get("/chat")
    def chat() -> str:
        record("tokens", 42, metadata={"model": "toy"})
        return "ok"

    app.test_client().get("/chat", headers=CUSTOMER)
    assert recorder.billed() == [("tokens", "cus_1", 42)]
    assert recorder.events[0].metadata == {"model": "toy"}


def test_two_apps_one_extension(recorder: RecordingClient) -> None:
    from fluxrate_flask_support import METERS

    from fluxrate_web.flask import Fluxrate

    fluxrate = Fluxrate(client=recorder, meters=METERS, customer="header:X-Customer-Id")
    api = Blueprint("api", __name__)
    fluxrate.meter_blueprint(api, "api_calls")

    @api.get("/ping")
    def ping() -> str:
        return "pong"

    apps: list[Flask] = []
    for name in ("first", "second"):
        app = Flask(name)
        app.config["FLUXRATE_DEFAULT_METER"] = "tokens" if name == "second" else None
        fluxrate.init_app(app)
        app.register_blueprint(api)

        @app.get("/own")
        def own() -> str:
            return "ok"

        apps.append(app)
    for app in apps:
        app.test_client().get("/ping", headers=CUSTOMER)
        app.test_client().get("/own", headers=CUSTOMER)
    assert recorder.billed() == [
        ("api_calls", "cus_1", 1),
        ("api_calls", "cus_1", 1),
        ("tokens", "cus_1", 1),
    ]
    assert apps[0].extensions["fluxrate"] is not apps[1].extensions["fluxrate"]


def test_record_in_an_exempt_view_still_bills(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    from fluxrate_web.flask import record

    app = make_app(default_meter="api_calls")

    @app.get("/free")
    @extension_of(app).exempt
    def free() -> str:
        record("tokens", 3)
        return "ok"

    app.test_client().get("/free", headers=CUSTOMER)
    assert recorder.billed() == [("tokens", "cus_1", 3)]


def test_meter_above_a_functools_wraps_decorator(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app()

    @app.get("/private")
    @meter("api_calls")
    @login_required
    def private() -> str:
        return "ok"

    app.test_client().get("/private", headers=CUSTOMER)
    assert len(recorder.events) == 1
