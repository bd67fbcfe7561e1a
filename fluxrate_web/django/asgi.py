"""ASGI lifespan for Django: deliver the queued usage events when the server shuts down.

Django's ASGI handler speaks no lifespan protocol, and uvicorn, after its graceful shutdown on
SIGTERM, re-raises the signal with its default action: the process ends without running
``atexit`` hooks, so the core's exit flush never runs. Wrap the application::

    # asgi.py
    from django.core.asgi import get_asgi_application
    from fluxrate_web.django.asgi import with_lifespan

    application = with_lifespan(get_asgi_application())

HTTP (and websocket) scopes go straight to Django; on ``lifespan.shutdown`` the metering core
is closed: queued and in-flight events are delivered within ``shutdown_timeout`` seconds, and
what is left goes to the failure log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fluxrate_web.django import _runtime

__all__ = ["with_lifespan"]

logger = logging.getLogger("fluxrate_web.django")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _close_core() -> None:
    runtime = _runtime.STATE.runtime
    if runtime is None:
        return
    metering = runtime.metering
    try:
        metering.close(metering.config.shutdown_timeout)
    except Exception:  # pragma: no cover - close is documented not to raise
        logger.exception("fluxrate: closing the metering core failed")


def with_lifespan(app: ASGIApp) -> ASGIApp:
    """``app`` (Django's ASGI application), answering the ASGI lifespan protocol itself: the
    core starts on ``lifespan.startup`` and is closed (flushed) on ``lifespan.shutdown``."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "lifespan.startup":
                runtime = _runtime.current()
                if runtime is not None:
                    runtime.metering.start()
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                await asyncio.get_running_loop().run_in_executor(None, _close_core)
                await send({"type": "lifespan.shutdown.complete"})
                return

    application.__wrapped__ = app  # type: ignore[attr-defined]
    return application
