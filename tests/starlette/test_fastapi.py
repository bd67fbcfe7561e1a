"""FluxrateMiddleware and ``Depends(metered(...))`` on FastAPI apps."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from fluxrate_web import record
from fluxrate_web.core.metering import Metering
from fluxrate_web.core.rules import meter
from fluxrate_web.fastapi import FluxrateMiddleware, metered
from fluxrate_web.testing import CapturingClient

API_CALLS = "0b8f6d6e-2c1a-4f5e-9a53-3f3c8d9e7a10"  # the tokens of conftest.METERS
TOKENS = "5d2f1c3b-7e4a-4b6c-8d9e-1a2b3c4d5e6f"
BYTES = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
CUSTOMER = {"X-Customer-Id": "cust-1"}


def quantities(client: CapturingClient) -> list[tuple[str, str, Any]]:
    return [(e.meter_token, e.customer_external_id, e.quantity) for e in client.events]


def test_nested_router_prefixes_give_full_templates(
    make_metering: Callable[..., Metering], client: CapturingClient
) -> None:
    """FastAPI reports only the router's own path in scope["route"] (``/`` for POST /admin/):
    the middleware bills by the full template."""
    admin = APIRouter(prefix="/admin")

    @admin.post("/")
    def admin_root() -> dict[str, str]:
        return {"ok": "root"}

    @admin.get("/users/{uid}")
    async def admin_user(uid: int) -> dict[str, int]:
        return {"uid": uid}

    inner = APIRouter()

    @inner.get("/deep")
    def deep() -> dict[str, str]:
        return {"ok": "deep"}

    admin.include_router(inner, prefix="/in")
    app = FastAPI()
    app.include_router(admin, prefix="/v1")
    app.include_router(admin, prefix="/v2")

    @app.get("/")
    def root() -> dict[str, str]:
        return {"ok": "top"}

    metering = make_metering(
        endpoints=[
            {"route": "/v1/admin/", "methods": ["POST"], "meter": "api_calls"},
            {"route": "/v1/admin/users/{uid}", "meter": "tokens"},
            {"route": "/v2/admin/in/deep", "meter": "bytes_out"},
        ]
    )
    app.add_middleware(FluxrateMiddleware, metering=metering)
    with TestClient(app) as http:
        assert http.post("/v1/admin/", headers=CUSTOMER).status_code == 200
        assert http.post("/v2/admin/", headers=CUSTOMER).status_code == 200  # no rule
        assert http.get("/", headers=CUSTOMER).status_code == 200  # no rule (not "/")
        assert http.get("/v1/admin/users/5", headers=CUSTOMER).status_code == 200
        assert http.get("/v2/admin/users/5", headers=CUSTOMER).status_code == 200  # no rule
        assert http.get("/v2/admin/in/deep", headers=CUSTOMER).status_code == 200
        assert http.get("/v1/admin/in/deep", headers=CUSTOMER).status_code == 200  # no rule
    assert quantities(client) == [
        (API_CALLS, "cust-1", 1),
        (TOKENS, "cust-1", 1),
        (BYTES, "cust-1", 1),
    ]


def test_starlette_routes_and_mounts_inside_fastapi(
    make_metering: Callable[..., Metering], client: CapturingClient
) -> None:
    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("p")

    sub = FastAPI()

    @sub.get("/q/{a}")
    def q(a: str) -> dict[str, str]:
        return {"a": a}

    app = FastAPI(routes=[Route("/starlette/{x}", plain)])
    app.mount("/sub", sub)
    app.mount("/raw", app=PlainTextResponse("raw"))
    metering = make_metering(
        endpoints=[
            {"route": "/starlette/{x}", "meter": "api_calls"},
            {"route": "/sub/q/{a}", "meter": "tokens"},
            {"route": "/raw/*", "meter": "bytes_out"},
        ]
    )
    app.add_middleware(FluxrateMiddleware, metering=metering)
    with TestClient(app) as http:
        assert http.get("/starlette/1", headers=CUSTOMER).status_code == 200
        assert http.get("/sub/q/2", headers=CUSTOMER).status_code == 200
        assert http.get("/raw/anything", headers=CUSTOMER).status_code == 200
    assert quantities(client) == [
        (API_CALLS, "cust-1", 1),
        (TOKENS, "cust-1", 1),
        (BYTES, "cust-1", 1),
    ]


def test_meter_decorator_on_fastapi_endpoints(
    make_metering: Callable[..., Metering], client: CapturingClient
) -> None:
    app = FastAPI()
    app.add_middleware(FluxrateMiddleware, metering=make_metering())

    @app.get("/sync")
    @meter("api_calls")
    def sync_view() -> dict[str, str]:
        record("tokens", 11)
        return {"ok": "sync"}

    @app.get("/async")
    @meter("api_calls", quantity=3)
    async def async_view() -> dict[str, str]:
        record("tokens", 12)
        return {"ok": "async"}

    @app.get("/stream")
    @meter("bytes_out", quantity="response_bytes")
    async def stream() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for part in (b"ab", b"cde"):
                record("tokens", 1)
                yield part

        return StreamingResponse(body())

    with TestClient(app) as http:
        http.get("/sync", headers=CUSTOMER)
        http.get("/async", headers=CUSTOMER)
        assert http.get("/stream", headers=CUSTOMER).content == b"abcde"
    assert quantities(client) == [
        (API_CALLS, "cust-1", 1),
        (TOKENS, "cust-1", 11),
        (API_CALLS, "cust-1", 3),
        (TOKENS, "cust-1", 12),
        (BYTES, "cust-1", 5),
        (TOKENS, "cust-1", 1),
        (TOKENS, "cust-1", 1),
    ]


# --------------------------------------------------------------------------- metered()


def _api_key_app(metering: Metering) -> FastAPI:
    async def authenticate(
        request: Request, x_api_key: Annotated[str | None, Header()] = None
    ) -> str | None:
        if x_api_key == "bad":
            raise HTTPException(status_code=403, detail="bad key")
        if x_api_key:
            request.state.customer_id = f"cust-{x_api_key}"
        return x_api_key

    router = APIRouter(
        prefix="/v1", dependencies=[Depends(authenticate), Depends(metered("api_calls"))]
    )

    @router.get("/search")
    async def search(q: str) -> dict[str, str]:
        return {"q": q}

    @router.post("/chat", dependencies=[Depends(metered("tokens", quantity=4))])
    def chat() -> dict[str, str]:
        return {"reply": "hi"}

    app = FastAPI()
    app.include_router(router)
    app.add_middleware(FluxrateMiddleware, metering=metering)
    return app


def test_metered_dependency_bills_with_a_customer_set_by_a_dependency(
    make_metering: Callable[..., Metering], client: CapturingClient
) -> None:
    app = _api_key_app(make_metering(customer="state:customer_id"))
    with TestClient(app) as http:
        assert (
            http.get("/v1/search", params={"q": "x"}, headers={"X-Api-Key": "k1"}).status_code
            == 200
        )
        assert http.post("/v1/chat", headers={"X-Api-Key": "k2"}).status_code == 200
        assert http.get("/v1/search", headers={"X-Api-Key": "k1"}).status_code == 422
        assert (
            http.get("/v1/search", params={"q": "x"}, headers={"X-Api-Key": "bad"}).status_code
            == 403
        )
        assert http.get("/v1/search", params={"q": "x"}).status_code == 200  # no customer: skipped
    assert quantities(client) == [
        (API_CALLS, "cust-k1", 1),
        (API_CALLS, "cust-k2", 1),
        (TOKENS, "cust-k2", 4),
    ]
    assert client.stats.dropped == 1


def test_metered_dependency_rejects_in_reject_mode(
    make_metering: Callable[..., Metering], client: CapturingClient
) -> None:
    app = _api_key_app(make_metering(customer="state:customer_id", on_missing_customer="reject"))
    with TestClient(app) as http:
        rejected = http.get("/v1/search", params={"q": "x"})
        assert rejected.status_code == 401
        assert "customer" in rejected.json()["detail"]
        assert (
            http.get("/v1/search", params={"q": "x"}, headers={"X-Api-Key": "k1"}).status_code
            == 200
        )
    assert quantities(client) == [(API_CALLS, "cust-k1", 1)]
    assert client.stats.dropped == 0


def test_metered_without_the_middleware_logs_and_does_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()

    @app.get("/x", dependencies=[Depends(metered("api_calls"))])
    def x() -> dict[str, str]:
        return {}

    with TestClient(app) as http:
        assert http.get("/x").status_code == 200
    assert "FluxrateMiddleware" in caplog.text


def test_metered_validates_its_arguments_at_once() -> None:
    from fluxrate_web.core.errors import ConfigError

    with pytest.raises(ConfigError):
        metered("")
    with pytest.raises(ConfigError):
        metered("api_calls", quantity="not-a-source")


# --------------------------------------------------------------------------- OpenAPI


class Item(BaseModel):
    name: str
    price: float


def _schema_app(decorate: bool) -> dict[str, Any]:
    def maybe(*rules: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def apply(func: Any) -> Any:
            if decorate:
                for rule in rules:
                    func = rule(func)
            return func

        return apply

    app = FastAPI(title="schema")
    router = APIRouter(prefix="/v1", tags=["items"])

    @router.get("/items/{item_id}", response_model=Item, summary="Get an item")
    @maybe(meter("api_calls"), meter("tokens", quantity="response_header:X-Tokens"))
    async def get_item(
        item_id: int, q: str | None = None, x_trace: Annotated[str | None, Header()] = None
    ) -> Item:
        """Read one item."""
        return Item(name=str(item_id), price=1.0)

    @router.post("/items", status_code=201)
    @maybe(meter("api_calls", customer="header:X-Org"))
    def create_item(item: Item, dry_run: bool = False) -> Item:
        return item

    @router.get("/health")
    @maybe(meter.exempt)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(router)
    app.add_middleware(
        FluxrateMiddleware,
        metering=Metering.from_config(
            overrides={"meters": {"api_calls": API_CALLS, "tokens": TOKENS}},
            client=CapturingClient(),
        ),
    )
    return copy.deepcopy(app.openapi())


def test_meter_leaves_the_openapi_schema_unchanged() -> None:
    plain = _schema_app(decorate=False)
    metered_schema = _schema_app(decorate=True)
    assert json.dumps(metered_schema, sort_keys=True) == json.dumps(plain, sort_keys=True)
    assert set(plain["paths"]) == {"/v1/items/{item_id}", "/v1/items", "/v1/health"}


def test_metered_dependency_adds_nothing_to_the_openapi_schema() -> None:
    def build(with_dependency: bool) -> dict[str, Any]:
        app = FastAPI()
        deps = [Depends(metered("api_calls"))] if with_dependency else []

        @app.get("/search", dependencies=deps)
        def search(q: str) -> dict[str, str]:
            return {"q": q}

        return app.openapi()

    assert build(True) == build(False)


def test_mount_of_a_plain_route_list(
    make_metering: Callable[..., Metering], client: CapturingClient
) -> None:
    async def leaf(request: Request) -> PlainTextResponse:
        return PlainTextResponse("leaf")

    app = FastAPI(routes=[Mount("/m/{tenant}", routes=[Route("/leaf", leaf)])])
    app.add_middleware(
        FluxrateMiddleware,
        metering=make_metering(endpoints=[{"route": "/m/{tenant}/leaf", "meter": "api_calls"}]),
    )
    with TestClient(app) as http:
        assert http.get("/m/acme/leaf", headers=CUSTOMER).text == "leaf"
        assert http.get("/m/globex/leaf", headers=CUSTOMER).text == "leaf"
    assert quantities(client) == [(API_CALLS, "cust-1", 1)] * 2


def test_metered_dependency_and_meter_decorator_together(
    make_metering: Callable[..., Metering], client: CapturingClient
) -> None:
    app = FastAPI(dependencies=[Depends(metered("api_calls"))])
    app.add_middleware(FluxrateMiddleware, metering=make_metering())

    @app.get("/same")
    @meter("api_calls", quantity=2)  # the endpoint's own meter wins over the dependency's
    def same() -> dict[str, str]:
        return {}

    @app.get("/other", dependencies=[Depends(metered("tokens", quantity=3))])
    @meter("bytes_out", quantity=4)
    def other() -> dict[str, str]:
        return {}

    with TestClient(app) as http:
        http.get("/same", headers=CUSTOMER)
        http.get("/other", headers=CUSTOMER)
    assert sorted(quantities(client)) == sorted(
        [
            (API_CALLS, "cust-1", 2),
            (BYTES, "cust-1", 4),
            (TOKENS, "cust-1", 3),
            (API_CALLS, "cust-1", 1),
        ]
    )


def test_reject_mode_on_nested_routers_and_root_path(
    make_metering: Callable[..., Metering], client: CapturingClient
) -> None:
    calls: list[int] = []
    users = APIRouter(prefix="/users")

    @users.get("/{uid}")
    def get_user(uid: int) -> dict[str, int]:
        calls.append(uid)
        return {"uid": uid}

    api = APIRouter(prefix="/v1")
    api.include_router(users)
    app = FastAPI()
    app.include_router(api)

    @app.get("/open")
    def open_route() -> dict[str, str]:
        return {}

    metering = make_metering(
        on_missing_customer="reject",
        endpoints=[{"route": "/v1/users/{uid}", "meter": "api_calls"}],
    )
    app.add_middleware(FluxrateMiddleware, metering=metering)
    with TestClient(app) as http:
        assert http.get("/v1/users/1").status_code == 401
        assert http.get("/open").status_code == 200
        assert http.get("/v1/users/3", headers=CUSTOMER).status_code == 200
    with TestClient(app, root_path="/api") as http:  # behind a proxy that strips /api
        assert http.get("/v1/users/4").status_code == 401
        assert http.get("/v1/users/5", headers=CUSTOMER).status_code == 200
    assert calls == [3, 5]
    assert quantities(client) == [(API_CALLS, "cust-1", 1)] * 2


def test_compiled_rules_argument(client: CapturingClient) -> None:
    from fluxrate_web.core.config import load_config
    from fluxrate_web.core.rules import RequestRules

    config = load_config(
        overrides={"meters": {"api_calls": API_CALLS}, "default_meter": "api_calls"}
    )
    app = FastAPI()

    @app.get("/x")
    def x() -> dict[str, str]:
        return {}

    app.add_middleware(FluxrateMiddleware, rules=RequestRules(config), client=client, config=config)
    with TestClient(app) as http:
        http.get("/x", headers={"X-Customer-Id": "c"})
    # no customer: resolver of this config is empty, so the event is dropped and counted
    assert client.events == []
    assert client.stats.dropped == 1
