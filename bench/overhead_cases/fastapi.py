"""FastAPI cases for ``bench/overhead.py``: a small API (an included router with a prefix),
bare, metered, and under each peer (the peers are shared with the Starlette cases).

Every case requests ``GET /v1/items/{item_id}`` (validated path parameter, JSON response) with
a realistic header set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from overhead_cases import starlette as shared
from overhead_cases._common import teardown

__all__ = ["NOTES", "SKIPPED", "cases", "teardown"]

PATH = "/v1/items/42"

NOTES = dict(shared.NOTES)
SKIPPED = dict(shared.SKIPPED)


def make_app(in_view: Callable[[], object] | None = None) -> Any:
    """The app; ``in_view`` (if given) is called by the measured view on every request."""
    from fastapi import APIRouter, FastAPI

    router = APIRouter(prefix="/v1")

    @router.get("/items")
    async def list_items() -> dict[str, list[int]]:
        return {"items": []}

    @router.post("/items", status_code=201)
    async def create_item() -> dict[str, int]:
        return {"id": 1}

    @router.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, Any]:
        if in_view is not None:
            in_view()
        return {"id": item_id, "name": "widget"}

    @router.get("/me")
    async def me() -> dict[str, str]:
        return {"user": "me"}

    app = FastAPI(openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(router)
    return app


def cases() -> dict[str, Callable[[], Any]]:
    return {**shared.own_cases(make_app), **shared.peer_cases(make_app, PATH)}
