"""Who pays: headers, query, ``g``, URL parameters, Flask-Login, callables; reject mode."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask, Response, g, request
from flask_login import LoginManager, UserMixin, login_user
from fluxrate_flask_support import CUSTOMER, AppFactory, RecordingClient

from fluxrate_web.flask import meter


def add_metered(app: Flask) -> None:
    @app.get("/metered")
    @meter("api_calls")
    def metered() -> str:
        return "ok"


def test_header_resolver_is_case_insensitive(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app(customer="header:x-CUSTOMER-id")
    add_metered(app)
    app.test_client().get("/metered", headers={"X-Customer-Id": "cus_9"})
    assert recorder.billed() == [("api_calls", "cus_9", 1)]


def test_query_resolver(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(customer="query:customer")
    add_metered(app)
    app.test_client().get("/metered?customer=cus_q")
    assert recorder.billed() == [("api_calls", "cus_q", 1)]


def test_state_resolver_reads_g(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(customer="state:account.external_id")
    add_metered(app)

    @app.before_request
    def authenticate() -> None:
        g.account = types.SimpleNamespace(external_id="acct_7")

    app.test_client().get("/metered")
    assert recorder.billed() == [("api_calls", "acct_7", 1)]


def test_state_resolver_falls_back_to_url_parameters(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app(customer="state:org_id")

    @app.get("/orgs/<org_id>/reports")
    @meter("api_calls")
    def reports(org_id: str) -> str:
        return "ok"

    app.test_client().get("/orgs/org_42/reports")
    assert recorder.billed() == [("api_calls", "org_42", 1)]


def test_fallbacks_in_order(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(customer=["header:X-Customer-Id", "query:customer"])
    add_metered(app)
    client = app.test_client()
    client.get("/metered?customer=from_query", headers={"X-Customer-Id": "from_header"})
    client.get("/metered?customer=from_query")
    assert [e.customer for e in recorder.events] == ["from_header", "from_query"]


class User(UserMixin):
    def __init__(self, user_id: str, org: str) -> None:
        self.id = user_id
        self.org = types.SimpleNamespace(external_id=org)


USERS = {"u1": User("u1", "org_one")}


def login_app(make_app: AppFactory) -> Flask:
    app = make_app(customer="user:org.external_id")
    app.secret_key = "test"
    manager = LoginManager(app)

    @manager.user_loader
    def load(user_id: str) -> User | None:
        return USERS.get(user_id)

    @manager.request_loader
    def from_token(req: Any) -> User | None:
        return USERS.get(req.headers.get("X-User", ""))

    add_metered(app)
    return app


def test_flask_login_current_user(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = login_app(make_app)
    client = app.test_client()
    client.get("/metered", headers={"X-User": "u1"})  # the view never touches current_user
    client.get("/metered")  # anonymous: no customer, dropped and counted
    assert recorder.billed() == [("api_calls", "org_one", 1)]
    assert len(recorder.dropped) == 1
    assert "no customer" in recorder.dropped[0]


def test_flask_login_session_login(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = login_app(make_app)

    @app.post("/login")
    def login() -> str:
        login_user(USERS["u1"])
        return "in"

    client = app.test_client()
    client.post("/login")
    client.get("/metered")
    assert recorder.billed() == [("api_calls", "org_one", 1)]


def test_g_user_without_flask_login(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(customer="user:id")
    add_metered(app)

    @app.before_request
    def load_user() -> None:
        g.user = types.SimpleNamespace(id="tutorial_user") if request.args.get("in") else None

    client = app.test_client()
    client.get("/metered?in=1")
    client.get("/metered")
    assert recorder.billed() == [("api_calls", "tutorial_user", 1)]


def customer_from_g(req: Any) -> str | None:
    """A ``callable:`` resolver: runs inside the request's app context, so it can read ``g``."""
    assert req is request._get_current_object()  # type: ignore[attr-defined]
    return g.get("tenant")


@pytest.fixture
def resolvers_module() -> Iterator[types.ModuleType]:
    module = types.ModuleType("flask_test_resolvers")
    module.customer_from_g = customer_from_g  # type: ignore[attr-defined]

    async def async_customer(req: Any) -> str:
        return "async_" + req.headers["X-Customer-Id"]

    module.async_customer = async_customer  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def test_callable_resolver_reads_g(
    make_app: AppFactory, recorder: RecordingClient, resolvers_module: types.ModuleType
) -> None:
    app = make_app(customer="callable:flask_test_resolvers.customer_from_g")
    add_metered(app)

    @app.get("/stream")
    @meter("api_calls")
    def stream() -> Response:
        return Response(iter([b"a", b"b"]))

    @app.before_request
    def tenant() -> None:
        g.tenant = "tenant_" + request.headers.get("X-Tenant", "none")

    client = app.test_client()
    client.get("/metered", headers={"X-Tenant": "a"})
    response = client.get("/stream", headers={"X-Tenant": "b"})
    assert response.data == b"ab"  # billed now, after the request context is gone
    assert recorder.billed() == [("api_calls", "tenant_a", 1), ("api_calls", "tenant_b", 1)]


def test_python_callable_given_in_config(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(customer=lambda req: req.headers.get("X-Team"))
    add_metered(app)
    app.test_client().get("/metered", headers={"X-Team": "team_x"})
    assert recorder.billed() == [("api_calls", "team_x", 1)]


def test_async_callable_resolver(
    make_app: AppFactory, recorder: RecordingClient, resolvers_module: types.ModuleType
) -> None:
    app = make_app(customer="callable:flask_test_resolvers.async_customer")
    add_metered(app)
    app.test_client().get("/metered", headers=CUSTOMER)
    assert recorder.billed() == [("api_calls", "async_cus_1", 1)]


def test_customer_given_by_the_decorator(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app()

    @app.get("/teams")
    @meter("tokens", customer="query:team")
    def teams() -> str:
        return "ok"

    app.test_client().get("/teams?team=team_t", headers=CUSTOMER)
    assert recorder.billed() == [("tokens", "team_t", 1)]


def test_each_decorator_keeps_its_own_customer(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app()

    @app.get("/shared")
    @meter("api_calls")
    @meter("tokens", customer="query:team")
    def shared() -> str:
        return "ok"

    @app.get("/shared-stream")
    @meter("api_calls")
    @meter("tokens", customer="query:team")
    def shared_stream() -> Response:
        return Response(iter([b"x"]))

    client = app.test_client()
    client.get("/shared?team=team_t", headers=CUSTOMER)
    assert client.get("/shared-stream?team=team_s", headers=CUSTOMER).data == b"x"
    assert sorted(recorder.billed()) == [
        ("api_calls", "cus_1", 1),
        ("api_calls", "cus_1", 1),
        ("tokens", "team_s", 1),
        ("tokens", "team_t", 1),
    ]


def test_stream_without_a_customer_is_dropped_and_counted(
    make_app: AppFactory, recorder: RecordingClient, resolvers_module: types.ModuleType
) -> None:
    app = make_app(customer="callable:flask_test_resolvers.customer_from_g")

    @app.get("/stream")
    @meter("api_calls")
    def stream() -> Response:
        return Response(iter([b"a"]))

    # no g.tenant: the callable finds nobody while the context is live; it is not run again
    # when the body ends (outside the context)
    assert app.test_client().get("/stream").data == b"a"
    assert recorder.events == []
    assert len(recorder.dropped) == 1


# -- reject mode


def reject_app(make_app: AppFactory) -> Flask:
    app = make_app(customer="state:customer_id", on_missing_customer="reject")
    api = Blueprint("api", __name__, url_prefix="/api")

    @api.before_request
    def authenticate() -> None:
        token = request.headers.get("Authorization", "")
        if token == "Bearer good":
            g.customer_id = "cus_token"

    @api.get("/data")
    @meter("api_calls")
    def data() -> str:
        g.view_ran = True
        return "secret"

    @api.get("/open")
    def open_route() -> str:  # bills nothing, so never rejected
        return "open"

    app.register_blueprint(api)
    return app


def test_reject_mode_answers_401_json_before_the_view(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = reject_app(make_app)
    client = app.test_client()
    response = client.get("/api/data")
    assert response.status_code == 401
    assert response.is_json
    assert "customer" in response.json["detail"]
    assert recorder.events == []
    assert client.get("/api/open").status_code == 200


def test_reject_mode_sees_blueprint_before_request_handlers(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = reject_app(make_app)
    response = app.test_client().get("/api/data", headers={"Authorization": "Bearer good"})
    assert response.status_code == 200
    assert response.data == b"secret"
    assert recorder.billed() == [("api_calls", "cus_token", 1)]


def test_reject_mode_keeps_the_apps_own_early_answer(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = reject_app(make_app)

    @app.before_request
    def maintenance() -> Any:
        if request.headers.get("X-Maintenance"):
            return "down", 503
        return None

    response = app.test_client().get("/api/data", headers={"X-Maintenance": "1"})
    assert response.status_code == 503


def test_stream_with_a_per_meter_user_resolver(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = login_app(make_app)

    @app.get("/report")
    @meter("api_calls", customer="header:X-Customer-Id")
    @meter("tokens", customer="user:org.external_id")
    def report() -> Response:
        return Response(iter([b"r"]))

    response = app.test_client().get("/report", headers={"X-User": "u1", **CUSTOMER})
    assert response.data == b"r"  # billed now, outside the request context
    assert sorted(recorder.billed()) == [("api_calls", "cus_1", 1), ("tokens", "org_one", 1)]
