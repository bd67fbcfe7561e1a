"""Test helpers for the core: a tiny scriptable HTTP/1.1 server on a loopback port.

It runs its own asyncio loop on a thread, speaks keep-alive HTTP/1.1, stores events by
idempotency key the way the devserver does (201 new, 200 with the original record on a
duplicate) and lets a test script the answers (``server.script = [503, 503, None]`` or a
callable). Real sockets, no mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    raw_head: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ScriptedServer:
    """``script``: a list consumed one entry per request (an int status, an ``Answer``, or
    ``None`` for the normal answer), or a callable ``(Request) -> Answer | int | None``.
    ``delay``: seconds to wait before answering."""

    script: list[Any] | Callable[[Request], Any] = field(default_factory=list)
    delay: float = 0.0
    close_after_each: bool = False
    requests: list[Request] = field(default_factory=list)
    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)
    connections: int = 0
    port: int = 0
    ssl_context: Any = None
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.base_events.Server | None = None
    _thread: threading.Thread | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> ScriptedServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._server.close()
                for writer in list(self._writers):
                    writer.transport.abort()
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(self._server.wait_closed())
                loop.run_until_complete(asyncio.sleep(0.01))
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def drop_connections(self) -> None:
        """Close every open keep-alive connection from the server side."""
        assert self._loop is not None

        def close() -> None:
            for writer in list(self._writers):
                writer.close()

        self._loop.call_soon_threadsafe(close)
        time.sleep(0.05)

    def _next_answer(self, request: Request) -> Answer | None:
        with self._lock:
            if callable(self.script):
                entry = self.script(request)
            elif self.script:
                entry = self.script.pop(0)
            else:
                entry = None
        if entry is None:
            return None
        if isinstance(entry, int):
            return entry, {}, json.dumps({"detail": f"scripted {entry}"}).encode()
        return entry  # type: ignore[no-any-return]

    def _normal_answer(self, request: Request) -> Answer:
        try:
            data = request.json()
        except ValueError:
            return 400, {}, b'{"detail":"bad json"}'
        key = data.get("idempotency_key") or f"auto-{len(self.requests)}"
        with self._lock:
            if key in self.ledger:
                return 200, {}, json.dumps(self.ledger[key]).encode()
            record = {"id": f"ev_{len(self.ledger)}", **data}
            self.ledger[key] = record
        return 201, {}, json.dumps(record).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(method, target, headers, body, head)
                self.requests.append(request)
                if self.delay:
                    await asyncio.sleep(self.delay)
                answer = self._next_answer(request)
                if answer is not None and answer[0] == -1:  # scripted: drop the connection
                    writer.transport.abort()
                    return
                status, extra, payload = answer or self._normal_answer(request)
                reason = {200: "OK", 201: "Created"}.get(status, "X")
                head_out = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                for k, v in extra.items():
                    head_out += f"{k}: {v}\r\n"
                head_out += f"content-length: {len(payload)}\r\n"
                if self.close_after_each:
                    head_out += "connection: close\r\n"
                writer.write(head_out.encode() + b"\r\n" + payload)
                await writer.drain()
                if self.close_after_each:
                    writer.close()
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


@contextlib.contextmanager
def scripted_server(**kwargs: Any) -> Iterator[ScriptedServer]:
    server = ScriptedServer(**kwargs)
    with server:
        yield server


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def make_certificate(directory: str) -> tuple[str, str] | None:
    """A throwaway self-signed certificate for localhost/127.0.0.1 (``openssl`` CLI), or None."""
    import os
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    result = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        capture_output=True,
        check=False,
    )
    return (cert, key) if result.returncode == 0 else None


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on a thread: tunnels bytes, counts tunnels, can demand
    ``Proxy-Authorization``."""

    def __init__(self, require_auth: str | None = None) -> None:
        self.require_auth = require_auth
        self.tunnels: list[str] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> ConnectProxy:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                for task in self._tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.sleep(0.05))
                loop.run_until_complete(server.wait_closed())
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_writer = None
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = head.split("\r\n")[0].split(" ", 2)
            if self.require_auth and f"Proxy-Authorization: {self.require_auth}" not in head:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                await writer.drain()
                return
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                await writer.drain()
                return
            host, port = target.rsplit(":", 1)
            self.tunnels.append(target)
            up_reader, upstream_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                finally:
                    dst.close()

            await asyncio.gather(
                pipe(reader, upstream_writer), pipe(up_reader, writer), return_exceptions=True
            )
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            if upstream_writer is not None:
                upstream_writer.close()
            writer.close()
