"""A small metered API on FastAPI.

- ``GET /health``: free (excluded in ``fluxrate.yaml``).
- ``POST /v1/chat``: answers a prompt; bills one ``api_calls`` (config rule) plus the tokens it
  used, recorded with ``fluxrate_web.record("tokens", n)``.
- ``GET /v1/stream``: streams words; bills one ``api_calls`` and the bytes sent
  (``quantity: response_bytes``), once the stream has ended.
- ``GET /v1/search``: a plain metered call (one ``api_calls``).
- ``GET /admin/stats``: the delivery client's counters (admin token required; free).

Every ``/v1`` route needs an ``X-API-Key``; the key's customer becomes the billed customer.

Run it (with the devserver started by ``fluxrate-web devserver`` and its tokens exported)::

    uvicorn --app-dir examples fastapi_app.main:app
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from fluxrate_web import record
from fluxrate_web.core.metering import Metering
from fluxrate_web.fastapi import FluxrateMiddleware

CONFIG = Path(__file__).with_name("fluxrate.yaml")

# API key -> customer. A real service looks keys up in its database.
DEFAULT_API_KEYS = {
    "key-acme-123": "acme",
    "key-globex-456": "globex",
    "key-initech-789": "initech",
}


class ChatRequest(BaseModel):
    prompt: str = Field(min_length=1, max_length=4000)
    max_tokens: int = Field(default=16, ge=1, le=256)


class ChatResponse(BaseModel):
    reply: str
    tokens: int


def _words(count: int, seed: str) -> list[str]:
    vocabulary = ["metered", "usage", "flux", "rate", "billing", "request", "token", "stream"]
    start = sum(map(ord, seed))
    return [vocabulary[(start + i) % len(vocabulary)] for i in range(count)]


async def authenticate(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> str:
    """The API-key check: the key's customer is the one billed (``customer: state:customer_id``
    in fluxrate.yaml)."""
    customer = request.app.state.api_keys.get(x_api_key or "")
    if customer is None:
        raise HTTPException(status_code=401, detail="missing or unknown X-API-Key")
    request.state.customer_id = customer
    return str(customer)


Customer = Annotated[str, Depends(authenticate)]


def create_app(
    config: str | os.PathLike[str] = CONFIG,
    *,
    client: Any = None,
    api_keys: dict[str, str] | None = None,
    admin_token: str | None = None,
) -> FastAPI:
    """The example app. ``client`` replaces the delivery client (tests pass a
    ``CapturingClient``); ``api_keys`` maps API key -> customer."""
    keys = dict(DEFAULT_API_KEYS if api_keys is None else api_keys)
    admin = admin_token or os.environ.get("EXAMPLE_ADMIN_TOKEN") or secrets.token_urlsafe(16)
    metering = Metering.from_config(config, client=client)

    app = FastAPI(title="Example metered API", version="1.0")
    app.add_middleware(FluxrateMiddleware, metering=metering)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat")
    async def chat(body: ChatRequest, customer: Customer) -> ChatResponse:
        reply = _words(body.max_tokens, body.prompt)
        tokens = len(body.prompt.split()) + len(reply)
        record("tokens", tokens)
        return ChatResponse(reply=" ".join(reply), tokens=tokens)

    @app.get("/v1/stream")
    async def stream(customer: Customer, words: int = 20) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for word in _words(min(words, 1000), customer):
                yield (word + "\n").encode()
                await asyncio.sleep(0)

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/v1/search")
    def search(q: str, customer: Customer) -> dict[str, Any]:
        return {"query": q, "results": [f"{q}-{i}" for i in range(3)]}

    @app.get("/admin/stats")
    def stats(x_admin_token: Annotated[str | None, Header()] = None) -> dict[str, int]:
        if x_admin_token is None or not secrets.compare_digest(x_admin_token, admin):
            raise HTTPException(status_code=403, detail="admin token required")
        counters = metering.client.stats  # type: ignore[attr-defined]
        names = ("enqueued", "delivered", "deduplicated", "retried", "failed", "dropped", "pending")
        return {name: int(getattr(counters, name)) for name in names}

    app.state.metering = metering
    app.state.api_keys = keys
    return app


def __getattr__(name: str) -> Any:
    # ``app`` is built on first access (``uvicorn fastapi_app.main:app``), not at import, so
    # importing this module needs no environment.
    if name == "app":
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(name)
