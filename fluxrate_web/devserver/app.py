"""The devserver's ASGI application.

``POST /api/v1/sdk/track`` is served by raw ASGI code (it is the hot path benchmarks hit);
everything else goes through Starlette routing. Fault injection sits in front of every
``/api/`` path; ``/_dev/*`` (admin) and ``/`` are never faulted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from fluxrate_web.devserver.admin_routes import admin_routes
from fluxrate_web.devserver.api_routes import TRACK_PATH, api_routes
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
from fluxrate_web.devserver.errors import ApiError
from fluxrate_web.devserver.faults import Action, format_retry_after
from fluxrate_web.devserver.store import COMMIT_INTERVAL
from fluxrate_web.devserver.values import dumps
from fluxrate_web.devserver.web import DevState, error_body, json_response

log = logging.getLogger("fluxrate_web.devserver")

REPLAYED = [(b"idempotent-replayed", b"true")]
REPLAYED_MISMATCH = [*REPLAYED, (b"idempotency-mismatch", b"true")]

__all__ = ["DevServerApp", "DevState", "build_app"]


def build_app(state: DevState) -> ASGIApp:
    store = state.store

    async def not_found(request: Request, exc: Exception) -> Response:
        return json_response({"detail": "Not Found"}, 404)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return json_response({"detail": "Method Not Allowed"}, 405)

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

    starlette = Starlette(
        routes=[*api_routes(state), *admin_routes(state)],
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
            await send_json(send, exc.status, error_body(exc))
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
