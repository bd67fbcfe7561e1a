"""In-process overhead of a metered route: bare app vs fluxrate-web vs peers, per framework.

    .venv/bin/python bench/overhead.py                       # every framework with a case module
    .venv/bin/python bench/overhead.py starlette fastapi --rounds 21 --number 2000
    .venv/bin/python bench/overhead.py --json results.json   # raw per-round figures too

Each framework has a case module ``bench/overhead_cases/<framework>.py`` whose ``cases()``
returns name -> a callable doing one in-process request (an ``async def`` for ASGI frameworks,
awaited inside a running event loop; a plain function for WSGI). See
``bench/overhead_cases/__init__.py`` for the protocol.

How it measures:

- every case runs in its **own subprocess** (peers such as Sentry patch the framework for the
  whole process, which must not slow the bare app), started once and kept for the whole run;
- each worker warms its case up (``--warmup`` requests, untimed: caches, lazy imports);
- then **rounds are interleaved**: in every round each case, in a rotated order, times
  ``--number`` back-to-back requests and reports µs per request; only one worker is busy at a
  time, so the cases share the machine evenly;
- the table gives the **median over rounds** of CPU µs per request (``time.process_time()`` of
  the worker: every thread of it, so a peer's background exporter counts, while other load on
  the machine does not), the ratio to ``bare``, the wall-clock median for reference, and the
  resident memory each worker grew by during the timed rounds.

Peers that ship data somewhere get a local HTTP sink run by this script (``sink_url()``): it
answers every request ``200 {}``, in this (otherwise idle) parent process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CASES_DIR = BENCH_DIR / "overhead_cases"
ORDER = ("starlette", "fastapi", "django", "flask")


# --------------------------------------------------------------------------- worker side


def _rss_kib() -> int:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:  # not Linux
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _load_cases(framework: str) -> tuple[Any, dict[str, Any]]:
    sys.path.insert(0, str(BENCH_DIR))
    sys.path.insert(1, str(BENCH_DIR.parent))
    module = importlib.import_module(f"overhead_cases.{framework}")
    return module, module.cases()


def _worker(framework: str, case: str | None, warmup: int) -> int:
    """Serve one case over stdin/stdout: ``run N`` -> µs per request; ``quit``. With no case,
    print the case list (and notes) and exit."""
    module, cases = _load_cases(framework)
    out = sys.stdout
    if case is None:
        out.write(
            json.dumps(
                {
                    "cases": list(cases),
                    "notes": getattr(module, "NOTES", {}),
                    "skipped": getattr(module, "SKIPPED", {}),
                }
            )
            + "\n"
        )
        return 0
    fn = cases[case]
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def timed(n: int) -> tuple[float, float]:
        """(CPU seconds of the whole process, wall seconds) for ``n`` requests."""
        first = fn()
        if inspect.isawaitable(first):

            async def many() -> tuple[float, float]:
                await first
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(n):
                    await fn()
                return time.process_time() - cpu, time.perf_counter() - wall

            return loop.run_until_complete(many())
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        return time.process_time() - cpu, time.perf_counter() - wall

    try:
        timed(warmup)
    except Exception as exc:
        out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return 1
    rss0 = _rss_kib()
    out.write(json.dumps({"ready": True, "rss_kib": rss0}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        n = int(command[1])
        gc.collect()
        cpu, wall = timed(n)
        growth = _rss_kib() - rss0
        reply = {"us": cpu / n * 1e6, "wall_us": wall / n * 1e6, "rss_growth_kib": growth}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    teardown = getattr(module, "teardown", None)
    if callable(teardown):
        teardown()
    loop.close()
    return 0


# --------------------------------------------------------------------------- the local sink


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_GET = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _SinkServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A delivering client closed at a worker's exit resets its keep-alive connections:
        # expected, and no traceback in the middle of the tables.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _start_sink() -> tuple[ThreadingHTTPServer, str]:
    server = _SinkServer(("127.0.0.1", 0), _Sink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# --------------------------------------------------------------------------- parent side


class _Worker:
    def __init__(self, framework: str, case: str, warmup: int, env: dict[str, str]) -> None:
        self.case = case
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                framework,
                "--case",
                case,
                "--warmup",
                str(warmup),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.error: str | None = None

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"worker exited ({self.proc.wait()})"}
        result: dict[str, Any] = json.loads(line)
        return result

    def run(self, number: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"run {number}\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _bench_framework(
    framework: str, rounds: int, number: int, warmup: int, env: dict[str, str]
) -> dict[str, Any]:
    listing = subprocess.run(
        [sys.executable, __file__, "--worker", framework],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if listing.returncode != 0:
        return {"error": listing.stderr.strip().splitlines()[-1:] or ["failed"]}
    info = json.loads(listing.stdout.splitlines()[-1])
    names: list[str] = info["cases"]
    workers = [_Worker(framework, name, warmup, env) for name in names]
    results: dict[str, list[float]] = {name: [] for name in names}
    walls: dict[str, list[float]] = {name: [] for name in names}
    growth: dict[str, int] = {}
    errors: dict[str, str] = {}
    try:
        live = []
        for worker in workers:
            ready = worker.read()
            if "error" in ready:
                errors[worker.case] = ready["error"]
                worker.close()
            else:
                live.append(worker)
        for r in range(rounds):
            shift = r % max(1, len(live))
            for worker in live[shift:] + live[:shift]:
                if worker.case in errors:
                    continue
                reply = worker.run(number)
                if "error" in reply:
                    errors[worker.case] = reply["error"]
                    continue
                results[worker.case].append(reply["us"])
                walls[worker.case].append(reply["wall_us"])
                growth[worker.case] = reply["rss_growth_kib"]
            print(f"  {framework}: round {r + 1}/{rounds}", file=sys.stderr, end="\r")
        print(file=sys.stderr)
    finally:
        for worker in workers:
            worker.close()
    return {
        "rounds": {k: v for k, v in results.items() if v},
        "wall_rounds": {k: v for k, v in walls.items() if v},
        "rss_growth_kib": growth,
        "errors": errors,
        "notes": info.get("notes", {}),
        "skipped": info.get("skipped", {}),
    }


def _table(framework: str, data: dict[str, Any], rounds: int, number: int) -> str:
    lines = [f"### {framework}", ""]
    if "error" in data:
        lines.append(f"not measured: {' '.join(data['error'])}")
        return "\n".join(lines)
    medians = {name: statistics.median(v) for name, v in data["rounds"].items()}
    wall = {name: statistics.median(v) for name, v in data.get("wall_rounds", {}).items()}
    bare = medians.get("bare")
    lines.append(
        "| case | CPU µs/request (median) | ratio to bare | overhead µs | wall µs | RSS growth |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|")
    ordered = sorted(medians, key=lambda n: (n != "bare", n != "fluxrate", medians[n]))
    for name in ordered:
        med = medians[name]
        ratio = f"{med / bare:.2f}x" if bare else "-"
        over = f"{med - bare:+.1f}" if bare and name != "bare" else ""
        rss = data["rss_growth_kib"].get(name)
        rss_text = f"{rss / 1024:.1f} MiB" if rss is not None else ""
        wall_text = f"{wall[name]:.1f}" if name in wall else ""
        lines.append(f"| {name} | {med:.1f} | {ratio} | {over} | {wall_text} | {rss_text} |")
    lines.append("")
    lines.append(
        f"{rounds} interleaved rounds x {number} requests per case; each case in its own process. "
        "CPU = process time of the worker (all its threads, so background exporters count), "
        "which other load on the machine does not inflate; wall = elapsed time, for reference."
    )
    for name, note in data.get("notes", {}).items():
        lines.append(f"- `{name}`: {note}")
    for name, why in data.get("skipped", {}).items():
        lines.append(f"- `{name}` not measured: {why}")
    for name, why in data.get("errors", {}).items():
        lines.append(f"- `{name}` failed: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frameworks", nargs="*", help="default: every case module present")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=2000, help="requests per case per round")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args.worker, args.case, args.warmup)

    frameworks = args.frameworks or [f for f in ORDER if (CASES_DIR / f"{f}.py").exists()]
    sink, sink_url = _start_sink()
    env = dict(os.environ, FLUXRATE_BENCH_SINK=sink_url, PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(BENCH_DIR.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "rounds": args.rounds,
        "number": args.number,
        "frameworks": {},
    }
    try:
        print(f"# In-process overhead (Python {report['python']}, {report['machine']})\n")
        for framework in frameworks:
            data = _bench_framework(framework, args.rounds, args.number, args.warmup, env)
            report["frameworks"][framework] = data
            print(_table(framework, data, args.rounds, args.number))
            print()
    finally:
        sink.shutdown()
        sink.server_close()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
