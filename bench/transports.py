"""Delivery transports side by side: client CPU per delivered event and events per second.

Not a test. Each (transport, in-flight) pair runs in its own client process, so the CPU it
reports (``time.process_time()`` of that process divided by the events it got answers for)
belongs to that client alone. Two targets, each in its own process: a minimal asyncio HTTP/1.1
server (answers 201 with a small JSON body, one write per response) and the devserver.

    .venv/bin/python bench/transports.py                  # the full table (about a minute)
    .venv/bin/python bench/transports.py --quick          # fewer events per run
    .venv/bin/python bench/transports.py --only lean-httptools,aiohttp --target minimal

Transports:

* ``httpx-async``: ``httpx.AsyncClient`` (one client, N coroutines);
* ``httpx-sync``: ``httpx.Client``, one request at a time;
* ``urllib3``: ``urllib3.PoolManager``, one request at a time;
* ``aiohttp``: ``aiohttp.ClientSession`` (one session, N coroutines);
* ``lean-h11``: fluxrate-web's transport (asyncio.Protocol keep-alive pool, request written in
  one call, TCP_NODELAY) parsing responses with h11;
* ``lean-httptools``: the same parsing responses with httptools (llhttp): the one shipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))

TRANSPORTS = ["httpx-async", "httpx-sync", "urllib3", "aiohttp", "lean-h11", "lean-httptools"]
SEQUENTIAL = {"httpx-sync", "urllib3"}
# events per run (full / --quick): the slow clients get fewer so the table takes a minute
EVENTS = {
    "httpx-async": (600, 200),
    "httpx-sync": (1500, 400),
    "urllib3": (2000, 500),
    "aiohttp": (3000, 800),
    "lean-h11": (4000, 1000),
    "lean-httptools": (6000, 1500),
}
WARMUP = 100

# --------------------------------------------------------------------------- minimal server


class _MinimalProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1: read head + Content-Length body, answer 201, one write."""

    BODY = b'{"id":"00000000-0000-0000-0000-000000000000","quantity":"1"}'
    RESPONSE = (
        b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(BODY)).encode()
        + b"\r\n\r\n"
        + BODY
    )

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        out = []
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15 : head.find(b"\r\n", i) if b"\r\n" in head[i:] else None])
            total = end + 4 + length
            if len(buffer) < total:
                break
            buffer = buffer[total:]
            out.append(self.RESPONSE)
        self.buffer = buffer
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


def serve_minimal() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_MinimalProtocol, "127.0.0.1", 0, backlog=512)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------- clients


def _bodies(token: str, n: int, prefix: str) -> list[bytes]:
    from fluxrate_web.core.events import UsageEvent
    from fluxrate_web.core.transport import track_body

    return [
        track_body(UsageEvent.create(token, f"bench-{i % 50}", 1, idempotency_key=f"{prefix}-{i}"))
        for i in range(n)
    ]


async def _async_pool(start: int, stop: int, inflight: int, send: Any) -> int:
    """``await send(i)`` for ``i`` in ``[start, stop)`` from ``inflight`` concurrent workers;
    returns how many answered true."""
    ok = 0
    next_index = start

    async def worker() -> None:
        nonlocal ok, next_index
        while next_index < stop:
            i = next_index
            next_index += 1
            if await send(i):
                ok += 1

    await asyncio.gather(*(worker() for _ in range(inflight)))
    return ok


def run_client(name: str, url: str, key: str, token: str, n: int, inflight: int) -> dict[str, Any]:
    prefix = f"{name}-{inflight}-{os.getpid()}-{time.time_ns()}"
    bodies = _bodies(token, n + WARMUP, prefix)
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    target = url.rstrip("/") + "/api/v1/sdk/track"
    result: dict[str, Any] = {}

    def measure(run: Any) -> None:
        run(0, WARMUP)  # connect, warm caches
        cpu, wall = time.process_time(), time.perf_counter()
        ok = run(WARMUP, WARMUP + n)
        result.update(
            cpu_us=(time.process_time() - cpu) / max(ok, 1) * 1e6,
            eps=ok / (time.perf_counter() - wall),
            ok=ok,
        )

    if name == "httpx-sync":
        import httpx

        with httpx.Client() as client:

            def run(a: int, b: int) -> int:
                return sum(
                    client.post(target, content=bodies[i], headers=headers).status_code < 300
                    for i in range(a, b)
                )

            measure(run)
    elif name == "urllib3":
        import urllib3

        pool = urllib3.PoolManager(maxsize=4)

        def run(a: int, b: int) -> int:
            return sum(
                pool.request("POST", target, body=bodies[i], headers=headers).status < 300
                for i in range(a, b)
            )

        measure(run)
        pool.clear()
    else:
        loop = asyncio.new_event_loop()
        try:
            if name == "httpx-async":
                import httpx

                client = httpx.AsyncClient(
                    limits=httpx.Limits(
                        max_connections=inflight, max_keepalive_connections=inflight
                    )
                )

                async def send(i: int) -> bool:
                    r = await client.post(target, content=bodies[i], headers=headers)
                    return r.status_code < 300

                closer: Any = client.aclose
            elif name == "aiohttp":
                import aiohttp

                async def make() -> Any:
                    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight))

                session = loop.run_until_complete(make())

                async def send(i: int) -> bool:
                    async with session.post(target, data=bodies[i], headers=headers) as r:
                        await r.read()
                        return r.status < 300

                closer = session.close
            else:
                from fluxrate_web.core.transport import Transport, Wire, parse_base_url

                endpoint = parse_base_url(url)
                transport = Transport(endpoint, parser=name.split("-", 1)[1], max_idle=inflight)
                wire = Wire(endpoint, api_key=key)
                from fluxrate_web.core.events import UsageEvent

                events = [
                    UsageEvent.create(token, f"bench-{i % 50}", 1, idempotency_key=f"{prefix}-{i}")
                    for i in range(n + WARMUP)
                ]
                requests = [wire.build(e) for e in events]

                async def send(i: int) -> bool:
                    return (await transport.request(requests[i])).status < 300

                closer = transport.aclose

            def run(a: int, b: int) -> int:
                return loop.run_until_complete(_async_pool(a, b, inflight, send))

            measure(run)
            loop.run_until_complete(closer())
        finally:
            loop.close()
    return result


# --------------------------------------------------------------------------- orchestration


def _client_process(
    name: str, url: str, key: str, token: str, n: int, inflight: int
) -> dict[str, Any] | None:
    cmd = [
        sys.executable,
        __file__,
        "--client",
        name,
        "--url",
        url,
        "--token",
        token,
        "--n",
        str(n),
        "--inflight",
        str(inflight),
    ]
    env = {**os.environ, "BENCH_API_KEY": key}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    if proc.returncode != 0:
        sys.stderr.write(f"{name} x{inflight} failed:\n{proc.stderr[-2000:]}\n")
        return None
    parsed: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return parsed


def start_minimal() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def measure_table(
    names: list[str], targets: list[str], quick: bool, inflights: tuple[int, ...] = (1, 16)
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    servers: list[tuple[str, str, str, str]] = []
    minimal = None
    dev = None
    try:
        if "minimal" in targets:
            minimal, url = start_minimal()
            servers.append(("minimal", url, "k", "tok"))
        if "devserver" in targets:
            from fluxrate_web.devserver import DevServer

            dev = DevServer(meters={"api_calls": "SUM"}).start()
            servers.append(("devserver", dev.url, dev.api_key, dev.meter_token("api_calls")))
        for target, url, key, token in servers:
            for name in names:
                for inflight in inflights:
                    if name in SEQUENTIAL and inflight != 1:
                        continue
                    n = EVENTS[name][1 if quick else 0]
                    if target == "devserver" and dev is not None:
                        dev.reset()  # every transport meets an empty ledger
                    r = _client_process(name, url, key, token, n, inflight)
                    if r is None:
                        continue
                    row = {"target": target, "transport": name, "inflight": inflight, **r}
                    rows.append(row)
                    print(
                        f"  {target:9s} {name:15s} x{inflight:<2d} "
                        f"{row['cpu_us']:8.0f} us/event {row['eps']:8.0f} events/s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        if minimal is not None:
            minimal.terminate()
            minimal.wait(10)
        if dev is not None:
            dev.stop()
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| target | transport | in flight | client CPU per event | events/s |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['target']} | {r['transport']} | {r['inflight']} | "
            f"{r['cpu_us']:,.0f} µs | {r['eps']:,.0f} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--inflight", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="fewer events per run")
    parser.add_argument("--only", default="", help="comma-separated transports")
    parser.add_argument("--target", default="minimal,devserver", help="minimal,devserver")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    if args.serve:
        serve_minimal()
        return 0
    if args.client:
        key = os.environ.get("BENCH_API_KEY", "k")
        print(json.dumps(run_client(args.client, args.url, key, args.token, args.n, args.inflight)))
        return 0
    names = [n for n in args.only.split(",") if n] or TRANSPORTS
    targets = [t for t in args.target.split(",") if t]
    print(
        f"# transports, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        file=sys.stderr,
    )
    rows = measure_table(names, targets, args.quick)
    print(markdown(rows))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
