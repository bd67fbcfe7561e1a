"""Case modules for ``bench/overhead.py`` and the helpers they share.

A case module ``bench/overhead_cases/<framework>.py`` defines::

    def cases() -> dict[str, Callable[[], None] | Callable[[], Awaitable[None]]]

name -> a callable doing ONE in-process request through the framework's own machinery. It must
include ``"bare"`` and ``"fluxrate"``, plus one entry per installed peer. Optional module
attributes: ``NOTES: dict[str, str]`` (one line per case, printed under the table) and
``SKIPPED: dict[str, str]`` (peer -> why it was not measured).

The harness runs every case in its own subprocess (peers such as Sentry patch the framework for
the whole process), so ``cases()`` must be cheap and free of global side effects: build each
case lazily, on its first call (see :func:`lazy`). The first calls are warm-up and not timed.

Peers that deliver somewhere get a local sink: ``sink_url()`` is an HTTP server run by the
harness that answers every request ``200 {}``.

What the case modules share beyond these request drivers (the measured route, the metering
settings, the captured client, peer discovery and peer settings aimed at the sink, the quick
loop of a case module run alone) is in :mod:`overhead_cases._common`.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["asgi_request", "lazy", "sink_url", "wsgi_request"]

Case = Callable[[], Any]


def sink_url() -> str:
    """Base URL of the harness's local HTTP sink (``http://127.0.0.1:PORT``)."""
    return os.environ.get("FLUXRATE_BENCH_SINK", "http://127.0.0.1:9")


def lazy(factory: Callable[[], Case]) -> Case:
    """A case whose setup (``factory()``, returning the real callable) runs on the first call.

    The wrapper keeps the coroutine-ness of what ``factory`` returns: it is called once at the
    first call, and later calls go straight to the built callable."""
    built: list[Case] = []

    def call() -> Any:
        if not built:
            built.append(factory())
        return built[0]()

    return call


BENCH_HEADERS: Sequence[tuple[bytes, bytes]] = (
    (b"host", b"api.example.com"),
    (b"user-agent", b"bench-client/1.0"),
    (b"accept", b"application/json"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"x-api-key", b"key_customer_42"),
    (b"x-customer-id", b"customer-42"),
    (b"x-request-id", b"3f1b6c1e-8a1d-4a55-9f1e-0d6c1b9b2a10"),
)
"""A realistic request header set (an API key and a customer id among them)."""


def asgi_request(
    app: Any,
    path: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[bytes, bytes]] = BENCH_HEADERS,
    query_string: bytes = b"",
    expect_status: int = 200,
) -> Callable[[], Awaitable[None]]:
    """An async callable sending one HTTP request to ``app`` the way an ASGI server does: a new
    scope (and header list) per request, the app run in its own task, a ``receive`` that gives
    the (empty) body then waits, and a ``send`` that drops what it gets. The first call checks
    the status."""
    base_scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query_string,
        "state": {},
    }
    header_list = list(headers)
    request_message = {"type": "http.request", "body": b"", "more_body": False}
    checked: list[bool] = []

    async def receive() -> dict[str, Any]:
        return request_message

    async def send(message: dict[str, Any]) -> None:
        return None

    async def check_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != expect_status:
            raise AssertionError(f"{method} {path}: status {message['status']}")

    async def one() -> None:
        scope = dict(base_scope)
        scope["headers"] = list(header_list)
        scope["state"] = {}
        if not checked:
            checked.append(True)
            await asyncio.get_running_loop().create_task(app(scope, receive, check_send))
            return
        await asyncio.get_running_loop().create_task(app(scope, receive, send))

    return one


def wsgi_request(
    app: Any,
    path: str,
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    query_string: str = "",
    expect_status: int = 200,
) -> Callable[[], None]:
    """A callable sending one WSGI request to ``app``: a new environ per request, the body
    iterated and closed like a server does. The first call checks the status."""
    base = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query_string,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers or [(k.decode(), v.decode()) for k, v in BENCH_HEADERS]:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        base[key] = value
    status_seen: list[str] = []
    checked: list[bool] = []

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
        status_seen.append(status)
        return lambda data: None

    def one() -> None:
        environ = dict(base)
        environ["wsgi.input"] = io.BytesIO(b"")
        body = app(environ, start_response)
        try:
            for _chunk in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        if not checked:
            checked.append(True)
            if not status_seen or not status_seen[-1].startswith(str(expect_status)):
                raise AssertionError(f"{method} {path}: status {status_seen[-1:]}")
        status_seen.clear()

    return one
