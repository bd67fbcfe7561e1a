"""The request-path cost of ``FluxrateClient.track()``: median µs per call.

Not a test. ``track()`` validates, stamps and queues; delivery runs on the dispatcher thread.
Each sample times a batch of calls (``--batch``) with ``time.perf_counter_ns``; the figure is
the median of the per-call means, so the rare batch that the delivery thread interrupts (it
takes the GIL for a moment) does not hide the typical cost. Also printed: how many cross-thread
wake-ups (``loop.call_soon_threadsafe``, a syscall each) the calls caused.

    .venv/bin/python bench/track_cost.py                 # delivering to a local minimal server
    .venv/bin/python bench/track_cost.py --samples 2000 --batch 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
sys.path.insert(0, HERE)

from transports import start_minimal  # noqa: E402

from fluxrate_web.core import FluxrateClient, UsageEvent, capture_events  # noqa: E402


def _median_us(fn: object, samples: int, batch: int) -> tuple[float, float]:
    call = fn  # type: ignore[assignment]
    per_call = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        for _ in range(batch):
            call()  # type: ignore[operator]
        per_call.append((time.perf_counter_ns() - start) / batch / 1000)
    per_call.sort()
    return statistics.median(per_call), per_call[int(len(per_call) * 0.99)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    server, url = start_minimal()
    rows = []
    try:
        client = FluxrateClient("org_live_bench", url, max_queue_size=10_000_000)
        client.track("mt", "warm")
        assert client.flush(10)
        track = client.track

        def plain() -> None:
            track("meter-token-0001", "cust_42", 1)

        def with_metadata() -> None:
            track("meter-token-0001", "cust_42", 3, metadata={"user_id": "u_1", "plan": "pro"})

        def event_only() -> None:
            UsageEvent.create("meter-token-0001", "cust_42", 1)

        before = client._lane.wakeups if client._lane else 0
        enq_before = client.stats.enqueued
        for name, fn in (
            ("track() (delivering in the background)", plain),
            ("track() with metadata", with_metadata),
            ("UsageEvent.create() alone", event_only),
        ):
            median, p99 = _median_us(fn, args.samples, args.batch)
            rows.append((name, median, p99))
        wakeups = (client._lane.wakeups if client._lane else 0) - before
        tracked = client.stats.enqueued - enq_before
        with capture_events():
            median, p99 = _median_us(plain, args.samples, args.batch)
            rows.append(("track() under capture_events()", median, p99))
        assert client.flush(120)
        delivered = client.stats.delivered
        client.close()
    finally:
        server.terminate()
        server.wait(10)
    print(
        f"# track() cost, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{args.samples} samples x {args.batch} calls"
    )
    print("| call | median per call | p99 of batch means |")
    print("|---|---:|---:|")
    for name, median, p99 in rows:
        print(f"| {name} | {median:.2f} µs | {p99:.2f} µs |")
    print()
    print(
        f"{tracked:,} events tracked, {delivered:,} delivered, "
        f"{wakeups:,} cross-thread wake-ups ({wakeups / max(tracked, 1) * 1000:.2f} per 1,000 "
        "events)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
