"""One ``send()`` per HTTP response under uvicorn.

uvicorn writes a response's head and body with two ``transport.write`` calls, so two
``send()`` syscalls and two TCP segments (and, without ``TCP_NODELAY``, a ~40 ms Nagle and
delayed-ACK stall). :class:`CoalescingTransport` holds a write back until the next write
(sent together: the head and the body of a response) or the end of the current event loop
iteration, whichever comes first. The protocol classes below install it.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, cast

_HTTPTOOLS = importlib.util.find_spec("httptools") is not None


class CoalescingTransport(asyncio.Transport):
    __slots__ = ("_buffer", "_inner", "_loop", "_scheduled")

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._buffer: bytes | None = None
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._buffer is not None:
            held, self._buffer = self._buffer, None
            self._inner.write(held + bytes(data))
            return
        self._buffer = bytes(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._buffer is not None:
            held, self._buffer = self._buffer, None
            if not self._inner.is_closing():
                self._inner.write(held)

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        self._buffer = None
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + len(self._buffer or b"")

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()


def resolve_http(http: str = "auto") -> str:
    """``auto`` -> ``httptools`` when installed, else ``h11``."""
    if http == "auto":
        return "httptools" if _HTTPTOOLS else "h11"
    if http == "httptools" and not _HTTPTOOLS:
        raise ValueError("--http httptools: httptools is not installed")
    return http


def protocol_class(http: str = "auto") -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol class (``httptools`` or ``h11``) with coalescing writes."""
    base: Any
    if resolve_http(http) == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class CoalescingProtocol(base):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # uvloop's transports do not subclass asyncio.Transport but implement it
            inner = cast(asyncio.Transport, transport)
            super().connection_made(CoalescingTransport(inner, self.loop))

    CoalescingProtocol.__name__ = f"Coalescing{base.__name__}"
    return CoalescingProtocol


def resolve_loop(loop: str = "auto") -> str:
    """``auto`` -> ``uvloop`` when installed, else ``asyncio``."""
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    if loop == "auto":
        return "uvloop" if has_uvloop else "asyncio"
    if loop == "uvloop" and not has_uvloop:
        raise ValueError("--loop uvloop: uvloop is not installed")
    return loop
