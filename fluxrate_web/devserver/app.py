"""The devserver's ASGI application.

``POST /api/v1/sdk/track`` is served by raw ASGI code (it is the hot path benchmarks hit);
everything else goes through Starlette routing. Fault injection sits in front of every
``/api/`` path; ``/_dev/*`` (admin) and ``/`` are never faulted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from fluxrate_web.devserver import jwt, seed
from fluxrate_web.devserver.asgi import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    drop_connection,
    header,
    read_body,
    send_json,
)
from fluxrate_web.devserver.dashboard import render_dashboard
from fluxrate_web.devserver.errors import ApiError
from fluxrate_web.devserver.faults import Action, FaultInjector, FaultSettings, format_retry_after
from fluxrate_web.devserver.models import DEFAULT_ORG, Org
from fluxrate_web.devserver.service import MAX_PAGE_SIZE, Ingested, Service
from fluxrate_web.devserver.store import COMMIT_INTERVAL, Store
from fluxrate_web.devserver.values import dumps, format_timestamp, now_utc, parse_timestamp

log = logging.getLogger("fluxrate_web.devserver")

TRACK_PATH = "/api/v1/sdk/track"
REPLAYED = [(b"idempotent-replayed", b"true")]
REPLAYED_MISMATCH = [*REPLAYED, (b"idempotency-mismatch", b"true")]


@dataclass(slots=True)
class DevState:
    store: Store
    service: Service
    faults: FaultInjector = field(default_factory=FaultInjector)
    track_responses: dict[str, int] = field(default_factory=dict)  # status or "dropped"

    def reset(self) -> None:
        self.store.reset()
        self.service.track_requests = 0
        self.service.usage_requests = 0
        self.track_responses.clear()
        self.faults.clear()


def _error_body(exc: ApiError) -> bytes:
    return dumps({"detail": exc.detail})


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status, headers=headers, media_type="application/json")


def _ingest_reply(result: Ingested) -> Response:
    headers = {}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
        if result.mismatch:
            headers["Idempotency-Mismatch"] = "true"
    return Response(
        result.event.response_body(),
        201 if result.created else 200,
        headers=headers,
        media_type="application/json",
    )


Handler = Callable[[Request], Awaitable[Response]]


def _api(handler: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return Response(_error_body(exc), exc.status, exc.headers, "application/json")

    endpoint.__name__ = handler.__name__
    return endpoint


def _int_param(request: Request, name: str, default: int, low: int, high: int | None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"{name}: expected an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ApiError(422, f"{name}: must be {bound}")
    return value


def _date_param(request: Request, name: str, *, end: bool) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        moment = parse_timestamp(raw)
    except ValueError as exc:
        raise ApiError(422, f"{name}: {exc}") from None
    if end and len(raw) == 10:  # a plain date as an end includes that whole day
        moment += timedelta(days=1)
    return moment


def build_app(state: DevState) -> ASGIApp:
    service = state.service
    store = state.store

    def dev_org(request: Request) -> Org:
        name = request.query_params.get("org", DEFAULT_ORG)
        org = store.org_by_name(name)
        if org is None:
            raise ApiError(404, f"unknown organization {name!r}")
        return org

    # -- API (Starlette-routed) ---------------------------------------------------------------

    @_api
    async def post_track(request: Request) -> Response:
        # POSTs are served by DevServerApp._track; this route makes other methods a 405.
        body = await request.body()
        return _ingest_reply(service.track(request.headers.get("x-api-key"), body))

    @_api
    async def post_usage(request: Request) -> Response:
        service.usage_requests += 1
        body = await request.body()
        return _ingest_reply(service.usage(request.headers.get("cookie"), body))

    def reader(request: Request) -> Org:
        return service.reader_org(request.headers.get("x-api-key"), request.headers.get("cookie"))

    @_api
    async def meter_usage(request: Request) -> Response:
        org = reader(request)
        meter = service.meter_of(org, request.path_params["meter_id"])
        now = now_utc()
        end = _date_param(request, "end_date", end=True) or now
        start = _date_param(request, "start_date", end=False) or end - timedelta(days=30)
        group_by = request.query_params.get("group_by", "day")
        if group_by not in ("hour", "day", "week", "month"):
            raise ApiError(422, "group_by: expected hour, day, week or month")
        customer_id = request.query_params.get("customer_id") or None
        return _json(service.meter_usage(meter, start, end, group_by, customer_id))

    @_api
    async def meter_events(request: Request) -> Response:
        org = reader(request)
        meter = service.meter_of(org, request.path_params["meter_id"])
        page = _int_param(request, "page", 1, 1, None)
        page_size = _int_param(request, "page_size", 20, 1, MAX_PAGE_SIZE)
        return _json(service.meter_events_page(meter, page, page_size))

    def customer_json(c: Any) -> dict[str, Any]:
        return {
            "id": c.id,
            "organization_id": c.org_id,
            "external_id": c.external_id,
            "name": c.name,
            "email": c.email,
            "created_at": c.created_at,
            "updated_at": c.created_at,
        }

    @_api
    async def list_customers(request: Request) -> Response:
        org = reader(request)
        page = _int_param(request, "page", 1, 1, None)
        page_size = _int_param(request, "page_size", 20, 1, MAX_PAGE_SIZE)
        customers = store.customers(org.id)
        ext = request.query_params.get("external_id")
        if ext is not None:
            customers = [c for c in customers if c.external_id == ext]
        chunk = customers[(page - 1) * page_size : page * page_size]
        total = len(customers)
        return _json(
            {
                "data": [customer_json(c) for c in chunk],
                "meta": {
                    "page": page,
                    "page_size": page_size,
                    "total": total,
                    "total_pages": -(-total // page_size),
                },
            }
        )

    @_api
    async def create_customer(request: Request) -> Response:
        org = service.jwt_org(request.headers.get("cookie"))
        data = service.parse_object(await request.body())
        name = service.required_string(data, "name")
        email = service.required_string(data, "email")
        ext = service.optional_string(data, "external_id")
        if ext is not None and (org.id, ext) in store.customers_by_ext:
            raise ApiError(409, "Customer with this external_id already exists")
        customer = store.create_customer(org.id, ext or name, name, email)
        return _json(customer_json(customer), 201)

    # -- admin --------------------------------------------------------------------------------

    @_api
    async def dev_state(request: Request) -> Response:
        orgs = []
        for org in store.orgs.values():
            orgs.append(
                {
                    "id": org.id,
                    "name": org.name,
                    "api_keys": [
                        {"key": k.key, "scopes": sorted(k.scopes)}
                        for k in store.api_keys.values()
                        if k.org_id == org.id
                    ],
                    "meters": {
                        m.name: {"id": m.id, "token": m.token, "aggregation": m.aggregation}
                        for m in store.meters(org.id)
                    },
                    "customers": {c.external_id: c.id for c in store.customers(org.id)},
                }
            )
        return _json({"organizations": orgs, "strict_customers": service.strict_customers})

    @_api
    async def dev_events(request: Request) -> Response:
        org = dev_org(request)
        meter_id = customer_id = None
        if (name := request.query_params.get("meter")) is not None:
            meter = next((m for m in store.meters(org.id) if m.name == name), None)
            if meter is None:
                raise ApiError(404, f"unknown meter {name!r}")
            meter_id = meter.id
        if (ext := request.query_params.get("customer")) is not None:
            customer = store.customers_by_ext.get((org.id, ext))
            if customer is None:
                return _json([])
            customer_id = customer.id
        rows = store.events(org_id=org.id, meter_id=meter_id, customer_id=customer_id)
        out = []
        for row in rows:
            item = row.listing()
            item["meter"] = store.meters_by_id[row.meter_id].name
            item["customer_external_id"] = store.customers_by_id[row.customer_id].external_id
            item["metadata"] = item.pop("meta_data")
            item["created_at"] = item.pop("ingested_at")
            item["source"] = row.source
            out.append(item)
        return _json(out)

    @_api
    async def dev_summary(request: Request) -> Response:
        org = dev_org(request)
        start = _date_param(request, "start", end=False)
        end = _date_param(request, "end", end=True)
        return _json(service.summary(org, start, end))

    @_api
    async def dev_stats(request: Request) -> Response:
        return _json(
            {
                "track_requests": service.track_requests,
                "usage_requests": service.usage_requests,
                "events": store.count_events(),
                "customers": len(store.customers_by_id),
                "track_responses": dict(sorted(state.track_responses.items())),
                "faults": state.faults.describe(),
            }
        )

    @_api
    async def dev_faults(request: Request) -> Response:
        if request.method == "DELETE":
            state.faults.clear()
        elif request.method == "POST":
            data = service.parse_object(await request.body())
            seed_value = data.get("seed")
            if seed_value is not None and (
                isinstance(seed_value, bool) or not isinstance(seed_value, int)
            ):
                raise ApiError(422, "seed: expected an integer")
            try:
                settings = FaultSettings.from_mapping(data)
            except (TypeError, ValueError) as exc:
                raise ApiError(422, str(exc)) from None
            state.faults.configure(settings, seed_value)
            log.info("faults set: %s", settings)
        return _json(state.faults.describe())

    @_api
    async def dev_reset(request: Request) -> Response:
        state.reset()
        return _json({"reset": True})

    @_api
    async def dev_seed(request: Request) -> Response:
        body = await request.body()
        try:
            extra = seed.from_mapping(service.parse_object(body), "body")
            store.apply_seed(extra)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return await dev_state(request)

    @_api
    async def dev_token(request: Request) -> Response:
        body = await request.body()
        data = service.parse_object(body) if body.strip() else {}
        org = store.org_by_name(str(data.get("org", DEFAULT_ORG)))
        if org is None:
            raise ApiError(404, "unknown organization")
        ttl = data.get("ttl", jwt.DEFAULT_TTL)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float):
            raise ApiError(422, "ttl: expected a number of seconds")
        token = jwt.mint(service.jwt_secret, org_id=org.id, ttl=float(ttl))
        return _json({"access_token": token, "token_type": "cookie", "expires_in": int(ttl)})

    async def dashboard(request: Request) -> Response:
        try:
            org = dev_org(request)
        except ApiError as exc:
            return HTMLResponse(exc.detail, 404)
        return HTMLResponse(render_dashboard(state, org, service.summary(org)))

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "time": format_timestamp(now_utc())})

    async def not_found(request: Request, exc: Exception) -> Response:
        return _json({"detail": "Not Found"}, 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _json({"detail": "Method Not Allowed"}, 405)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def committer() -> None:
            while True:
                await asyncio.sleep(COMMIT_INTERVAL)
                store.commit()

        task = asyncio.get_running_loop().create_task(committer())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            store.commit()

    routes = [
        Route("/", dashboard, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route(TRACK_PATH, post_track, methods=["POST"]),
        Route("/api/v1/usage", post_usage, methods=["POST"]),
        Route("/api/v1/meters/{meter_id}/usage", meter_usage, methods=["GET"]),
        Route("/api/v1/meters/{meter_id}/events", meter_events, methods=["GET"]),
        Route("/api/v1/customers", list_customers, methods=["GET"]),
        Route("/api/v1/customers", create_customer, methods=["POST"]),
        Route("/_dev/state", dev_state, methods=["GET"]),
        Route("/_dev/events", dev_events, methods=["GET"]),
        Route("/_dev/summary", dev_summary, methods=["GET"]),
        Route("/_dev/stats", dev_stats, methods=["GET"]),
        Route("/_dev/faults", dev_faults, methods=["GET", "POST", "DELETE"]),
        Route("/_dev/reset", dev_reset, methods=["POST"]),
        Route("/_dev/seed", dev_seed, methods=["POST"]),
        Route("/_dev/token", dev_token, methods=["POST"]),
    ]
    starlette = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_allowed},
    )
    return DevServerApp(state, starlette)


class DevServerApp:
    """Dispatch: faults for ``/api/``, raw ASGI for ``/sdk/track``, Starlette for the rest."""

    def __init__(self, state: DevState, starlette: ASGIApp) -> None:
        self.state = state
        self.service = state.service
        self.faults = state.faults
        self.starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.starlette(scope, receive, send)
            return
        is_track = scope["path"] == TRACK_PATH and scope["method"] == "POST"
        if is_track:
            self.service.track_requests += 1
        action = Action.NONE
        if self.faults.active:
            action = await self._fault(receive, send, is_track)
            if action in (Action.DROP, Action.ERROR, Action.RATE_LIMIT, Action.OUTAGE):
                return
        if is_track:
            await self._track(scope, receive, send, action is Action.STORED_DROP)
        else:
            await self.starlette(scope, receive, send)

    def _count(self, outcome: int | str) -> None:
        counts = self.state.track_responses
        counts[str(outcome)] = counts.get(str(outcome), 0) + 1

    async def _fault(self, receive: Receive, send: Send, is_track: bool) -> Action:
        settings = self.faults.settings
        if settings.latency_ms > 0:
            await asyncio.sleep(settings.latency_ms / 1000)
        action = self.faults.decide()
        if action is Action.NONE or action is Action.STORED_DROP:
            return action
        await read_body(receive)
        if action is Action.DROP:
            if await drop_connection(receive, send):
                if is_track:
                    self._count("dropped")
                return action
            action = Action.ERROR
        if action is Action.RATE_LIMIT:
            status = 429
            body = b'{"detail":"Too Many Requests (injected fault)"}'
            headers = [(b"retry-after", format_retry_after(settings.retry_after).encode())]
        else:
            status = settings.status
            what = "outage window" if action is Action.OUTAGE else "injected fault"
            body = dumps({"detail": f"Service unavailable ({what})"})
            headers = []
        if is_track:
            self._count(status)
        await send_json(send, status, body, headers)
        return action

    async def _track(self, scope: Scope, receive: Receive, send: Send, drop_after: bool) -> None:
        body = await read_body(receive)
        try:
            result = self.service.track(header(scope, b"x-api-key"), body)
        except ApiError as exc:
            self._count(exc.status)
            await send_json(send, exc.status, _error_body(exc))
            return
        if drop_after and await drop_connection(receive, send):
            self._count("stored_dropped")
            return
        if result.created:
            self._count(201)
            await send_json(send, 201, result.event.response_body())
        else:
            self._count(200)
            extra = REPLAYED_MISMATCH if result.mismatch else REPLAYED
            await send_json(send, 200, result.event.response_body(), extra)
