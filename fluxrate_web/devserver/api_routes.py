"""The Fluxrate API routes served through Starlette (``/sdk/track`` POSTs are raw ASGI)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fluxrate_web.devserver.errors import ApiError
from fluxrate_web.devserver.models import Customer, Org
from fluxrate_web.devserver.service import MAX_PAGE_SIZE
from fluxrate_web.devserver.values import now_utc
from fluxrate_web.devserver.web import (
    DevState,
    api,
    date_param,
    ingest_reply,
    int_param,
    json_response,
)

TRACK_PATH = "/api/v1/sdk/track"


def customer_json(c: Customer) -> dict[str, Any]:
    return {
        "id": c.id,
        "organization_id": c.org_id,
        "external_id": c.external_id,
        "name": c.name,
        "email": c.email,
        "created_at": c.created_at,
        "updated_at": c.created_at,
    }


def api_routes(state: DevState) -> list[Route]:
    service = state.service
    store = state.store

    @api
    async def post_track(request: Request) -> Response:
        # POSTs are served by DevServerApp._track; this route makes other methods a 405.
        body = await request.body()
        return ingest_reply(service.track(request.headers.get("x-api-key"), body))

    @api
    async def post_usage(request: Request) -> Response:
        service.usage_requests += 1
        body = await request.body()
        return ingest_reply(service.usage(request.headers.get("cookie"), body))

    def reader(request: Request) -> Org:
        return service.reader_org(request.headers.get("x-api-key"), request.headers.get("cookie"))

    @api
    async def meter_usage(request: Request) -> Response:
        org = reader(request)
        meter = service.meter_of(org, request.path_params["meter_id"])
        now = now_utc()
        end = date_param(request, "end_date", end=True) or now
        start = date_param(request, "start_date", end=False) or end - timedelta(days=30)
        group_by = request.query_params.get("group_by", "day")
        if group_by not in ("hour", "day", "week", "month"):
            raise ApiError(422, "group_by: expected hour, day, week or month")
        customer_id = request.query_params.get("customer_id") or None
        return json_response(service.meter_usage(meter, start, end, group_by, customer_id))

    @api
    async def meter_events(request: Request) -> Response:
        org = reader(request)
        meter = service.meter_of(org, request.path_params["meter_id"])
        page = int_param(request, "page", 1, 1, None)
        page_size = int_param(request, "page_size", 20, 1, MAX_PAGE_SIZE)
        return json_response(service.meter_events_page(meter, page, page_size))

    @api
    async def list_customers(request: Request) -> Response:
        org = reader(request)
        page = int_param(request, "page", 1, 1, None)
        page_size = int_param(request, "page_size", 20, 1, MAX_PAGE_SIZE)
        customers = store.customers(org.id)
        ext = request.query_params.get("external_id")
        if ext is not None:
            customers = [c for c in customers if c.external_id == ext]
        chunk = customers[(page - 1) * page_size : page * page_size]
        total = len(customers)
        return json_response(
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

    @api
    async def create_customer(request: Request) -> Response:
        org = service.jwt_org(request.headers.get("cookie"))
        data = service.parse_object(await request.body())
        name = service.required_string(data, "name")
        email = service.required_string(data, "email")
        ext = service.optional_string(data, "external_id")
        if ext is not None and (org.id, ext) in store.customers_by_ext:
            raise ApiError(409, "Customer with this external_id already exists")
        customer = store.create_customer(org.id, ext or name, name, email)
        return json_response(customer_json(customer), 201)

    return [
        Route(TRACK_PATH, post_track, methods=["POST"]),
        Route("/api/v1/usage", post_usage, methods=["POST"]),
        Route("/api/v1/meters/{meter_id}/usage", meter_usage, methods=["GET"]),
        Route("/api/v1/meters/{meter_id}/events", meter_events, methods=["GET"]),
        Route("/api/v1/customers", list_customers, methods=["GET"]),
        Route("/api/v1/customers", create_customer, methods=["POST"]),
    ]
