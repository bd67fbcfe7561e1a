"""The chaos suite: the example apps under real servers, loaded, while billing breaks.

Each scenario starts one example app (FastAPI under uvicorn, Django under uvicorn or gunicorn,
Flask under gunicorn ``--preload`` with 2 workers) against the devserver, sends it paced traffic
from a load generator that keeps its own record of every billable answer (customer, meter,
quantity), injects a fault (5xx, 429 storms, outages, restarts, latency, signals, a wrong key)
and compares the devserver's ledger with that record. See ``docs/reliability.md``.

    .venv/bin/python bench/chaos.py                         # every scenario, every app (long)
    .venv/bin/python bench/chaos.py --short                 # the CI durations (~8 minutes)
    .venv/bin/python bench/chaos.py --scenario 5xx --app flask
    .venv/bin/python bench/chaos.py --scenario long-outage-spool --outage 600

Prints a Markdown table: scenario, app, events sent, delivered, kept in the failure log (then
replayed), duplicated, lost, p99 latency of the app, peak RSS of the app's processes, verdict;
then the notes of each run. Exits 1 if any scenario failed. ``--json FILE`` writes the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from _chaos.apps import APPS  # noqa: E402
from _chaos.billing import Billing  # noqa: E402
from _chaos.scenarios import SCENARIOS, Context, Result, run_scenario, table  # noqa: E402

DEFAULT_APPS = ("fastapi", "django", "flask")
# also run by default: the development server, where it matters (SIGTERM)
EXTRA_APPS = {"sigterm": ("django-runserver",)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="CI durations (seconds, not minutes)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--app",
        action="append",
        choices=sorted(APPS),
        help=f"run only on this app (repeatable; default: {', '.join(DEFAULT_APPS)})",
    )
    parser.add_argument("--rate", type=float, help="requests per second (default per scenario)")
    parser.add_argument(
        "--outage", type=float, help="seconds of the long-outage-spool outage (default 600)"
    )
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    scenarios = args.scenario or list(SCENARIOS)
    apps = args.app or list(DEFAULT_APPS)
    results: list[Result] = []
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="fluxrate-chaos-"))

    def log(message: str) -> None:
        print(f"[{time.monotonic() - began:7.1f} s] {message}", file=sys.stderr, flush=True)

    try:
        with Billing(workdir) as billing:
            ctx = Context(
                billing, workdir, short=args.short, rate=args.rate, long_outage=args.outage, log=log
            )
            for scenario in scenarios:
                extra = () if args.app else EXTRA_APPS.get(scenario, ())
                for app in (*apps, *extra):
                    results.append(run_scenario(ctx, scenario, app))
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)

    mode = "short" if args.short else "full"
    print(f"\nchaos suite ({mode}), {time.monotonic() - began:.0f} s\n")
    print(table(results))
    print()
    for r in results:
        print(f"- {r.scenario} / {r.app} ({r.seconds:.0f} s): " + "; ".join(r.notes))
        for problem in r.problems:
            print(f"  - FAILED: {problem}")
        if r.log_tail:
            print(
                "    app log (tail):\n" + "\n".join("      " + x for x in r.log_tail.splitlines())
            )
    if args.json:
        rows = []
        for r in results:
            row = asdict(r)
            row.pop("tally", None)
            rows.append(row)
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
