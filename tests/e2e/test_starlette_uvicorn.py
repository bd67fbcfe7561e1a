"""End to end: a FastAPI app under a real uvicorn (in a thread), real HTTP from httpx, events
delivered by the real client to the devserver over loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import BackgroundTasks, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

from fluxrate_web import meter, record
from fluxrate_web.core.metering import Metering
from fluxrate_web.devserver import DevServer
from fluxrate_web.starlette import FluxrateMiddleware

CUSTOMER_HEADER = "X-Customer-Id"


class ThreadedUvicorn:
    """uvicorn serving ``app`` on a free loopback port in a thread (lifespan on)."""

    def __init__(self, app: Any) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, lifespan="on", log_config=None, access_log=False, ws="none", timeout_notify=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedUvicorn:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


def build_app(server: DevServer, **settings: Any) -> tuple[FastAPI, Metering]:
    app = FastAPI()
    overrides: dict[str, Any] = {
        "api_key": server.api_key,
        "base_url": server.url,
        "allow_insecure": True,
        "meters": {name: server.meter_token(name) for name in ("api_calls", "peak", "level")},
        "customer": f"header:{CUSTOMER_HEADER}",
        "endpoints": [{"route": "/v1/*", "meter": "api_calls"}],
    }
    overrides.update(settings)
    metering = Metering.from_config(overrides=overrides)
    app.add_middleware(FluxrateMiddleware, metering=metering)

    @app.get("/v1/ok")
    def ok() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/v1/bad")
    def bad() -> dict[str, str]:
        raise HTTPException(status_code=400, detail="no")

    @app.get("/v1/boom")
    async def boom() -> dict[str, str]:
        raise RuntimeError("boom")

    @app.post("/v1/chat")
    async def chat(request: Request) -> dict[str, int]:
        body = await request.json()
        tokens = len(body["prompt"].split())
        record("peak", tokens)
        return {"tokens": tokens}

    @app.post("/v1/sync-chat")
    def sync_chat() -> dict[str, int]:
        record("peak", 9)
        return {"tokens": 9}

    @app.get("/stream")
    @meter("level", quantity="response_bytes")
    async def stream(chunks: int = 5, delay: float = 0.0) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for _i in range(chunks):
                yield b"x" * 100
                await asyncio.sleep(delay)

        return StreamingResponse(body(), media_type="application/octet-stream")

    @app.get("/v1/later")
    def later(tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(time.sleep, 0.2)
        return {"ok": "later"}

    @app.get("/health")
    @meter.exempt
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app, metering


@pytest.fixture
def served(fluxrate_server: DevServer) -> Iterator[tuple[DevServer, str, Metering]]:
    app, metering = build_app(fluxrate_server)
    with ThreadedUvicorn(app) as uv:
        yield fluxrate_server, uv.url, metering


def wait_for(server: DevServer, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    summary = server.summary()
    while not predicate(summary) and time.monotonic() < deadline:
        time.sleep(0.05)
        summary = server.summary()
    return summary


def test_billed_by_status_through_real_http(
    served: tuple[DevServer, str, Metering],
) -> None:
    server, url, metering = served
    with httpx.Client(base_url=url) as http:
        for _i in range(3):
            assert http.get("/v1/ok", headers={CUSTOMER_HEADER: "acme"}).status_code == 200
        assert http.get("/v1/bad", headers={CUSTOMER_HEADER: "acme"}).status_code == 400
        assert http.get("/health", headers={CUSTOMER_HEADER: "acme"}).status_code == 200
        assert http.get("/v1/ok", headers={CUSTOMER_HEADER: "globex"}).status_code == 200
    # uvicorn drops a keep-alive connection after an app exception: its own client
    with httpx.Client(base_url=url, headers={"Connection": "close"}) as http:
        assert http.get("/v1/boom", headers={CUSTOMER_HEADER: "acme"}).status_code == 500
    assert metering.flush(10)
    summary = wait_for(server, lambda s: s.get("globex", {}).get("api_calls") == 1)
    assert summary["acme"]["api_calls"] == 3
    assert summary["globex"]["api_calls"] == 1


def test_record_sync_and_async_and_background_tasks(
    served: tuple[DevServer, str, Metering],
) -> None:
    server, url, metering = served
    with httpx.Client(base_url=url) as http:
        response = http.post(
            "/v1/chat", json={"prompt": "one two three four"}, headers={CUSTOMER_HEADER: "acme"}
        )
        assert response.json() == {"tokens": 4}
        assert http.post("/v1/sync-chat", headers={CUSTOMER_HEADER: "acme"}).status_code == 200
        started = time.monotonic()
        assert http.get("/v1/later", headers={CUSTOMER_HEADER: "acme"}).status_code == 200
        # billing does not wait for the background task (0.2 s) nor changes with it
    assert metering.flush(10)
    summary = wait_for(server, lambda s: s.get("acme", {}).get("api_calls") == 3)
    assert summary["acme"]["api_calls"] == 3
    assert summary["acme"]["peak"] == 9  # MAX of 4 and 9
    assert time.monotonic() - started < 10


def test_streaming_bytes_counted_after_the_stream_ends(
    served: tuple[DevServer, str, Metering],
) -> None:
    server, url, metering = served
    with (
        httpx.Client(base_url=url) as http,
        http.stream("GET", "/stream?chunks=7&delay=0.01", headers={CUSTOMER_HEADER: "s1"}) as r,
    ):
        received = 0
        for chunk in r.iter_bytes():
            received += len(chunk)
            # nothing is delivered while the body is still streaming
            assert server.events(meter="level") == []
    assert received == 700
    assert metering.flush(10)
    summary = wait_for(server, lambda s: "s1" in s)
    assert summary["s1"]["level"] == 700


def test_client_disconnect_mid_stream_is_not_billed(
    served: tuple[DevServer, str, Metering],
) -> None:
    server, url, metering = served
    with httpx.Client(base_url=url) as http:
        with http.stream(
            "GET", "/stream?chunks=200&delay=0.01", headers={CUSTOMER_HEADER: "gone"}
        ) as r:
            next(r.iter_bytes())
        # the streamed response is closed before its end: the connection is dropped
        assert http.get("/stream?chunks=1", headers={CUSTOMER_HEADER: "done"}).status_code == 200
    time.sleep(0.3)  # let uvicorn notice the disconnect and the app stop streaming
    assert metering.flush(10)
    summary = wait_for(server, lambda s: "done" in s)
    assert summary["done"]["level"] == 100
    assert "gone" not in summary


def test_reject_mode_answers_401_over_real_http(fluxrate_server: DevServer) -> None:
    app, metering = build_app(fluxrate_server, on_missing_customer="reject")
    with ThreadedUvicorn(app) as uv, httpx.Client(base_url=uv.url) as http:
        rejected = http.get("/v1/ok")
        assert rejected.status_code == 401
        assert rejected.json()["detail"]
        assert http.get("/health").status_code == 200
        assert http.get("/v1/ok", headers={CUSTOMER_HEADER: "acme"}).status_code == 200
    # uvicorn's lifespan shutdown flushed the client
    summary = wait_for(fluxrate_server, lambda s: "acme" in s)
    assert summary == {"acme": {"api_calls": 1}}
    assert metering.client.stats.dropped == 0  # type: ignore[attr-defined]
