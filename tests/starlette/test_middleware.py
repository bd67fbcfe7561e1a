"""FluxrateMiddleware on Starlette apps, through Starlette's TestClient, events captured."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.endpoints import HTTPEndpoint
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Host, Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from fluxrate_web import record
from fluxrate_web.core.metering import Metering
from fluxrate_web.core.rules import meter
from fluxrate_web.starlette import FluxrateMiddleware, ScopeRequestView
from fluxrate_web.testing import CapturingClient

API_CALLS = "0b8f6d6e-2c1a-4f5e-9a53-3f3c8d9e7a10"  # the tokens of conftest.METERS
TOKENS = "5d2f1c3b-7e4a-4b6c-8d9e-1a2b3c4d5e6f"
BYTES = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"

CUSTOMER = {"X-Customer-Id": "cust-1"}


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def created(request: Request) -> Response:
    return JSONResponse({"id": 1}, status_code=201)


async def bad(request: Request) -> Response:
    return JSONResponse({"error": "bad"}, status_code=400)


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


async def not_found(request: Request) -> Response:
    raise HTTPException(status_code=404)


def app_with(
    routes: list[Any], metering: Metering, middleware: list[Middleware] | None = None
) -> Starlette:
    app = Starlette(routes=routes, middleware=middleware)
    app.add_middleware(FluxrateMiddleware, metering=metering)
    return app


def quantities(client: CapturingClient) -> list[tuple[str, str, Any]]:
    return [(e.meter_token, e.customer_external_id, e.quantity) for e in client.events]


# --------------------------------------------------------------------------- billing by status


def test_billed_by_status_2xx_only(make_metering: Callable[..., Metering], client: Any) -> None:
    metering = make_metering(endpoints=[{"route": "/*", "meter": "api_calls"}])
    app = app_with(
        [
            Route("/ok", ok),
            Route("/created", created, methods=["POST"]),
            Route("/bad", bad),
            Route("/missing", not_found),
        ],
        metering,
    )
    with TestClient(app) as http:
        assert http.get("/ok", headers=CUSTOMER).status_code == 200
        assert http.post("/created", headers=CUSTOMER).status_code == 201
        assert http.get("/bad", headers=CUSTOMER).status_code == 400
        assert http.get("/missing", headers=CUSTOMER).status_code == 404
        assert http.get("/no-such-route", headers=CUSTOMER).status_code == 404
        assert http.post("/ok", headers=CUSTOMER).status_code == 405
    assert quantities(client) == [(API_CALLS, "cust-1", 1), (API_CALLS, "cust-1", 1)]


def test_bill_on_any_status(make_metering: Callable[..., Metering], client: Any) -> None:
    metering = make_metering(bill_on="any", endpoints=[{"route": "/bad", "meter": "api_calls"}])
    app = app_with([Route("/bad", bad), Route("/ok", ok)], metering)
    with TestClient(app) as http:
        http.get("/bad", headers=CUSTOMER)
        http.get("/ok", headers=CUSTOMER)
    assert quantities(client) == [(API_CALLS, "cust-1", 1)]


def test_meter_decorator_and_exempt(make_metering: Callable[..., Metering], client: Any) -> None:
    @meter("tokens", quantity=5)
    async def decorated(request: Request) -> Response:
        return PlainTextResponse("d")

    @meter.exempt
    async def free(request: Request) -> Response:
        return PlainTextResponse("f")

    metering = make_metering(default_meter="api_calls")
    app = app_with([Route("/d", decorated), Route("/f", free), Route("/plain", ok)], metering)
    with TestClient(app) as http:
        for path in ("/d", "/f", "/plain"):
            assert http.get(path, headers=CUSTOMER).status_code == 200
    assert quantities(client) == [(TOKENS, "cust-1", 5), (API_CALLS, "cust-1", 1)]


def test_missing_customer_skips_and_counts(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    metering = make_metering(default_meter="api_calls")
    app = app_with([Route("/ok", ok)], metering)
    with TestClient(app) as http:
        assert http.get("/ok").status_code == 200
    assert client.events == []
    assert client.stats.dropped == 1
    assert "no customer" in client.dropped[0]


# --------------------------------------------------------------------------- bytes and streaming


def test_response_and_request_bytes(make_metering: Callable[..., Metering], client: Any) -> None:
    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body * 2)

    metering = make_metering(
        endpoints=[
            {
                "route": "/echo",
                "meters": [
                    {"meter": "bytes_out", "quantity": "response_bytes"},
                    {"meter": "tokens", "quantity": "request_bytes"},
                ],
            }
        ]
    )
    app = app_with([Route("/echo", echo, methods=["POST"])], metering)
    with TestClient(app) as http:
        assert http.post("/echo", content=b"x" * 300, headers=CUSTOMER).content == b"x" * 600

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked upload, counted on receive
            yield b"a" * 100
            yield b"b" * 50

        http.post("/echo", content=chunks(), headers=CUSTOMER)
    assert quantities(client) == [
        (BYTES, "cust-1", 600),
        (TOKENS, "cust-1", 300),
        (BYTES, "cust-1", 300),
        (TOKENS, "cust-1", 150),
    ]


def test_request_bytes_from_content_length_when_body_unread(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    metering = make_metering(
        endpoints=[{"route": "/ok", "meter": "tokens", "quantity": "request_bytes"}]
    )
    app = app_with([Route("/ok", ok, methods=["POST"])], metering)
    with TestClient(app) as http:
        http.post("/ok", content=b"z" * 1234, headers=CUSTOMER)
    assert quantities(client) == [(TOKENS, "cust-1", 1234)]


def test_streaming_billed_after_the_stream_ends(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    seen_during_stream: list[int] = []

    async def stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for i in range(5):
                seen_during_stream.append(len(client.events))
                record("tokens", 10)
                yield b"chunk%d;" % i
                await asyncio.sleep(0)

        return StreamingResponse(body())

    metering = make_metering(
        endpoints=[{"route": "/stream", "meter": "bytes_out", "quantity": "response_bytes"}]
    )
    app = app_with([Route("/stream", stream)], metering)
    with TestClient(app) as http, http.stream("GET", "/stream", headers=CUSTOMER) as response:
        body = b"".join(response.iter_bytes())
    assert body == b"chunk0;chunk1;chunk2;chunk3;chunk4;"
    assert seen_during_stream == [0, 0, 0, 0, 0]  # nothing billed while streaming
    assert quantities(client) == [(BYTES, "cust-1", len(body))] + [(TOKENS, "cust-1", 10)] * 5


def test_stream_that_fails_midway_is_not_billed(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    async def stream(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("generator failed")

        return StreamingResponse(body())

    metering = make_metering(default_meter="api_calls")
    app = app_with([Route("/stream", stream)], metering)
    with TestClient(app) as http, pytest.raises(RuntimeError, match="generator failed"):
        http.get("/stream", headers=CUSTOMER)
    assert client.events == []


def test_stream_abandoned_by_the_app_bills_only_with_bill_on_disconnect(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    async def partial(scope: Any, receive: Any, send: Any) -> None:
        # an ASGI app that starts a body and returns without finishing it (what Starlette's
        # StreamingResponse does when it sees http.disconnect)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"half", "more_body": True})

    for flag, expected in ((False, 0), (True, 1)):
        client.clear()
        metering = make_metering(default_meter="api_calls", bill_on_disconnect=flag)
        app = app_with([Mount("/p", app=partial)], metering)
        with TestClient(app) as http:
            http.get("/p/x", headers=CUSTOMER)
        assert len(client.events) == expected


# --------------------------------------------------------------------------- record()


def test_record_in_sync_and_async_endpoints(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    def sync_view(request: Request) -> Response:  # runs in Starlette's threadpool
        record("tokens", 7)
        return PlainTextResponse("s")

    async def async_view(request: Request) -> Response:
        record("tokens", 3)
        record("api_calls")
        return PlainTextResponse("a")

    metering = make_metering()
    app = app_with([Route("/sync", sync_view), Route("/async", async_view)], metering)
    with TestClient(app) as http:
        http.get("/sync", headers=CUSTOMER)
        http.get("/async", headers=CUSTOMER)
    assert quantities(client) == [
        (TOKENS, "cust-1", 7),
        (TOKENS, "cust-1", 3),
        (API_CALLS, "cust-1", 1),
    ]


def test_record_on_a_failed_response_is_not_billed(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    async def view(request: Request) -> Response:
        record("tokens", 3)
        return PlainTextResponse("no", status_code=500)

    app = app_with([Route("/v", view)], make_metering())
    with TestClient(app) as http:
        http.get("/v", headers=CUSTOMER)
    assert client.events == []


# --------------------------------------------------------------------------- background tasks


def test_background_task_runs_after_billing_and_does_not_change_it(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    seen_in_task: list[int] = []

    def task() -> None:
        seen_in_task.append(len(client.events))
        record("tokens", 99)  # after the response: dropped, never billed late

    async def view(request: Request) -> Response:
        return PlainTextResponse("ok", background=BackgroundTask(task))

    async def failing(request: Request) -> Response:
        def explode() -> None:
            raise ValueError("task failed")

        return PlainTextResponse("ok", background=BackgroundTask(explode))

    app = app_with(
        [Route("/v", view), Route("/f", failing)], make_metering(default_meter="api_calls")
    )
    with TestClient(app) as http:
        assert http.get("/v", headers=CUSTOMER).status_code == 200
        with pytest.raises(ValueError, match="task failed"):
            http.get("/f", headers=CUSTOMER)
    assert seen_in_task == [1]  # the response was billed before the task ran
    assert quantities(client) == [(API_CALLS, "cust-1", 1), (API_CALLS, "cust-1", 1)]


# --------------------------------------------------------------------------- exceptions


def test_exception_propagates_unchanged_and_is_not_billed(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    app = app_with([Route("/boom", boom)], make_metering(default_meter="api_calls"))
    with TestClient(app) as http:
        with pytest.raises(RuntimeError, match="boom") as raised:
            http.get("/boom", headers=CUSTOMER)
        assert type(raised.value) is RuntimeError
    with TestClient(app, raise_server_exceptions=False) as http:
        assert http.get("/boom", headers=CUSTOMER).status_code == 500
    assert client.events == []


def test_bill_on_exception(make_metering: Callable[..., Metering], client: Any) -> None:
    metering = make_metering(default_meter="api_calls", bill_on="any", bill_on_exception=True)
    app = app_with([Route("/boom", boom)], metering)
    with TestClient(app, raise_server_exceptions=False) as http:
        http.get("/boom", headers=CUSTOMER)
    assert quantities(client) == [(API_CALLS, "cust-1", 1)]


def test_our_own_failures_never_reach_the_request(
    make_metering: Callable[..., Metering],
    client: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metering = make_metering(default_meter="api_calls")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("seam exploded")

    monkeypatch.setattr(metering, "route", broken)
    app = app_with([Route("/ok", ok)], metering)
    with caplog.at_level(logging.WARNING, logger="fluxrate_web"), TestClient(app) as http:
        response = http.get("/ok", headers=CUSTOMER)
    assert response.status_code == 200
    assert response.text == "ok"
    assert client.events == []
    assert "not metered" in caplog.text


def test_body_chunks_pass_through_unchanged() -> None:
    sent: list[dict[str, Any]] = []

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
        for part in (b"one", b"", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"end", "more_body": False})

    async def capture(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    metering = Metering.from_config(
        overrides={"meters": {"api_calls": API_CALLS}, "default_meter": "api_calls"},
        client=CapturingClient(),
    )
    middleware = FluxrateMiddleware(raw, metering=metering)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    asyncio.run(middleware(scope, receive, capture))
    assert [m.get("body") for m in sent] == [None, b"one", b"", b"three", b"end"]
    assert sent[0]["headers"] == [(b"a", b"1")]


# --------------------------------------------------------------------------- routes and mounts


def test_templates_through_mounts_hosts_and_sub_apps(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    async def item(request: Request) -> Response:
        return PlainTextResponse("i")

    sub = Starlette(routes=[Route("/things/{thing_id:int}", item)])
    metering = make_metering(
        endpoints=[
            {"route": "/top/{x}", "meter": "api_calls"},
            {"route": "/org/{org}/users/{user_id}", "meter": "tokens"},
            {"route": "/sub/things/{thing_id}", "meter": "bytes_out"},
            {"route": "/org/{org}/deep/end", "meter": "api_calls", "quantity": 2},
        ]
    )
    app = app_with(
        [
            Route("/top/{x}", item),
            Mount(
                "/org/{org}",
                routes=[
                    Route("/users/{user_id}", item),
                    Mount("/deep", routes=[Route("/end", item)]),
                ],
            ),
            Mount("/sub", app=sub),
            Host("api.example.com", app=Starlette(routes=[Route("/h", item)])),
        ],
        metering,
    )
    with TestClient(app) as http:
        for path in ("/top/1", "/org/acme/users/7", "/org/globex/users/8", "/sub/things/3"):
            assert http.get(path, headers=CUSTOMER).status_code == 200
        assert http.get("/org/acme/deep/end", headers=CUSTOMER).status_code == 200
    assert quantities(client) == [
        (API_CALLS, "cust-1", 1),
        (TOKENS, "cust-1", 1),
        (TOKENS, "cust-1", 1),
        (BYTES, "cust-1", 1),
        (API_CALLS, "cust-1", 2),
    ]
    # the per-route plan cache is bounded by routes, not by concrete paths
    middleware = _middleware_of(app)
    assert len(middleware._plans) <= 4


def _middleware_of(app: Starlette) -> FluxrateMiddleware:
    layer: Any = app.middleware_stack
    while not isinstance(layer, FluxrateMiddleware):
        layer = layer.app
    return layer


def test_class_based_endpoint_handler_rules(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    class Items(HTTPEndpoint):
        @meter("tokens", quantity=2)
        async def get(self, request: Request) -> Response:
            return PlainTextResponse("g")

        async def post(self, request: Request) -> Response:
            return PlainTextResponse("p")

    app = app_with([Route("/items", Items)], make_metering())
    with TestClient(app) as http:
        http.get("/items", headers=CUSTOMER)
        http.post("/items", headers=CUSTOMER)
    assert quantities(client) == [(TOKENS, "cust-1", 2)]


def test_mounted_app_with_its_own_middleware(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    metering = make_metering(endpoints=[{"route": "/inner/*", "meter": "api_calls"}])
    inner = Starlette(routes=[Route("/x", ok)])
    inner.add_middleware(FluxrateMiddleware, metering=metering)
    outer = Starlette(routes=[Mount("/mounted", app=inner)])
    with TestClient(outer) as http:
        http.get("/mounted/x", headers=CUSTOMER)
    # the middleware on a sub-app sees templates relative to that sub-app
    assert client.events == []
    metering2 = make_metering(endpoints=[{"route": "/x", "meter": "api_calls"}])
    inner2 = Starlette(routes=[Route("/x", ok)])
    inner2.add_middleware(FluxrateMiddleware, metering=metering2)
    with TestClient(Starlette(routes=[Mount("/mounted", app=inner2)])) as http:
        http.get("/mounted/x", headers=CUSTOMER)
    assert quantities(client) == [(API_CALLS, "cust-1", 1)]


# --------------------------------------------------------------------------- customers


class _User:
    def __init__(self, name: str, org: str) -> None:
        self.username = name
        self.org_id = org
        self.is_authenticated = True


class _Backend:
    async def authenticate(self, conn: HTTPConnection) -> Any:
        from starlette.authentication import AuthCredentials

        key = conn.headers.get("x-api-key")
        if key is None:
            return None
        return AuthCredentials(["authenticated"]), _User(f"user-{key}", f"org-{key}")


def test_customer_from_user_state_query_and_callable(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    async def set_state(request: Request) -> Response:
        request.state.customer_id = "from-state"
        return PlainTextResponse("s")

    def from_request(request: Request) -> str | None:
        return request.headers.get("x-tenant")

    @meter("api_calls", customer="user:org_id")
    async def by_user(request: Request) -> Response:
        return PlainTextResponse("u")

    @meter("api_calls", customer="state:customer_id")
    async def by_state(request: Request) -> Response:
        return await set_state(request)

    @meter("api_calls", customer="query:customer")
    async def by_query(request: Request) -> Response:
        return PlainTextResponse("q")

    @meter("api_calls", customer=from_request)
    async def by_callable(request: Request) -> Response:
        return PlainTextResponse("c")

    app = app_with(
        [
            Route("/user", by_user),
            Route("/state", by_state),
            Route("/query", by_query),
            Route("/callable", by_callable),
        ],
        make_metering(),
        middleware=[Middleware(AuthenticationMiddleware, backend=_Backend())],
    )
    with TestClient(app) as http:
        http.get("/user", headers={"X-Api-Key": "k1"})
        http.get("/user")  # anonymous: no customer
        http.get("/state")
        http.get("/query", params={"customer": "from-query", "other": "x"})
        http.get("/callable", headers={"X-Tenant": "from-callable"})
    assert [e.customer_external_id for e in client.events] == [
        "org-k1",
        "from-state",
        "from-query",
        "from-callable",
    ]


def test_request_view_reads_lazily() -> None:
    scope = {
        "type": "http",
        "headers": [(b"x-a", b"1"), (b"x-a", b"2"), (b"x-b", b"\xe9")],
        "query_string": b"a=1&a=2&b=&c=%20x",
        "state": {"k": "v"},
    }
    view = ScopeRequestView(scope)
    assert view._headers is None
    assert view._query is None
    assert view.header("X-A") == "1"  # first wins, like Starlette's Headers.get
    assert view.header("x-b") == "\u00e9"
    assert view.header("x-missing") is None
    assert view.query("a") == "1"
    assert view.query("b") == ""
    assert view.query("c") == " x"
    assert view.state("k") == "v"
    assert view.state("nope") is None
    assert view.user() is None
    assert isinstance(view.native, Request)


# --------------------------------------------------------------------------- reject mode


def test_reject_mode_answers_401_before_the_endpoint(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    calls: list[str] = []

    async def metered(request: Request) -> Response:
        calls.append("metered")
        return PlainTextResponse("m")

    @meter.exempt
    async def health(request: Request) -> Response:
        calls.append("health")
        return PlainTextResponse("h")

    metering = make_metering(
        on_missing_customer="reject", endpoints=[{"route": "/v1/*", "meter": "api_calls"}]
    )
    app = app_with(
        [
            Mount("/v1", routes=[Route("/metered/{n}", metered)]),
            Route("/health", health),
            Route("/free", ok),
        ],
        metering,
    )
    with TestClient(app) as http:
        rejected = http.get("/v1/metered/1")
        assert rejected.status_code == 401
        assert rejected.headers["content-type"] == "application/json"
        assert "customer" in rejected.json()["detail"]
        assert http.get("/health").status_code == 200
        assert http.get("/free").status_code == 200
        assert http.get("/v1/metered/2", headers=CUSTOMER).status_code == 200
    assert calls == ["health", "metered"]
    assert quantities(client) == [(API_CALLS, "cust-1", 1)]
    assert client.stats.dropped == 0


def test_reject_mode_sees_the_user_of_an_outer_authentication_middleware(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    metering = make_metering(
        on_missing_customer="reject", customer="user:org_id", default_meter="api_calls"
    )
    app = Starlette(routes=[Route("/x", ok)])
    app.add_middleware(FluxrateMiddleware, metering=metering)
    app.add_middleware(AuthenticationMiddleware, backend=_Backend())  # added last: outermost
    with TestClient(app) as http:
        assert http.get("/x").status_code == 401
        assert http.get("/x", headers={"X-Api-Key": "k9"}).status_code == 200
    assert [e.customer_external_id for e in client.events] == ["org-k9"]


# --------------------------------------------------------------------------- websockets, lifespan


def test_websockets_pass_through_untouched(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(text.upper())
        await websocket.close()

    metering = make_metering(default_meter="api_calls", on_missing_customer="reject")
    app = app_with([WebSocketRoute("/ws", ws)], metering)
    with TestClient(app) as http, http.websocket_connect("/ws") as socket:
        socket.send_text("hello")
        assert socket.receive_text() == "HELLO"
    assert client.events == []
    assert client.stats.dropped == 0


def test_lifespan_starts_and_flushes_the_core(make_metering: Callable[..., Metering]) -> None:
    calls: list[str] = []

    class Recorder(CapturingClient):
        def start(self) -> None:
            calls.append("start")

        def flush(self, timeout: float | None = None) -> bool:
            calls.append("flush")
            return True

    metering = Metering.from_config(
        overrides={"meters": {"api_calls": API_CALLS}}, client=Recorder()
    )
    state_seen: list[Any] = []

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        calls.append("app startup")
        yield {"db": "connected"}
        calls.append("app shutdown")

    async def view(request: Request) -> Response:
        state_seen.append(request.state.db)
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", view)], lifespan=lifespan)
    app.add_middleware(FluxrateMiddleware, metering=metering)
    with TestClient(app) as http:
        http.get("/")
    assert calls == ["start", "app startup", "app shutdown", "flush"]
    assert state_seen == ["connected"]


def test_config_file_and_constructor_errors(tmp_path: Any) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(
        "meters:\n  api_calls: " + API_CALLS + "\ncustomer: header:X-Customer-Id\n"
        "default_meter: api_calls\n"
    )
    events = CapturingClient()
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(FluxrateMiddleware, config=str(path), client=events)
    with TestClient(app) as http:
        http.get("/", headers=CUSTOMER)
    assert quantities(events) == [(API_CALLS, "cust-1", 1)]
    metering = Metering.from_config(str(path), client=events)
    with pytest.raises(TypeError):
        FluxrateMiddleware(ok, config=str(path), metering=metering)


def test_fluxrate_events_fixture_captures_a_real_client(
    tmp_path: Any, fluxrate_events: Any
) -> None:
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(
        FluxrateMiddleware,
        overrides={
            "api_key": "org_live_test",
            "base_url": "http://127.0.0.1:9",
            "allow_insecure": True,
            "meters": {"api_calls": API_CALLS},
            "customer": "header:X-Customer-Id",
            "default_meter": "api_calls",
        },
    )
    with TestClient(app) as http:
        http.get("/", headers=CUSTOMER)
    assert fluxrate_events.total("api_calls", customer="cust-1") == 1


def _raw_call(app: Any, metering: Metering) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def capture(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    routed = Starlette(routes=[Mount("/raw", app=app)])
    middleware = FluxrateMiddleware(routed, metering=metering)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/raw/file",
        "root_path": "",
        "headers": [(b"x-customer-id", b"cust-1")],
        "query_string": b"",
    }
    asyncio.run(middleware(scope, receive, capture))
    return sent


def test_trailers_and_pathsend_complete_the_response(
    make_metering: Callable[..., Metering], client: Any
) -> None:
    billed_before_trailers: list[int] = []

    async def with_trailers(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"abc", "more_body": False})
        billed_before_trailers.append(len(client.events))
        await send({"type": "http.response.trailers", "headers": [], "more_trailers": False})

    async def pathsend(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"2048")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": "/tmp/file"})

    metering = make_metering(
        default_meter="api_calls",
        endpoints=[{"route": "/raw/*", "meter": "bytes_out", "quantity": "response_bytes"}],
    )
    _raw_call(with_trailers, metering)
    assert billed_before_trailers == [0]
    _raw_call(pathsend, metering)
    assert quantities(client) == [(BYTES, "cust-1", 3), (BYTES, "cust-1", 2048)]


def test_unknown_meter_in_decorator_is_logged_and_the_request_served(
    make_metering: Callable[..., Metering], client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @meter("api_cals")  # a typo: not in meters:
    async def typo(request: Request) -> Response:
        record("tokens", 1)
        return PlainTextResponse("t")

    app = app_with([Route("/typo", typo)], make_metering())
    with caplog.at_level(logging.WARNING, logger="fluxrate_web"), TestClient(app) as http:
        assert http.get("/typo", headers=CUSTOMER).text == "t"
    assert client.events == []
    assert "api_cals" in caplog.text
