"""Starlette cases for ``bench/overhead.py``: a small API, bare, metered, and under each peer.

The app has a handful of routes like a real service; every case requests
``GET /v1/items/{item_id}`` (a JSON response) with a realistic header set.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

from overhead_cases import asgi_request, lazy, sink_url
from overhead_cases._common import (
    PATH,
    available_peers,
    bounded_async,
    capturing_client,
    checked_delivery,
    delivering_client,
    fluxrate_settings,
    init_sentry,
    moesif_settings,
    teardown,
    track_in_view,
)

__all__ = ["NOTES", "SKIPPED", "cases", "teardown"]

NOTES = {
    "bare": "the app alone",
    "fluxrate": (
        "FluxrateMiddleware; the route billed by a config rule (api_calls, customer from "
        "X-Customer-Id); each event built and validated by the real seam and FluxrateClient, "
        "then captured (capture_events()) instead of queued: delivery, in the client's "
        "background thread, is measured separately by bench/transports.py"
    ),
    "floor_asgi": (
        "the floor: a do-nothing pure ASGI middleware of our shape (wraps send to read the "
        "status and count the body bytes; no metering)"
    ),
    "floor_asgi_contextvar": (
        "floor_asgi + a ContextVar set before the app and reset after it (what record() "
        "support needs)"
    ),
    "bare_track": (
        "the bare app whose view calls FluxrateClient.track() once (events captured), as an "
        "app metering by hand would"
    ),
    "fluxrate_delivering": (
        "FluxrateMiddleware with a real FluxrateClient delivering every event to the local "
        "sink from its background thread (its CPU counts: it shares the process)"
    ),
    "fluxrate_strict": (
        "fluxrate_delivering with durability: strict (each event written to a SQLite spool "
        "in a temporary directory before the request finishes)"
    ),
}


def make_app(in_view: Callable[[], object] | None = None) -> Any:
    """The app; ``in_view`` (if given) is called by the measured view on every request."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Mount, Route

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def list_items(request: Request) -> JSONResponse:
        return JSONResponse({"items": []})

    async def get_item(request: Request) -> JSONResponse:
        if in_view is not None:
            in_view()
        return JSONResponse({"id": request.path_params["item_id"], "name": "widget"})

    async def create_item(request: Request) -> JSONResponse:
        return JSONResponse({"id": 1}, status_code=201)

    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"user": "me"})

    return Starlette(
        routes=[
            Route("/health", health),
            Mount(
                "/v1",
                routes=[
                    Route("/items", list_items),
                    Route("/items", create_item, methods=["POST"]),
                    Route("/items/{item_id:int}", get_item),
                    Route("/me", me),
                ],
            ),
        ]
    )


def metered(make: Callable[[], Any]) -> tuple[Any, list[Any]]:
    """The app with FluxrateMiddleware and a real FluxrateClient whose events are captured
    (``capture_events()``: validated, built and handed over by the real client code, kept in a
    list instead of the delivery queue). Returns the app and that list."""
    from fluxrate_web.core.metering import Metering
    from fluxrate_web.starlette import FluxrateMiddleware

    client, captured = capturing_client()
    metering = Metering.from_config(overrides=fluxrate_settings(), client=client)
    app = make()
    app.add_middleware(FluxrateMiddleware, metering=metering)
    return app, captured


def fluxrate_case(make: Callable[[], Any]) -> Callable[[], Any]:
    app, captured = metered(make)
    return bounded_async(asgi_request(app, PATH), captured)


def delivering_case(make: Callable[[], Any], durability: str) -> Callable[[], Any]:
    """The metered app with a client that really delivers, in ``durability`` mode."""
    from fluxrate_web.core.metering import Metering
    from fluxrate_web.starlette import FluxrateMiddleware

    client = delivering_client(durability)
    metering = Metering.from_config(overrides=fluxrate_settings(), client=client)
    app = make()
    app.add_middleware(FluxrateMiddleware, metering=metering)
    return checked_delivery(asgi_request(app, PATH), client)


def bare_track_case(make: Callable[..., Any]) -> Callable[[], Any]:
    call, captured = track_in_view()
    return bounded_async(asgi_request(make(call), PATH), captured)


# --------------------------------------------------------------------------- the floor

_FLOOR_SCOPE: ContextVar[list[Any] | None] = ContextVar("floor_scope", default=None)


class FloorMiddleware:
    """The cheapest pure ASGI middleware of the shape metering needs, doing nothing with what it
    sees: ``send`` wrapped by a plain function (no coroutine per message) that reads the status
    and counts the response body bytes. With ``contextvar``, a context variable is also set
    around the app (what ``record()`` needs)."""

    def __init__(self, app: Any, contextvar: bool = False) -> None:
        self.app = app
        self.contextvar = contextvar

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = [0, 0]  # status, body bytes

        def counting_send(message: Any) -> Awaitable[None]:
            kind = message["type"]
            if kind == "http.response.body":
                seen[1] += len(message.get("body", b""))
            elif kind == "http.response.start":
                seen[0] = message["status"]
            return send(message)  # type: ignore[no-any-return]

        if not self.contextvar:
            await self.app(scope, receive, counting_send)
            return
        token = _FLOOR_SCOPE.set([])
        try:
            await self.app(scope, receive, counting_send)
        finally:
            _FLOOR_SCOPE.reset(token)


def floor_case(make: Callable[[], Any], contextvar: bool = False) -> Callable[[], Any]:
    app = make()
    app.add_middleware(FloorMiddleware, contextvar=contextvar)
    return asgi_request(app, PATH)


def own_cases(make: Callable[..., Any]) -> dict[str, Callable[[], Any]]:
    """The cases of this project (bare, floors, metered) for the app ``make`` builds."""
    return {
        "bare": lazy(lambda: asgi_request(make(), PATH)),
        "floor_asgi": lazy(lambda: floor_case(make)),
        "floor_asgi_contextvar": lazy(lambda: floor_case(make, contextvar=True)),
        "bare_track": lazy(lambda: bare_track_case(make)),
        "fluxrate": lazy(lambda: fluxrate_case(make)),
        "fluxrate_delivering": lazy(lambda: delivering_case(make, "memory")),
        "fluxrate_strict": lazy(lambda: delivering_case(make, "strict")),
    }


# --------------------------------------------------------------------------- peers

MakeApp = Callable[[], Any]

PEERS: dict[str, tuple[str, str]] = {
    "sentry": (
        "sentry_sdk",
        "sentry-sdk's Starlette/FastAPI integrations, traces_sample_rate=1.0, DSN on the sink",
    ),
    "opentelemetry": (
        "opentelemetry.instrumentation.asgi",
        "OpenTelemetryMiddleware, SDK TracerProvider, BatchSpanProcessor POSTing JSON to the sink",
    ),
    "starlette_exporter": (
        "starlette_exporter",
        "PrometheusMiddleware (in-process counters and histograms; scraped, nothing sent)",
    ),
    "moesif": ("moesifasgi", "MoesifMiddleware, BASE_URI on the local sink"),
}


def sentry(make_app: MakeApp) -> Any:
    init_sentry()
    return make_app()


class _SinkSpanExporter:
    """Serialises each batch of spans to JSON and POSTs it to the sink (what an OTLP/HTTP
    exporter does, without the protobuf stack)."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        body = json.dumps([json.loads(span.to_json()) for span in spans]).encode()
        request = urllib.request.Request(
            sink_url() + "/v1/traces", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def opentelemetry(make_app: MakeApp) -> Any:
    from opentelemetry import trace
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_SinkSpanExporter()))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)
    return OpenTelemetryMiddleware(make_app(), tracer_provider=provider)


def starlette_exporter(make_app: MakeApp) -> Any:
    from starlette_exporter import PrometheusMiddleware, handle_metrics

    app = make_app()
    app.add_middleware(PrometheusMiddleware)
    app.add_route("/metrics", handle_metrics)
    return app


def moesif(make_app: MakeApp) -> Any:
    from moesifasgi import MoesifMiddleware

    settings = moesif_settings("moesifasgi")
    app = make_app()
    app.add_middleware(MoesifMiddleware, settings=settings)
    return app


BUILDERS: dict[str, Callable[[MakeApp], Any]] = {
    "sentry": sentry,
    "opentelemetry": opentelemetry,
    "starlette_exporter": starlette_exporter,
    "moesif": moesif,
}

present, SKIPPED = available_peers(PEERS)
NOTES.update({name: PEERS[name][1] for name in present})


def peer_cases(make: MakeApp, path: str) -> dict[str, Callable[[], Any]]:
    return {
        name: lazy(lambda name=name: asgi_request(BUILDERS[name](make), path))  # type: ignore[misc]
        for name in present
    }


def cases() -> dict[str, Callable[[], Any]]:
    return {**own_cases(make_app), **peer_cases(make_app, PATH)}
