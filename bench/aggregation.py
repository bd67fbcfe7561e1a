"""Pre-aggregation: HTTP requests and end-to-end throughput with and without it, in one run.

Not a test. Starts a devserver (SUM meter ``api_calls``) in its own process, then drives
``--usages`` metered usages (default 100,000) for ``--customers`` customers (default 50)
through a real ``FluxrateClient`` over loopback keep-alive HTTP:

- ``single``: ``client.track()`` per usage (one ``POST /api/v1/sdk/track`` each);
- ``aggregated (window W)``: ``client.track()`` per usage on a client built with
  ``FluxrateClient(aggregation={token: AggregationSpec("SUM", W)})``: ``track()`` validates
  (``UsageEvent.create()``) and folds, the background worker sends closed windows about once a
  second, and ``flush()`` sends the open ones.

For each mode it reports the requests that reached the devserver (``track_requests()``), the
wall time from the first usage until ``flush()`` returned with everything delivered, the
end-to-end throughput (usages per second over that time), the CPU per usage of the request
path (``track()``), and whether the devserver's per-customer totals equal those
of the single-event run.

    .venv/bin/python bench/aggregation.py                  # 100,000 usages; windows 60 s, 1 s
    .venv/bin/python bench/aggregation.py --usages 20000 --windows 60,5,1
    .venv/bin/python bench/aggregation.py --rate 5000      # pace usages at 5,000/s
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from fluxrate_web.core.aggregation import AggregationSpec
from fluxrate_web.core.client import FluxrateClient
from fluxrate_web.devserver import DevServer

METER = "api_calls"


@dataclass
class Result:
    mode: str
    requests: int
    wall: float
    path_cpu_us: float
    usages: int
    totals: dict[str, Any]
    stats: str


def drive(
    usages: int,
    customers: int,
    rate: float | None,
    on_usage: Any,
) -> float:
    """Call on_usage(customer) ``usages`` times (paced at ``rate``/s if given); returns the
    thread CPU seconds spent in the calls."""
    names = [f"cust-{i:02d}" for i in range(customers)]
    cpu0 = time.thread_time()
    start = time.perf_counter()
    for i in range(usages):
        if rate and i % 100 == 0:
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        on_usage(names[i % customers])
    return time.thread_time() - cpu0


def run(
    server: DevServer, args: argparse.Namespace, mode: str, window: float | None = None
) -> Result:
    """Track ``args.usages`` usages through a client (aggregated with ``window``, if given),
    flush, and read what the devserver got."""
    token = server.meter_token(METER)
    server.reset()
    aggregation = {token: AggregationSpec("SUM", window)} if window is not None else None
    client = FluxrateClient(server.api_key, server.url, aggregation=aggregation)
    client.start()
    t0 = time.perf_counter()
    track = client.track
    cpu = drive(args.usages, args.customers, args.rate, lambda c: track(token, c, 1))
    ok = client.flush(600)  # with aggregation, the windows still open go out now
    wall = time.perf_counter() - t0
    stats = repr(client.stats)
    client.close()
    assert ok, "flush timed out"
    return Result(
        mode,
        server.track_requests(),
        wall,
        cpu / args.usages * 1e6,
        args.usages,
        server.summary(),
        stats,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--usages", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--windows", default="60,1", help="comma-separated seconds")
    parser.add_argument(
        "--rate", type=float, default=None, help="usages per second (default: flat out)"
    )
    args = parser.parse_args(argv)
    windows = [float(w) for w in args.windows.split(",") if w.strip()]

    with DevServer(meters={METER: "SUM"}) as server:
        results = [run(server, args, "single (one request per usage)")]
        results += [run(server, args, f"aggregated (SUM, window {w:g} s)", w) for w in windows]

    baseline = results[0]
    print(
        f"\n{args.usages:,} usages for {args.customers} customers"
        f"{f' at {args.rate:,.0f}/s' if args.rate else ' (flat out)'}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs\n"
    )
    print(
        "| mode | HTTP requests to the devserver | usages per request | wall (s) "
        "| end-to-end usages/s | request-path CPU µs/usage | totals = single run |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r.mode} | {r.requests:,} | {r.usages / max(r.requests, 1):,.0f} "
            f"| {r.wall:.2f} | {r.usages / r.wall:,.0f} | {r.path_cpu_us:.2f} "
            f"| {'yes' if r.totals == baseline.totals else 'NO'} |"
        )
    print()
    for r in results:
        print(f"{r.mode}: {r.stats}")
    return 0 if all(r.totals == baseline.totals for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
