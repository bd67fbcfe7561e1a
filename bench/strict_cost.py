"""The request-path cost of the durability modes: ``track()`` in ``memory``, ``spool`` and
``strict`` mode, per call.

Not a test. ``strict`` writes every event to the spool (SQLite, WAL, ``synchronous=NORMAL``:
one committed INSERT, a ``write()`` to the WAL and no ``fsync``) before ``track()`` returns;
``memory`` and ``spool`` only queue it. Delivery runs in the background to a local minimal
HTTP server, so the figures include the contention with the delivery thread (which, in
``strict`` mode, deletes acknowledged rows, one transaction per loop pass).

Each call is timed on its own (``time.perf_counter_ns``): median, p99, p99.9 and max per call,
then the CPU of the whole process per event (``time.process_time``: request path plus
background delivery and spool upkeep) for the same run. Two loads:

* ``flat out``: ``track()`` in a tight loop; the delivery thread is always busy;
* ``paced``: ``--rate`` calls per second, sleeping in between (as a server thread waits for
  its next request), so the delivery thread runs while the caller sleeps.

Plus ``Spool.append()`` alone, with no delivery thread: what the strict write itself costs.
Python's ``sqlite3`` releases the GIL while SQLite writes, so in a process whose delivery
thread is busy the strict ``track()`` also waits for that thread to hand the GIL back; the
flat-out figures show that worst case.

    .venv/bin/python bench/strict_cost.py                  # spool in a temporary directory
    .venv/bin/python bench/strict_cost.py --dir /var/lib/x --events 50000 --threads 4
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
sys.path.insert(0, HERE)

from transports import start_minimal  # noqa: E402

from fluxrate_web.core import FluxrateClient  # noqa: E402


def run_mode(
    mode: str,
    url: str,
    directory: str,
    events: int,
    threads: int,
    metadata: bool,
    rate: float | None = None,
) -> dict[str, float]:
    spool_dir = os.path.join(directory, mode)
    kwargs: dict[str, object] = {}
    if mode != "memory":
        kwargs = {"durability": mode, "spool_path": spool_dir}
    client = FluxrateClient("org_live_bench", url, max_queue_size=10_000_000, **kwargs)  # type: ignore[arg-type]
    client.track("meter-token-0001", "warm")  # opens the spool, starts the worker
    assert client.flush(10)
    meta = {"user_id": "u_1", "plan": "pro"} if metadata else None
    per_thread = events // threads
    samples: list[list[int]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        track = client.track
        clock = time.perf_counter_ns
        out = samples[i]
        barrier.wait()
        began = time.perf_counter()
        for n in range(per_thread):
            if rate is not None:
                delay = began + n * threads / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            start = clock()
            track("meter-token-0001", "cust_42", 1 + n % 3, metadata=meta)
            out.append(clock() - start)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    barrier.wait()
    for w in workers:
        w.join()
    tracked_wall = time.perf_counter() - wall0
    assert client.flush(120)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    stats = client.stats
    client.close()
    left = os.listdir(spool_dir) if os.path.isdir(spool_dir) else []
    assert stats.failed == 0, stats
    assert stats.delivered == per_thread * threads + 1, stats
    assert not left, left  # strict: every row deleted once acknowledged
    calls = sorted(x for s in samples for x in s)
    n = len(calls)
    return {
        **_quantiles_us(calls),
        "cpu_per_event": cpu / n * 1e6,
        "track_rate": n / tracked_wall,
        "end_to_end": n / wall,
    }


def append_alone(directory: str, events: int) -> dict[str, float]:
    """``Spool.append()`` in a loop, no client and no delivery thread."""
    from fluxrate_web.core.events import UsageEvent
    from fluxrate_web.core.spool import Spool

    spool = Spool(os.path.join(directory, "alone"))
    assert spool.open()
    batch = [UsageEvent.create("meter-token-0001", "cust_42", 1) for _ in range(events)]
    calls = []
    clock = time.perf_counter_ns
    for event in batch:
        start = clock()
        spool.append(event)
        calls.append(clock() - start)
    spool.ack([e.idempotency_key for e in batch])
    spool.close()
    calls.sort()
    return _quantiles_us(calls)


def _quantiles_us(calls: list[int]) -> dict[str, float]:
    """Median, p99, p99.9 and max, in µs, of ``calls`` (sorted durations in ns)."""
    n = len(calls)
    return {
        "median": statistics.median(calls) / 1000,
        "p99": calls[int(n * 0.99)] / 1000,
        "p999": calls[int(n * 0.999)] / 1000,
        "max": calls[-1] / 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best kept)")
    parser.add_argument("--metadata", action="store_true", help="track with a small metadata")
    parser.add_argument("--dir", default=None, help="where the spool goes (default: a tmp dir)")
    parser.add_argument("--rate", type=float, default=1000.0, help="calls/s of the paced load")
    parser.add_argument(
        "--paced-events", type=int, default=5_000, help="events of each paced run (default 5000)"
    )
    args = parser.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="fluxrate-strict-bench-")
    os.makedirs(base, exist_ok=True)
    server, url = start_minimal()
    best: dict[tuple[str, str], dict[str, float]] = {}
    alone: dict[str, float] | None = None
    try:
        for _ in range(args.rounds):
            for load, rate, n in (
                ("flat out", None, args.events),
                (f"paced {args.rate:,.0f}/s", args.rate, args.paced_events),
            ):
                for mode in ("memory", "spool", "strict"):
                    result = run_mode(mode, url, base, n, args.threads, args.metadata, rate)
                    key = (load, mode)
                    if key not in best or result["median"] < best[key]["median"]:
                        best[key] = result
            result = append_alone(base, args.events)
            if alone is None or result["median"] < alone["median"]:
                alone = result
    finally:
        server.terminate()
        server.wait(10)
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    fs = "?"
    try:
        with open("/proc/mounts") as fh:
            mounts = [line.split() for line in fh]
        target = os.path.realpath(base)
        match = max((m for m in mounts if target.startswith(m[1])), key=lambda m: len(m[1]))
        fs = match[2]
    except Exception:
        pass
    print(
        f"# track() per call by durability mode: Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {args.events:,} events x {args.rounds} rounds (best), "
        f"{args.threads} thread(s){', with metadata' if args.metadata else ''}; spool on {fs}"
    )
    print("| load | mode | median | p99 | p99.9 | max | process CPU per event (incl. delivery) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (load, mode), r in best.items():
        print(
            f"| {load} | `{mode}` | {r['median']:.1f} µs | {r['p99']:.1f} µs "
            f"| {r['p999']:.1f} µs | {r['max'] / 1000:.1f} ms | {r['cpu_per_event']:.0f} µs |"
        )
    assert alone is not None
    print(
        f"| no delivery thread | `Spool.append()` alone | {alone['median']:.1f} µs "
        f"| {alone['p99']:.1f} µs | {alone['p999']:.1f} µs | {alone['max'] / 1000:.1f} ms | |"
    )
    print()
    for load in dict.fromkeys(load for load, _ in best):
        added = best[(load, "strict")]["median"] - best[(load, "memory")]["median"]
        print(f"{load}: strict adds {added:.1f} µs per track() (median) to the request path")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
