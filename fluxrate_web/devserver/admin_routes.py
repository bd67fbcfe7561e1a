"""The admin routes (``/_dev/*``, no authentication, never faulted), the page and health."""

from __future__ import annotations

import logging
from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fluxrate_web.devserver import jwt, seed
from fluxrate_web.devserver.dashboard import dashboard_routes
from fluxrate_web.devserver.errors import ApiError
from fluxrate_web.devserver.faults import FaultSettings
from fluxrate_web.devserver.models import DEFAULT_ORG
from fluxrate_web.devserver.values import format_timestamp, now_utc
from fluxrate_web.devserver.web import DevState, api, date_param, dev_org, json_response

log = logging.getLogger("fluxrate_web.devserver")


def admin_routes(state: DevState) -> list[Route]:
    service = state.service
    store = state.store

    @api
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
        return json_response({"organizations": orgs, "strict_customers": service.strict_customers})

    @api
    async def dev_events(request: Request) -> Response:
        org = dev_org(state, request)
        meter_id = customer_id = None
        if (name := request.query_params.get("meter")) is not None:
            meter = next((m for m in store.meters(org.id) if m.name == name), None)
            if meter is None:
                raise ApiError(404, f"unknown meter {name!r}")
            meter_id = meter.id
        if (ext := request.query_params.get("customer")) is not None:
            customer = store.customers_by_ext.get((org.id, ext))
            if customer is None:
                return json_response([])
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
        return json_response(out)

    @api
    async def dev_summary(request: Request) -> Response:
        org = dev_org(state, request)
        start = date_param(request, "start", end=False)
        end = date_param(request, "end", end=True)
        return json_response(service.summary(org, start, end))

    @api
    async def dev_stats(request: Request) -> Response:
        return json_response(
            {
                "track_requests": service.track_requests,
                "usage_requests": service.usage_requests,
                "events": store.count_events(),
                "customers": len(store.customers_by_id),
                "track_responses": dict(sorted(state.track_responses.items())),
                "faults": state.faults.describe(),
            }
        )

    @api
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
        return json_response(state.faults.describe())

    @api
    async def dev_reset(request: Request) -> Response:
        state.reset()
        return json_response({"reset": True})

    @api
    async def dev_seed(request: Request) -> Response:
        body = await request.body()
        try:
            extra = seed.from_mapping(service.parse_object(body), "body")
            store.apply_seed(extra)
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        return await dev_state(request)

    @api
    async def dev_token(request: Request) -> Response:
        body = await request.body()
        data = service.parse_object(body) if body.strip() else {}
        org = store.org_by_name(str(data.get("org", DEFAULT_ORG)))
        if org is None:
            raise ApiError(404, "unknown organization")
        ttl = data.get("ttl", jwt.DEFAULT_TTL)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float | Decimal):
            raise ApiError(422, "ttl: expected a number of seconds")
        token = jwt.mint(service.jwt_secret, org_id=org.id, ttl=float(ttl))
        return json_response(
            {"access_token": token, "token_type": "cookie", "expires_in": int(ttl)}
        )

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "time": format_timestamp(now_utc())})

    return [
        *dashboard_routes(state),
        Route("/health", health, methods=["GET"]),
        Route("/_dev/state", dev_state, methods=["GET"]),
        Route("/_dev/events", dev_events, methods=["GET"]),
        Route("/_dev/summary", dev_summary, methods=["GET"]),
        Route("/_dev/stats", dev_stats, methods=["GET"]),
        Route("/_dev/faults", dev_faults, methods=["GET", "POST", "DELETE"]),
        Route("/_dev/reset", dev_reset, methods=["POST"]),
        Route("/_dev/seed", dev_seed, methods=["POST"]),
        Route("/_dev/token", dev_token, methods=["POST"]),
    ]
