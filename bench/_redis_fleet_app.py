"""The app of ``bench/redis_fleet.py``: one metered Starlette route, configured by the
``fluxrate.yaml`` that ``$FLUXRATE_CONFIG`` names (``transport: redis`` or ``direct``). Served by
``uvicorn --workers N``: N processes, each with its own FluxrateClient."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from fluxrate_web.starlette import FluxrateMiddleware


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/v1/items/{item_id:int}", item), Route("/health", health)])
app.add_middleware(FluxrateMiddleware)
