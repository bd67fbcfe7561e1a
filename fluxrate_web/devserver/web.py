"""Shared pieces of the HTTP layer: the server state, JSON replies, query parameters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fluxrate_web.devserver.errors import ApiError
from fluxrate_web.devserver.faults import FaultInjector
from fluxrate_web.devserver.models import DEFAULT_ORG, Org
from fluxrate_web.devserver.service import Ingested, Service
from fluxrate_web.devserver.store import Store
from fluxrate_web.devserver.values import dumps, parse_timestamp


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


def error_body(exc: ApiError) -> bytes:
    return dumps({"detail": exc.detail})


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status, headers=headers, media_type="application/json")


def ingest_reply(result: Ingested) -> Response:
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


def api(handler: Handler) -> Handler:
    """Answer an :class:`ApiError` raised by ``handler`` as ``{"detail": ...}``."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return Response(error_body(exc), exc.status, exc.headers, "application/json")

    endpoint.__name__ = handler.__name__
    return endpoint


def int_param(request: Request, name: str, default: int, low: int, high: int | None) -> int:
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


def date_param(request: Request, name: str, *, end: bool) -> datetime | None:
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


def dev_org(state: DevState, request: Request) -> Org:
    """The organisation named by ``?org=`` (default ``default``) of an admin request."""
    name = request.query_params.get("org", DEFAULT_ORG)
    org = state.store.org_by_name(name)
    if org is None:
        raise ApiError(404, f"unknown organization {name!r}")
    return org
