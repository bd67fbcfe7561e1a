"""Raw ASGI helpers for the hot path: read a body, answer JSON in two ASGI messages, drop a
connection without answering."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("fluxrate_web.devserver")

JSON_TYPE = (b"content-type", b"application/json")


def header(scope: Scope, name: bytes) -> str | None:
    """First value of a request header (``name`` lower-case)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def send_json(
    send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [JSON_TYPE, (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def drop_connection(receive: Receive, send: Send) -> bool:
    """Close the client's socket without writing a byte of response.

    ASGI has no message for this, so we reach uvicorn's transport through its ``send``
    (bound to the request/response cycle, which holds ``transport``), close it, then wait
    for uvicorn to notice the disconnect so it does not try to answer 500 itself.
    Returns False (and the caller answers normally) on a server that hides its transport.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if not callable(getattr(transport, "close", None)):
        log.error("cannot drop the connection: the ASGI server does not expose its transport")
        return False
    transport.close()  # type: ignore[union-attr]
    try:
        async with asyncio.timeout(5):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:  # pragma: no cover - uvicorn always reports the disconnect
        pass
    return True
