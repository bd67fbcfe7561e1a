"""Scale-out through Redis Streams, end to end: app workers -> Redis -> relays -> devserver.

Not a test (``tests/redis/test_fleet_slow.py`` runs a short version). Starts a devserver, a
``redis-server`` (AOF, ``appendfsync everysec``) in a temporary directory, a Starlette app
(``bench/_redis_fleet_app.py``) under ``--workers`` uvicorn processes (4) configured with
``transport: redis``, ``fluxrate-web relay`` processes, and a paced HTTP load generator that
keeps its own record of every billed request (customer, count). Three phases:

``throughput``
    the load generator flat out with the relays stopped: events per second from the app
    workers into Redis (stream entries added over the load); then two relays start and drain
    the backlog: events per second from the relays into the devserver.
``chaos``
    paced load (``--rate`` for ``--duration`` s) with two relays; relay A is SIGKILLed at
    ``--kill-at`` s (a new one replaces it), then every relay is stopped at ``--down-at`` s for
    ``--down`` s (default 60) while the apps keep serving, then two relays start again. The
    devserver's ledger must equal the load generator's record: 0 lost, 0 duplicated.
``aggregation``
    ``--agg-requests`` requests (default 100,000) over ``--customers`` customers (50) with the
    meter pre-aggregated (SUM, ``--window`` s), once with ``transport: direct`` (each worker
    sends its own aggregates) and once with ``transport: redis`` (fleet-wide: one aggregate per
    customer and window): the HTTP calls that reached the devserver, and the totals.

    .venv/bin/python bench/redis_fleet.py                       # all phases (~5 minutes)
    .venv/bin/python bench/redis_fleet.py --phase chaos --down 60 --rate 500 --duration 120
    .venv/bin/python bench/redis_fleet.py --phase aggregation --agg-requests 100000
    .venv/bin/python bench/redis_fleet.py --json results.json

Exit status 1 if a ledger differs from the record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
import yaml  # noqa: E402

from fluxrate_web.devserver import DevServer  # noqa: E402

STREAM = "fluxrate:events"
GROUP = "fluxrate-relays"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


class RedisProc:
    def __init__(self, workdir: Path, *, aof: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(workdir), "--loglevel", "warning"]  # fmt: skip
        args += ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else [
            "--appendonly", "no"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client.ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def entries_added(self) -> int:
        try:
            return int(self.client.xinfo_stream(STREAM)["entries-added"])
        except redis.ResponseError:
            return 0

    def pending(self) -> int:
        try:
            return int(self.client.xpending(STREAM, GROUP)["pending"])
        except redis.ResponseError:
            return 0

    def lag(self) -> int:
        try:
            groups = self.client.xinfo_groups(STREAM)
        except redis.ResponseError:
            return self.entries_added()
        return int(groups[0].get("lag") or 0) if groups else self.entries_added()

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Relay:
    def __init__(self, config: Path, name: str, claim_idle: float, logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"relay-{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxrate_web", "relay", "--config", str(config),
             "--consumer", name, "--claim-idle", str(claim_idle), "--aggregation-grace", "3"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        self.send(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.proc.wait(5)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


class App:
    """N app processes (``uvicorn``, one worker each, each on its own port) serving
    bench/_redis_fleet_app.py. Separate ports, so the load generator spreads its connections
    evenly (the workers of one ``uvicorn --workers N`` share a socket, and one of them may
    accept most connections)."""

    def __init__(self, config: Path, workers: int, logdir: Path) -> None:
        self.ports = [free_port() for _ in range(workers)]
        self.log_path = logdir / "app.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "_redis_fleet_app:app", "--app-dir",
                 str(BENCH), "--port", str(port), "--no-access-log", "--log-level", "warning",
                 "--timeout-graceful-shutdown", "30"],
                stdout=self._log, stderr=subprocess.STDOUT, cwd=BENCH,
                env={**os.environ, "PYTHONPATH": str(REPO), "FLUXRATE_CONFIG": str(config)},
            )
            for port in self.ports
        ]  # fmt: skip
        deadline = time.monotonic() + 60
        for port, proc in zip(self.ports, self.procs, strict=True):
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        if s.recv(64).startswith(b"HTTP/1.1 200"):
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the app did not start: {self.log_path.read_text()[-2000:]}"
                    )
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM: each process's exit flush sends what it holds (queue, open windows)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if not self._log.closed:
            self._log.close()


# --------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    sent: int = 0
    billed: Counter[str] = field(default_factory=Counter)  # the record: customer -> requests
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[int(len(ordered) * 0.99) - 1] * 1000


async def _load(
    ports: list[int], total: int, rate: float | None, customers: int, connections: int
) -> LoadResult:
    result = LoadResult()
    counter = iter(range(total))
    started = time.perf_counter()

    async def worker(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                if rate:
                    delay = started + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                customer = f"cust_{i % customers}"
                t0 = time.perf_counter()
                writer.write(
                    b"GET /v1/items/%d HTTP/1.1\r\nHost: bench\r\nX-Customer-Id: %s\r\n\r\n"
                    % (i, customer.encode())
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                result.latencies.append(time.perf_counter() - t0)
                result.sent += 1
                if head.startswith(b"HTTP/1.1 200"):
                    result.billed[customer] += 1
                else:
                    result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(ports[k % len(ports)]) for k in range(connections)))
    result.seconds = time.perf_counter() - started
    return result


def load(
    ports: list[int], total: int, rate: float | None, customers: int, connections: int = 32
) -> LoadResult:
    return asyncio.run(_load(ports, total, rate, customers, connections))


def ledger_check(server: DevServer, record: Counter[str], *, unique_events: bool) -> dict[str, Any]:
    summary = server.summary()
    ledger = Counter({c: round(v.get("api_calls", 0)) for c, v in summary.items()})
    lost = sum(max(0, record[c] - ledger[c]) for c in record)
    duplicated = sum(max(0, ledger[c] - record[c]) for c in ledger)
    out = {"billed": sum(record.values()), "in_ledger": sum(ledger.values()), "lost": lost,
           "duplicated": duplicated}  # fmt: skip
    if unique_events:
        events = server.events()
        keys = Counter(e["idempotency_key"] for e in events)
        out["events"] = len(events)
        out["repeated_keys"] = sum(n - 1 for n in keys.values())
    out["ok"] = lost == 0 and duplicated == 0 and out.get("repeated_keys", 0) == 0
    return out


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


# --------------------------------------------------------------------------- the run


class Fleet:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        log("starting the devserver and redis-server")
        self.server = DevServer(meters={"api_calls": "SUM"})
        self.server.start()
        self.redis = RedisProc(workdir / "redis", aof=True)
        self.relays: list[Relay] = []
        self._n = 0

    def config(self, *, transport: str = "redis", window: float | None = None) -> Path:
        token = self.server.meter_token("api_calls")
        meter: Any = token if window is None else {"token": token, "aggregation": "SUM",
                                                     "window": f"{window}s"}  # fmt: skip
        data = {
            "api_key": self.server.api_key, "base_url": self.server.url,
            "meters": {"api_calls": meter}, "customer": "header:X-Customer-Id",
            "endpoints": [{"route": "/v1/*", "meter": "api_calls"}],
            "transport": transport, "redis_url": self.redis.url, "redis_stream": STREAM,
            "max_in_flight": 256 if transport == "redis" else 16,
            "max_queue_size": 1_000_000, "shutdown_timeout": 30,
        }  # fmt: skip
        self._n += 1
        path = self.workdir / f"fluxrate-{self._n}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def start_relay(self, config: Path, claim_idle: float = 5.0) -> Relay:
        relay = Relay(config, f"relay-{len(self.relays) + 1}", claim_idle, self.workdir)
        self.relays.append(relay)
        return relay

    def stop_relays(self) -> None:
        for relay in self.relays:
            relay.stop()

    def reset(self) -> None:
        self.stop_relays()
        self.server.reset()
        self.redis.client.flushall()

    def close(self) -> None:
        self.stop_relays()
        self.server.stop()
        self.redis.stop()

    def _aggregates_in(self, transport: str, total: int) -> bool:
        if _billed_total(self.server) < total:
            return False
        if transport == "direct":
            return True
        return self.redis.client.zcard(f"{STREAM}:agg:open") == 0 and self.drained()

    def drained(self) -> bool:
        return self.redis.lag() == 0 and self.redis.pending() == 0

    # -- phases ------------------------------------------------------------------------------

    def throughput(self) -> dict[str, Any]:
        args = self.args
        self.reset()
        config = self.config()
        log(f"throughput: {args.tp_requests} requests flat out, relays stopped")
        app = App(config, args.workers, self.workdir)
        try:
            before = self.redis.entries_added()
            started = time.monotonic()
            result = load(app.ports, args.tp_requests, None, args.customers, args.connections)
            billed = sum(result.billed.values())
            wait_for(lambda: self.redis.entries_added() - before >= billed, 60, "the appends")
            append_seconds = time.monotonic() - started
        finally:
            app.stop()
        log(f"  {billed} events appended in {append_seconds:.1f} s; starting 2 relays")
        started = time.monotonic()
        relays = [self.start_relay(config) for _ in range(2)]
        wait_for(lambda: len(self.server.events()) >= billed, 600, "the relays")
        drain_seconds = time.monotonic() - started
        for relay in relays:
            relay.stop()
        check = ledger_check(self.server, result.billed, unique_events=True)
        return {
            "requests": result.sent, "billed": billed,
            "requests_per_s": round(result.sent / result.seconds),
            "apps_to_redis_events_per_s": round(billed / append_seconds),
            "relays_to_devserver_events_per_s": round(billed / drain_seconds),
            "relay_drain_seconds_incl_start": round(drain_seconds, 1),
            "p99_ms": round(result.p99_ms, 1), **check,
        }  # fmt: skip

    def chaos(self) -> dict[str, Any]:
        args = self.args
        self.reset()
        config = self.config()
        total = int(args.rate * args.duration)
        log(f"chaos: {total} requests at {args.rate}/s; relay A SIGKILLed at {args.kill_at} s; "
            f"relays down {args.down_at}..{args.down_at + args.down} s")  # fmt: skip
        # each delivery takes --latency-ms: relay A holds entries in flight when it is killed
        self.server.set_faults(latency_ms=args.latency_ms)
        a = self.start_relay(config, claim_idle=args.claim_idle)
        b = self.start_relay(config, claim_idle=args.claim_idle)
        app = App(config, args.workers, self.workdir)
        notes: list[str] = []
        timeline: dict[str, float] = {}
        backlog_peak = 0

        def chaos_script(t0: float) -> None:
            nonlocal backlog_peak
            time.sleep(max(0.0, t0 + args.kill_at - time.monotonic()))
            a.send(signal.SIGKILL)
            timeline["killed"] = time.monotonic() - t0
            notes.append(f"relay A SIGKILLed at {timeline['killed']:.1f} s "
                         f"(pending {self.redis.pending()})")  # fmt: skip
            replacement = self.start_relay(config, claim_idle=args.claim_idle)
            time.sleep(max(0.0, t0 + args.down_at - time.monotonic()))
            for relay in (b, replacement):
                relay.stop()
            timeline["down"] = time.monotonic() - t0
            notes.append(f"every relay stopped at {timeline['down']:.1f} s")
            while time.monotonic() < t0 + args.down_at + args.down:
                backlog_peak = max(backlog_peak, self.redis.lag())
                time.sleep(0.5)
            backlog_peak = max(backlog_peak, self.redis.lag())
            timeline["up"] = time.monotonic() - t0
            notes.append(f"relays back at {timeline['up']:.1f} s with a backlog of "
                         f"{backlog_peak} entries")  # fmt: skip
            self.start_relay(config, claim_idle=args.claim_idle)
            self.start_relay(config, claim_idle=args.claim_idle)

        try:
            t0 = time.monotonic()
            script = threading.Thread(target=chaos_script, args=(t0,), daemon=True)
            script.start()
            result = load(app.ports, total, args.rate, args.customers, args.connections)
            script.join()
        finally:
            app.stop()
        billed = sum(result.billed.values())
        drain = wait_for(lambda: len(self.server.events()) >= billed and self.drained(), 900,
                         "the backlog")  # fmt: skip
        notes.append(f"everything delivered {drain:.1f} s after the load ended")
        self.stop_relays()
        self.server.clear_faults()
        check = ledger_check(self.server, result.billed, unique_events=True)
        return {
            "requests": result.sent, "errors": result.errors, "billed": billed,
            "p99_ms": round(result.p99_ms, 1), "backlog_peak": backlog_peak,
            "track_requests": self.server.track_requests(),
            "redelivered_deduplicated": self.server.track_requests() - billed,
            **check, "notes": notes,
        }  # fmt: skip

    def aggregation(self) -> dict[str, Any]:
        args = self.args
        out: dict[str, Any] = {"requests": args.agg_requests, "customers": args.customers,
                               "window_s": args.window, "workers": args.workers}  # fmt: skip
        for transport in ("direct", "redis"):
            self.reset()
            config = self.config(transport=transport, window=args.window)
            label = "per-process (direct)" if transport == "direct" else "fleet-wide (redis)"
            log(f"aggregation {label}: {args.agg_requests} requests flat out")
            if transport == "redis":
                self.start_relay(config)
            app = App(config, args.workers, self.workdir)
            try:
                result = load(app.ports, args.agg_requests, None, args.customers, args.connections)
            finally:
                app.stop()  # the exit flush sends the open windows
            total = sum(result.billed.values())
            wait_for(lambda t=transport, n=total: self._aggregates_in(t, n), 120, "the aggregates")
            time.sleep(1.0)
            check = ledger_check(self.server, result.billed, unique_events=False)
            events = self.server.events()
            out[transport] = {
                "label": label, "requests_per_s": round(result.sent / result.seconds),
                "http_calls": self.server.track_requests(), "events": len(events),
                "customer_windows": len({(e["customer_external_id"],
                                          _window(e["timestamp"], args.window))
                                         for e in events}),
                "max_events_per_customer_window": max(
                    Counter((e["customer_external_id"], _window(e["timestamp"], args.window))
                            for e in events).values(), default=0),
                **check,
            }  # fmt: skip
            self.stop_relays()
        return out


def _billed_total(server: DevServer) -> int:
    return sum(round(v.get("api_calls", 0)) for v in server.summary().values())


def _window(timestamp: str, window: float) -> int:
    from fluxrate_web.core.aggregation import _epoch_ms

    return int(_epoch_ms(timestamp) // int(window * 1000))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=("all", "throughput", "chaos", "aggregation"),
                        action="append")  # fmt: skip
    parser.add_argument("--workers", type=int, default=4, help="app worker processes (4)")
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--connections", type=int, default=32, help="load generator (32)")
    parser.add_argument("--tp-requests", type=int, default=30_000, help="throughput phase")
    parser.add_argument("--rate", type=float, default=500.0, help="chaos: requests/s (500)")
    parser.add_argument("--duration", type=float, default=120.0, help="chaos: seconds (120)")
    parser.add_argument("--kill-at", type=float, default=15.0, help="chaos: SIGKILL relay A")
    parser.add_argument("--down-at", type=float, default=30.0, help="chaos: stop all relays")
    parser.add_argument("--down", type=float, default=60.0, help="chaos: relays down (60 s)")
    parser.add_argument("--claim-idle", type=float, default=5.0, help="relays (5 s)")
    parser.add_argument("--latency-ms", type=int, default=50, help="chaos: devserver latency")
    parser.add_argument("--agg-requests", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=5.0, help="aggregation window (5 s)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    phases = set(args.phase or ["all"])
    if "all" in phases:
        phases = {"throughput", "chaos", "aggregation"}
    results: dict[str, Any] = {"cpus": os.cpu_count(), "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="fluxrate-fleet-") as tmp:
        fleet = Fleet(Path(tmp), args)
        try:
            for phase in ("throughput", "chaos", "aggregation"):
                if phase in phases:
                    results[phase] = getattr(fleet, phase)()
                    print(json.dumps({phase: results[phase]}, indent=2), flush=True)
        finally:
            fleet.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ok = all(
        r.get("ok", True) if "ok" in r else all(v.get("ok", True) for v in r.values()
                                                if isinstance(v, dict))
        for r in results.values() if isinstance(r, dict)
    )  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
