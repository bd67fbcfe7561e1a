"""End-to-end delivery cost: process CPU per delivered event and events/s, FluxrateClient to the
devserver (and to a minimal server), beside the raw transports compared in bench/transports.py.

Not a test. One client process tracks ``--events`` events from one thread as fast as it can and
flushes; the figure is ``time.process_time()`` of that whole process (tracking + the dispatcher
thread + parsing) divided by the events the server acknowledged. Targets: at most 100 µs per
event and at least 5,000 events/s, or the devserver's ceiling: the lean transport alone at 16
in flight against the same devserver, measured in the same run, is that ceiling.

    .venv/bin/python bench/delivery.py                  # about a minute
    .venv/bin/python bench/delivery.py --events 20000 --no-transports
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
sys.path.insert(0, HERE)

from transports import markdown, measure_table, start_minimal  # noqa: E402


def run_pipeline(url: str, key: str, token: str, n: int) -> dict[str, Any]:
    from fluxrate_web.core import FluxrateClient

    client = FluxrateClient(key, url, max_queue_size=max(100_000, n + 1))
    client.track(token, "warm-up")
    assert client.flush(30)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        client.track(token, f"cust-{i % 50}", 1)
    settled = client.flush(300)
    elapsed = time.perf_counter() - wall
    used = time.process_time() - cpu
    stats = client.stats.as_dict()
    client.close()
    ok = stats["delivered"] + stats["deduplicated"] - 1
    return {
        "cpu_us": used / max(ok, 1) * 1e6,
        "eps": ok / elapsed,
        "ok": ok,
        "settled": settled,
        "failed": stats["failed"],
    }


def _pipeline_process(url: str, key: str, token: str, n: int) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--pipeline",
            "--url",
            url,
            "--token",
            token,
            "--events",
            str(n),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_API_KEY": key},
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"pipeline run failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3, help="pipeline runs per target (best kept)")
    parser.add_argument("--no-transports", action="store_true", help="skip the transport rows")
    parser.add_argument("--pipeline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline:
        key = os.environ.get("BENCH_API_KEY", "k")
        print(json.dumps(run_pipeline(args.url, key, args.token, args.events)))
        return 0

    from fluxrate_web.devserver import DevServer

    rows: list[dict[str, Any]] = []
    minimal, minimal_url = start_minimal()
    dev = DevServer(meters={"api_calls": "SUM"}).start()
    try:
        for target, url, key, token in (
            ("devserver", dev.url, dev.api_key, dev.meter_token("api_calls")),
            ("minimal", minimal_url, "k", "tok"),
        ):
            best: dict[str, Any] | None = None
            for _ in range(args.runs):
                if target == "devserver":
                    dev.reset()  # each run meets an empty ledger
                r = _pipeline_process(url, key, token, args.events)
                print(
                    f"  {target:9s} FluxrateClient   {r['cpu_us']:6.1f} us/event "
                    f"{r['eps']:8.0f} events/s (failed {r['failed']})",
                    file=sys.stderr,
                    flush=True,
                )
                if best is None or r["eps"] > best["eps"]:
                    best = r
            assert best is not None
            rows.append(
                {
                    "target": target,
                    "transport": "**FluxrateClient.track() + flush**",
                    "inflight": 16,
                    **best,
                }
            )
        stored = len(dev.events())
    finally:
        minimal.terminate()
        minimal.wait(10)
        dev.stop()
    if not args.no_transports:
        rows += measure_table(
            ["lean-httptools", "aiohttp", "httpx-async"],
            ["devserver", "minimal"],
            quick=True,
            inflights=(16,),
        )
    print(
        f"# delivery, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{args.events:,} events per pipeline run (best of {args.runs})"
    )
    print(markdown(rows))
    print()
    print(
        f"devserver ledger after the last pipeline run: {stored:,} events stored "
        f"(expected {args.events + 1:,}: every event once)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
