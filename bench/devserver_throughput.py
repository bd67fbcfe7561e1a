"""Devserver throughput: tracked events per second over HTTP/1.1 keep-alive.

Not a test. Starts a devserver in its own process (or targets ``--url``), then this process
drives ``--connections`` keep-alive connections, each sending ``POST /api/v1/sdk/track``
(one event, a fresh idempotency key) and waiting for the answer before the next, with a
minimal asyncio HTTP/1.1 client so the load generator spends as little CPU as possible.
After the run it checks that the server stored exactly the events it acknowledged.

    .venv/bin/python bench/devserver_throughput.py                 # 8 connections, 5 s
    .venv/bin/python bench/devserver_throughput.py --connections 16 --duration 10
    .venv/bin/python bench/devserver_throughput.py --file-db         # SQLite file, not memory
    FLUXRATE_DEVSERVER_ARGS="--loop asyncio" .venv/bin/python bench/devserver_throughput.py
    .venv/bin/python bench/devserver_throughput.py --url http://127.0.0.1:8787 \\
        --api-key org_live_... --meter-token ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from fluxrate_web.devserver import DevServer


@dataclass
class Tally:
    acknowledged: int = 0  # every 201, warm-up included
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)


def request_bytes(host: str, port: int, api_key: str, token: str, n: int, prefix: str) -> bytes:
    body = (
        f'{{"meter_token":"{token}","customer_external_id":"cust-{n % 50}",'
        f'"quantity":1,"idempotency_key":"{prefix}-{n}"}}'
    ).encode()
    head = (
        f"POST /api/v1/sdk/track HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"X-API-Key: {api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def connection(
    host: str,
    port: int,
    api_key: str,
    token: str,
    worker: int,
    start: float,
    warmup_end: float,
    end: float,
    tally: Tally,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    prefix = f"bench-{uuid.uuid4().hex[:8]}-{worker}"
    n = 0
    try:
        while True:
            sent = time.perf_counter()
            if sent >= end:
                break
            writer.write(request_bytes(host, port, api_key, token, n, prefix))
            n += 1
            status = await read_response(reader)
            done = time.perf_counter()
            if status == 201:
                tally.acknowledged += 1
            if done < warmup_end:
                continue
            if status == 201:
                tally.ok += 1
                tally.latencies.append(done - sent)
            else:
                tally.failed += 1
    finally:
        writer.close()
        await writer.wait_closed()


async def drive(
    url: str, api_key: str, token: str, connections: int, duration: float, warmup: float
) -> tuple[Tally, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tally = Tally()
    start = time.perf_counter()
    warmup_end = start + warmup
    end = warmup_end + duration
    await asyncio.gather(
        *(
            connection(host, port, api_key, token, i, start, warmup_end, end, tally)
            for i in range(connections)
        )
    )
    return tally, duration


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def report(tally: Tally, duration: float, connections: int, label: str) -> dict[str, object]:
    lat = sorted(tally.latencies) or [0.0]
    result = {
        "label": label,
        "connections": connections,
        "duration_s": duration,
        "events_acknowledged": tally.ok,
        "failed": tally.failed,
        "events_per_s": round(tally.ok / duration),
        "latency_ms_p50": round(statistics.median(lat) * 1000, 2),
        "latency_ms_p99": round(lat[int(len(lat) * 0.99) - 1 if len(lat) > 1 else 0] * 1000, 2),
    }
    print(json.dumps(result))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--db", help="run the devserver on this SQLite file (default: memory)")
    parser.add_argument("--file-db", action="store_true", help="use a temporary SQLite file")
    parser.add_argument(
        "--no-coalesce", action="store_true", help="devserver --no-coalesce (two sends)"
    )
    parser.add_argument("--url", help="target an already running devserver")
    parser.add_argument("--api-key")
    parser.add_argument("--meter-token")
    args = parser.parse_args()

    if args.url:
        if not (args.api_key and args.meter_token):
            parser.error("--url needs --api-key and --meter-token")
        tally, duration = asyncio.run(
            drive(
                args.url,
                args.api_key,
                args.meter_token,
                args.connections,
                args.duration,
                args.warmup,
            )
        )
        report(tally, duration, args.connections, args.url)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or (os.path.join(tmp, "bench.sqlite3") if args.file_db else None)
        extra = ["--no-coalesce"] if args.no_coalesce else []
        with DevServer(meters={"api_calls": "SUM"}, db=db, extra_args=extra) as server:
            cpu_before = cpu_seconds(server.pid)
            tally, duration = asyncio.run(
                drive(
                    server.url,
                    server.api_key,
                    server.meter_token("api_calls"),
                    args.connections,
                    args.duration,
                    args.warmup,
                )
            )
            cpu_after = cpu_seconds(server.pid)
            stats = server.stats()
            stored = stats["events"]
            http, loop = server.info.get("http"), server.info.get("loop")
        label = f"devserver ({http}, {loop}, {'file ' + db if db else 'in-memory'} SQLite)"
        result = report(tally, duration, args.connections, label)
        if cpu_before is not None and cpu_after is not None and stats["track_requests"]:
            per_event = (cpu_after - cpu_before) / stats["track_requests"] * 1e6
            print(json.dumps({"server_cpu_us_per_event": round(per_event, 1)}))
        # every acknowledged event (warm-up included) must be stored exactly once
        print(json.dumps({"acknowledged_events": tally.acknowledged, "stored_events": stored}))
        if stored != tally.acknowledged or result["failed"]:
            print("MISMATCH: the devserver lost or duplicated events", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
