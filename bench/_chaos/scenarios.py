"""The chaos scenarios. Each one starts a fresh app against the shared devserver (its ledger
reset first), loads it, breaks something, and compares the ledger with the load generator's
record; what ended in a failure log is replayed with ``fluxrate-web replay`` (as an operator
would) and counted in the ``kept`` column.

Every scenario has a short form (CI, ``--short``) and a full one (``bench/chaos.py``); both are
bounded in time.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from _chaos.apps import APPS, AppSpec, RunningApp
from _chaos.billing import Billing
from _chaos.ledger import Tally, compare, failure_log
from _chaos.load import LoadGenerator, Record
from _chaos.procs import RssSampler

MiB = 1024 * 1024
MAX_IN_FLIGHT = 16  # the client's default (each process, every example)
WRONG_KEY = "org_live_chaos_suite_wrong_key"
REJECTED_WARNING = "rejected a usage event for good"


@dataclass
class Result:
    scenario: str
    app: str
    sent: int = 0
    delivered: int = 0
    kept: int = 0
    duplicated: int = 0
    lost: int = 0
    p99_ms: float = float("nan")
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tally: Tally | None = None
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> str:
        return "pass" if self.ok else "FAIL"

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)

    def take(self, tally: Tally) -> None:
        self.tally = tally
        self.sent = tally.sent
        self.delivered = tally.delivered
        self.duplicated = tally.duplicated
        self.lost = tally.lost
        self.check(tally.lost == 0, f"{tally.lost} event(s) lost ({tally.describe()})")
        self.check(tally.duplicated == 0, f"{tally.duplicated} duplicated ({tally.describe()})")
        self.check(tally.totals_match, "totals differ: " + "; ".join(tally.mismatches[:6]))


@dataclass
class Context:
    """What scenarios share: the devserver, a work directory, the short/full switch."""

    billing: Billing
    workdir: Path
    short: bool = True
    rate: float | None = None  # requests/s (default per scenario)
    long_outage: float | None = None  # seconds of the 10-minute outage scenario
    log: Callable[[str], None] = lambda _msg: None
    _runs: int = 0

    def run_dir(self, scenario: str, app: str) -> Path:
        self._runs += 1
        path = self.workdir / f"{self._runs:02d}-{scenario}-{app}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pick(self, short: float, full: float) -> float:
        return short if self.short else full


# -- shared steps ----------------------------------------------------------------------------


class Run:
    """One scenario on one app: the app, the load, the RSS sampler, the result."""

    def __init__(
        self,
        ctx: Context,
        scenario: str,
        spec: AppSpec,
        *,
        settings: Mapping[str, object] | None = None,
        api_key: str | None = None,
        keep_socket: bool = False,
        rate: float = 60.0,
        workers: int = 6,
    ) -> None:
        self.ctx = ctx
        self.billing = ctx.billing
        self.spec = spec
        self.result = Result(scenario, spec.name)
        self.started = time.monotonic()
        spec.prepare(ctx.workdir, ctx.billing)
        self.billing.reset()
        self.app = RunningApp(
            spec,
            ctx.billing,
            ctx.run_dir(scenario, spec.name),
            settings=dict(settings or {}),
            api_key=api_key,
            keep_socket=keep_socket,
        )
        self.rss = RssSampler()
        self.load: LoadGenerator | None = None
        self.rate = ctx.rate or rate
        self.workers = workers

    def __enter__(self) -> Run:
        self.app.start()
        self.rss.watch(self.app.pid)
        self.rss.start()
        self.load = LoadGenerator(self.spec, self.app.port, rate=self.rate, workers=self.workers)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.load is not None:
            self.load.stop()
        self.rss.stop()
        self.app.close()
        r = self.result
        r.seconds = time.monotonic() - self.started
        r.peak_rss_mb = self.rss.peak / MiB
        if exc_type is not None:
            r.problems.append(f"scenario raised {exc_type.__name__}: {exc}")
        if not r.ok:
            r.log_tail = self.app.log_text()[-3000:]

    # steps

    def start_load(self, phase: str = "load") -> LoadGenerator:
        assert self.load is not None
        self.load.phase = phase
        return self.load.start()

    def stop_load(self) -> Record:
        assert self.load is not None
        return self.load.stop()

    @property
    def record(self) -> Record:
        assert self.load is not None
        return self.load.record

    def settle(self, timeout: float, *, with_kept: bool = True) -> float:
        """Wait until the ledger plus the failure log (``with_kept``: an event there is settled,
        the replay will send it) holds every event the record expects, or ``timeout``; returns
        the seconds waited."""
        expected = self.record.events
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            try:
                have = self.billing.stored()
            except Exception:  # the devserver is being restarted
                have = 0
            if with_kept:
                have += len(failure_log([self.app.failure_log], self.billing.meter_of_token()))
            if have >= expected:
                break
            time.sleep(0.1)
        return time.monotonic() - began

    def stop_app(self) -> float | None:
        """Graceful stop (SIGTERM: the app flushes)."""
        took = self.app.stop()
        self.result.check(took is not None, "the app did not stop within 40 s after SIGTERM")
        self.ctx.log(f"  app stopped in {took if took is None else round(took, 2)} s")
        return took

    def tally(self) -> Tally:
        return compare(
            self.record,
            self.billing,
            customers=set(self.spec.customers.values()),
            failure_logs=[self.app.failure_log],
        )

    def replay(self, api_key: str | None = None) -> Tally:
        """``fluxrate-web replay`` on the failure log (if any), then the final tally."""
        path = self.app.failure_log
        if path.exists() and path.stat().st_size:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("FLUXRATE_")},
                "FLUXRATE_API_KEY": api_key or self.billing.api_key,
                "FLUXRATE_BASE_URL": self.billing.url,
            }
            out = path.with_suffix(".replay-left.jsonl")
            done = subprocess.run(
                [sys.executable, "-m", "fluxrate_web", "replay", str(path), "--output", str(out)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            last = (done.stdout.strip().splitlines() or [""])[-1]
            self.result.notes.append(f"replay: {last}")
            self.result.check(done.returncode == 0, f"replay failed: {done.stdout}{done.stderr}")
        return compare(
            self.record,
            self.billing,
            customers=set(self.spec.customers.values()),
        )

    def check_app_unaffected(
        self, phases: tuple[str, ...] | None = None, *, errors: bool = True
    ) -> None:
        """Billing never shows in the answers: no 5xx, no connection error (if ``errors``)."""
        record = self.record
        answers = [a for a in record.answers if (phases is None or a.phase in phases)]
        cut = [a for a in answers if a.status == 0] if errors else []
        server_errors = [a for a in answers if a.status >= 500]
        self.result.check(
            not cut,
            f"{len(cut)} request(s) got no answer, first: {cut[0].error if cut else ''}",
        )
        self.result.check(not server_errors, f"{len(server_errors)} request(s) answered 5xx")

    def settled(self, timeout: float) -> float:
        """:meth:`settle`, noted as "ledger complete N s after the load"."""
        waited = self.settle(timeout)
        self.result.notes.append(f"ledger complete {waited:.1f} s after the load")
        return waited

    def stop_and_tally(self, *, none_kept: bool = False) -> Tally:
        """Stop the app (it flushes), then compare the ledger with the record; with
        ``none_kept``, the failure log must be empty."""
        self.stop_app()
        pre = self.tally()
        if none_kept:
            self.result.check(pre.kept == 0, f"{pre.kept} event(s) in the failure log")
        return pre

    def replay_and_finish(
        self,
        pre: Tally,
        *,
        expect_kept: bool = False,
        phases: tuple[str, ...] | None = None,
    ) -> Tally:
        """Replay what ``pre`` found in the failure log, check that the app's answers were
        unaffected (in ``phases``), and fill the result from the final tally."""
        final = _kept_then_replay(self, pre, expect_kept=expect_kept)
        self.check_app_unaffected(phases)
        self.finish(final, kept=pre.kept)
        return final

    def conclude(self, *, expect_kept: bool = False, none_kept: bool = False) -> Tally:
        """The usual end of a scenario: :meth:`stop_and_tally`, then :meth:`replay_and_finish`."""
        pre = self.stop_and_tally(none_kept=none_kept)
        return self.replay_and_finish(pre, expect_kept=expect_kept)

    def finish(self, tally: Tally, *, kept: int | None = None) -> Result:
        r = self.result
        r.take(tally)
        r.kept = tally.kept if kept is None else kept
        r.p99_ms = self.record.p99() * 1000
        statuses = self.record.statuses()
        r.notes.append(
            f"{self.record.requests} requests ("
            + ", ".join(f"{k or 'error'}: {v}" for k, v in sorted(statuses.items()))
            + ")"
        )
        return r


def _devserver_note(run: Run) -> None:
    try:
        responses = run.billing.stats()["track_responses"]
        run.result.notes.append(
            "devserver answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(responses.items()))
        )
    except Exception:
        pass


def _kept_then_replay(run: Run, pre: Tally, *, expect_kept: bool) -> Tally:
    """Everything not delivered must be in the failure log; replay it; final tally."""
    r = run.result
    r.check(pre.lost == 0, f"{pre.lost} event(s) neither delivered nor in the failure log")
    if pre.kept_reasons:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(pre.kept_reasons.items()))
        r.notes.append(f"failure log before replay: {pre.kept} ({reasons})")
    if expect_kept:
        r.check(pre.kept > 0, "nothing reached the failure log (the outage was not long enough)")
    return run.replay()


# -- scenarios -------------------------------------------------------------------------------


def errors_5xx(ctx: Context, spec: AppSpec) -> Result:
    """30 % of the API's answers are 503 for the whole load."""
    with Run(ctx, "5xx-30%", spec) as run:
        run.billing.set_faults(error_rate=0.3, status=503, seed=7)
        run.start_load()
        run.load.run_for(ctx.pick(4, 30))  # type: ignore[union-attr]
        run.stop_load()
        # an unlucky event may need a minute of backoff; in CI the graceful stop then writes it
        # to the failure log (shutdown_timeout) and the replay sends it
        run.settled(ctx.pick(15, 120))
        _devserver_note(run)
        run.billing.clear_faults()
        run.conclude()
    return run.result


def rate_limit_storm(ctx: Context, spec: AppSpec) -> Result:
    """A 429 storm with ``Retry-After``: every answer is 429 for a while (``Retry-After: 2``),
    then 30 % (``Retry-After: 1``). A client that honours ``Retry-After`` (and pauses the whole
    client, not one event) sends at most ``max_in_flight`` requests per process per window."""
    storm, retry_after = ctx.pick(4, 12), 2
    with Run(ctx, "429-storm", spec) as run:
        load = run.start_load("calm")
        load.run_for(1.0)
        before = run.billing.stats()["track_requests"]
        run.billing.set_faults(rate_limit_rate=1.0, retry_after=retry_after, seed=3)
        load.phase = "storm"
        load.run_for(storm)
        during = run.billing.stats()["track_requests"] - before
        run.billing.set_faults(rate_limit_rate=0.3, retry_after=1, seed=4)
        load.phase = "partial"
        load.run_for(ctx.pick(2, 12))
        run.billing.clear_faults()
        load.phase = "after"
        load.run_for(1.0)
        run.stop_load()
        created = sum(len(a.bills) for a in run.record.answers if a.phase == "storm")
        windows = math.ceil(storm / retry_after) + 1
        bound = spec.client_processes * MAX_IN_FLIGHT * windows
        run.result.notes.append(
            f"during the {storm:g} s storm: {during} requests reached the API for "
            f"{created} new events (bound if Retry-After is honoured: {bound})"
        )
        run.result.check(during <= bound, f"Retry-After not honoured: {during} > {bound}")
        run.settled(ctx.pick(60, 120))
        _devserver_note(run)
        run.conclude()
    return run.result


OUTAGE_BUDGET = {"max_attempts": 3, "max_retry_age": 2}


def outage_memory(ctx: Context, spec: AppSpec) -> Result:
    """The devserver is stopped (connections refused) for longer than the retry budget
    (``max_attempts: 3``, ``max_retry_age: 2``); ``durability: memory``. Every event not
    delivered must be in the failure log; ``fluxrate-web replay`` delivers them."""
    down = ctx.pick(4, 60)
    with Run(ctx, "outage-memory", spec, settings=OUTAGE_BUDGET) as run:
        load = run.start_load("before")
        load.run_for(ctx.pick(1.5, 5))
        run.billing.stop()
        load.phase = "outage"
        load.run_for(down)
        run.billing.start()
        load.phase = "after"
        load.run_for(ctx.pick(1.5, 10))
        run.stop_load()
        waited = run.settle(ctx.pick(30, 60))
        run.result.notes.append(f"devserver down {down:g} s; settled {waited:.1f} s after")
        run.conclude(expect_kept=True)
    return run.result


def outage_spool(ctx: Context, spec: AppSpec) -> Result:
    """The same outage with ``durability: spool``: delivered after recovery, nothing in the
    failure log, no replay."""
    down = ctx.pick(8, 60)
    settings = {"durability": "spool", **OUTAGE_BUDGET}
    with Run(ctx, "outage-spool", spec, settings=settings) as run:
        load = run.start_load("before")
        load.run_for(2.0)
        run.billing.stop()
        load.phase = "outage"
        load.run_for(down)
        stats = run.app.client_stats()
        run.billing.start()
        load.phase = "after"
        load.run_for(ctx.pick(2, 10))
        run.stop_load()
        waited = run.settle(ctx.pick(40, 120))
        run.result.notes.append(f"devserver down {down:g} s; ledger complete {waited:.1f} s after")
        if stats is not None:
            run.result.notes.append(
                f"client at the end of the outage: pending {stats.get('pending')}"
            )
        run.conclude(none_kept=True)
    return run.result


def devserver_restart(ctx: Context, spec: AppSpec) -> Result:
    """The devserver is restarted mid-load (SIGTERM, then started again on the same port with
    the same database): keep-alive connections are cut, a second or so of refusals."""
    restarts = int(ctx.pick(1, 3))
    with Run(ctx, "devserver-restart", spec) as run:
        load = run.start_load("before")
        load.run_for(2.0)
        downs = []
        for index in range(restarts):
            load.phase = f"restart-{index}"
            downs.append(run.billing.restart())
            load.run_for(ctx.pick(3, 8))
        load.phase = "after"
        load.run_for(1.0)
        run.stop_load()
        waited = run.settle(ctx.pick(60, 120))
        run.result.notes.append(
            f"{restarts} restart(s), down "
            + ", ".join(f"{d:.1f} s" for d in downs)
            + f"; ledger complete {waited:.1f} s after the load"
        )
        run.conclude()
    return run.result


def latency_2s(ctx: Context, spec: AppSpec) -> Result:
    """2 s added to every API call: the app's own latency must not move (billing is never in
    the request path). p99 with the latency against a baseline of the same run."""
    phase_seconds = ctx.pick(4, 20)
    with Run(ctx, "latency-2s", spec) as run:
        load = run.start_load("warmup")
        load.run_for(1.0)
        load.phase = "baseline"
        load.run_for(phase_seconds)
        run.billing.set_faults(latency_ms=2000)
        load.phase = "latency"
        load.run_for(phase_seconds)
        run.stop_load()
        run.billing.clear_faults()
        record = run.record
        base, slow = record.p99(["baseline"]), record.p99(["latency"])
        base50, slow50 = record.percentile(50, ["baseline"]), record.percentile(50, ["latency"])
        allowed = max(base * 1.5, base + 0.050)
        run.result.notes.append(
            f"app latency p50/p99: baseline {base50 * 1000:.1f}/{base * 1000:.1f} ms, "
            f"with 2 s on billing {slow50 * 1000:.1f}/{slow * 1000:.1f} ms "
            f"(allowed p99 <= {allowed * 1000:.1f} ms)"
        )
        run.result.check(slow <= allowed, f"p99 moved: {base * 1000:.1f} -> {slow * 1000:.1f} ms")
        run.settled(ctx.pick(60, 120))
        run.conclude()
        run.result.p99_ms = slow * 1000
    return run.result


SHUTDOWN_TIMEOUT = 5.0


def sigterm(ctx: Context, spec: AppSpec) -> Result:
    """SIGTERM to the app server mid-load while deliveries are slow (300 ms per call): the
    queue is delivered within the shutdown deadline (``shutdown_timeout: 5``), the rest (if
    any) is in the failure log."""
    with Run(ctx, "sigterm", spec, settings={"shutdown_timeout": SHUTDOWN_TIMEOUT}) as run:
        run.billing.set_faults(latency_ms=300)
        load = run.start_load("before")
        load.run_for(ctx.pick(3, 10))
        stats = run.app.client_stats()
        run.app.signal(signal.SIGTERM)
        load.phase = "stopping"
        took = run.app.wait_exit(SHUTDOWN_TIMEOUT + 35)
        run.stop_load()
        run.billing.clear_faults()
        deadline = SHUTDOWN_TIMEOUT + 3
        if took is None:
            run.result.problems.append("the app did not exit after SIGTERM")
        else:
            run.result.notes.append(
                f"exit {took:.2f} s after SIGTERM (deadline {SHUTDOWN_TIMEOUT:g} s + in-flight "
                f"requests)"
            )
            run.result.check(took <= deadline, f"exit took {took:.1f} s > {deadline:g} s")
        if stats is not None:
            run.result.notes.append(f"client just before SIGTERM: pending {stats.get('pending')}")
        pre = run.stop_and_tally()
        run.result.notes.append(f"delivered before exit: {pre.delivered} of {pre.sent}")
        run.replay_and_finish(pre, phases=("before",))
        _no_5xx_while_stopping(run)
    return run.result


def _no_5xx_while_stopping(run: Run) -> None:
    """A stopping server may refuse connections, never answer 5xx (the exit flush must not
    keep a half torn-down app serving)."""
    late = [a for a in run.record.answers if a.status >= 500 and a.phase == "stopping"]
    kinds = sorted({a.kind for a in late})
    run.result.check(
        not late, f"{len(late)} request(s) answered 5xx while the server was stopping ({kinds})"
    )


def _sigterm_outage(ctx: Context, spec: AppSpec, durability: str) -> Result:
    """SIGTERM while the API is down (connections refused) and events are retrying: the app
    must still exit within the shutdown deadline (``shutdown_timeout: 5``) and keep what it
    could not deliver: ``memory`` in the failure log (then replayed), ``spool`` on disk,
    delivered by the next process started on the same ``spool_path``."""
    spool = durability == "spool"
    name = "sigterm-outage" + ("-spool" if spool else "")
    settings: dict[str, object] = {"shutdown_timeout": SHUTDOWN_TIMEOUT}
    if spool:
        settings["durability"] = "spool"
    with Run(ctx, name, spec, settings=settings, keep_socket=spool) as run:
        load = run.start_load("before")
        load.run_for(1.5)
        run.billing.stop()
        load.phase = "outage"
        load.run_for(ctx.pick(2, 10))
        stats = run.app.client_stats()
        run.app.signal(signal.SIGTERM)
        load.phase = "stopping"
        deadline = SHUTDOWN_TIMEOUT + 3
        patience = ctx.pick(deadline, 40)  # an orchestrator's grace period, then SIGKILL
        took = run.app.wait_exit(patience)
        run.stop_load()
        if took is None:
            run.app.kill()
        run.billing.start()
        if stats is not None:
            run.result.notes.append(f"client just before SIGTERM: pending {stats.get('pending')}")
        if took is None:
            run.result.problems.append(
                f"the app was still running {patience:g} s after SIGTERM (then SIGKILLed)"
            )
        else:
            run.result.notes.append(f"exit {took:.2f} s after SIGTERM, the API down")
            run.result.check(took <= deadline, f"exit took {took:.1f} s > {deadline:g} s")
        if spool:
            run.app.restart()  # adopts the spool of the process that ended
            run.rss.watch(run.app.pid)
            waited = run.settle(ctx.pick(40, 120))
            run.result.notes.append(
                f"the next process delivered the spool {waited:.1f} s after it started"
            )
            pre = run.stop_and_tally(none_kept=True)
            run.replay_and_finish(pre, phases=("before", "outage"))
        else:
            pre = run.stop_and_tally()
            run.replay_and_finish(pre, expect_kept=True, phases=("before", "outage"))
        _no_5xx_while_stopping(run)
    return run.result


def sigterm_outage(ctx: Context, spec: AppSpec) -> Result:
    return _sigterm_outage(ctx, spec, "memory")


def sigterm_outage_spool(ctx: Context, spec: AppSpec) -> Result:
    return _sigterm_outage(ctx, spec, "spool")


def wrong_key(ctx: Context, spec: AppSpec) -> Result:
    """The app is configured with a key the API refuses (401): requests are unaffected, every
    event is in the failure log (``rejected``, 401), the warning is logged once per interval
    (60 s) per process, not per event; a replay with the right key delivers them."""
    with Run(ctx, "wrong-key-401", spec, api_key=WRONG_KEY) as run:
        load = run.start_load()
        load.run_for(ctx.pick(4, 20))
        run.stop_load()
        waited = run.settle(ctx.pick(30, 60))
        run.result.notes.append(f"failure log complete {waited:.1f} s after the load")
        pre = run.stop_and_tally()
        statuses = {
            k.status for k in failure_log([run.app.failure_log], run.billing.meter_of_token())
        }
        run.result.check(pre.stored == 0, f"{pre.stored} event(s) stored with a wrong key")
        run.result.check(
            pre.kept == pre.sent and set(pre.kept_reasons) == {"rejected"} and statuses == {401},
            f"failure log: {pre.kept} of {pre.sent}, reasons {dict(pre.kept_reasons)}, "
            f"statuses {statuses}",
        )
        warnings = run.app.log_text().count(REJECTED_WARNING)
        run.result.notes.append(
            f"'{REJECTED_WARNING}' logged {warnings} time(s) for {pre.kept} events "
            f"({spec.client_processes} process(es))"
        )
        run.result.check(
            1 <= warnings <= spec.client_processes,
            f"the rejection warning was logged {warnings} times",
        )
        run.result.check(WRONG_KEY not in run.app.log_text(), "the API key is in the app's log")
        run.replay_and_finish(pre, expect_kept=True)
    return run.result


def sigkill_strict(ctx: Context, spec: AppSpec) -> Result:
    """``durability: strict``: SIGKILL to the whole app (master and workers) mid-load while
    deliveries are slow; the app is started again on the same socket and the same spool
    directory, adopts the dead processes' spools and delivers them."""
    settings = {"durability": "strict"}
    with Run(ctx, "sigkill-strict", spec, settings=settings, keep_socket=True) as run:
        run.billing.set_faults(latency_ms=500)
        load = run.start_load("before")
        load.run_for(ctx.pick(2, 10))
        stats = run.app.client_stats()
        load.phase = "killed"
        began = time.monotonic()
        run.app.kill()
        run.ctx.log(f"  killed in {time.monotonic() - began:.2f} s")
        run.billing.clear_faults()
        began = time.monotonic()
        run.app.restart()
        run.rss.watch(run.app.pid)
        restart = time.monotonic() - began
        load.phase = "after"
        load.run_for(ctx.pick(2.5, 10))
        run.stop_load()
        waited = run.settle(ctx.pick(40, 120))
        cut = len(run.record.errors())
        run.result.notes.append(
            f"restarted in {restart:.1f} s; {cut} request(s) cut by the kill; "
            f"ledger complete {waited:.1f} s after the load"
        )
        if stats is not None:
            run.result.notes.append(f"client just before SIGKILL: pending {stats.get('pending')}")
        pre = run.stop_and_tally(none_kept=True)
        final = _kept_then_replay(run, pre, expect_kept=False)
        run.check_app_unaffected(errors=False)
        if final.unanswered:
            run.result.notes.append(
                f"{final.unanswered} event(s) billed for requests whose answer the kill cut"
            )
        run.finish(final, kept=pre.kept)
    return run.result


def long_outage_spool(ctx: Context, spec: AppSpec) -> Result:
    """A long outage (10 minutes; 8 s in CI) at steady load with ``durability: spool``: the
    app's memory stays flat (events wait on disk), everything is delivered after."""
    down = ctx.long_outage or ctx.pick(8, 600)
    settings = {"durability": "spool"}
    with Run(ctx, "long-outage-spool", spec, settings=settings, rate=40) as run:
        load = run.start_load("before")
        load.run_for(ctx.pick(2, 5))
        run.billing.stop()
        outage_began = run.rss.now()
        load.phase = "outage"
        load.run_for(down)
        outage_ended = run.rss.now()
        run.billing.start()
        load.phase = "after"
        load.run_for(ctx.pick(2, 20))
        run.stop_load()
        waited = run.settle(ctx.pick(60, 300))
        # RSS once the outage is established (grace over, spool in use) against its last half
        settle_in = min(30.0, down / 4)
        early = run.rss.between(outage_began + settle_in - 2, outage_began + settle_in + 2)
        late = run.rss.between(outage_began + down / 2, outage_ended)
        if early and late:
            growth = (max(late) - max(early)) / MiB
            bound = 16.0
            events_in_outage = sum(len(a.bills) for a in run.record.answers if a.phase == "outage")
            run.result.notes.append(
                f"outage {down:g} s, {events_in_outage} events tracked during it; RSS "
                f"{max(early) / MiB:.1f} MiB at +{settle_in:g} s -> max {max(late) / MiB:.1f} MiB "
                f"in the second half (growth {growth:+.1f} MiB, bound {bound:g} MiB)"
            )
            run.result.check(growth <= bound, f"RSS grew {growth:.1f} MiB during the outage")
            timeline = []
            for fifth in range(6):
                at = outage_began + down * fifth / 5
                near = run.rss.between(at - 1.5, at + 1.5)
                if near:
                    timeline.append(f"+{down * fifth / 5:.0f} s {max(near) / MiB:.1f}")
            run.result.notes.append("RSS during the outage (MiB): " + ", ".join(timeline))
        else:
            run.result.problems.append("no RSS samples")
        run.result.notes.append(f"ledger complete {waited:.1f} s after the load")
        run.conclude(none_kept=True)
    return run.result


SCENARIOS: dict[str, Callable[[Context, AppSpec], Result]] = {
    "5xx": errors_5xx,
    "429": rate_limit_storm,
    "outage-memory": outage_memory,
    "outage-spool": outage_spool,
    "restart": devserver_restart,
    "latency": latency_2s,
    "sigterm": sigterm,
    "sigterm-outage": sigterm_outage,
    "sigterm-outage-spool": sigterm_outage_spool,
    "401": wrong_key,
    "sigkill-strict": sigkill_strict,
    "long-outage-spool": long_outage_spool,
}


def run_scenario(ctx: Context, scenario: str, app: str) -> Result:
    """Run one scenario; an exception becomes a failed result (the devserver is brought back
    up and its faults cleared for the next one)."""
    spec = APPS[app]()
    ctx.log(f"{scenario} on {app} ...")
    began = time.monotonic()
    try:
        result = SCENARIOS[scenario](ctx, spec)
    except Exception as exc:
        result = Result(scenario, spec.name, seconds=time.monotonic() - began)
        result.problems.append(f"{type(exc).__name__}: {exc}")
        result.log_tail = traceback.format_exc()[-3000:]
    try:
        ctx.billing.start()  # no-op when it is up
        ctx.billing.clear_faults()
    except Exception as exc:  # pragma: no cover - the next scenario will say so
        ctx.log(f"the devserver cannot be restored: {exc}")
    ctx.log(
        f"{scenario} on {app}: {result.verdict} in {result.seconds:.1f} s"
        + ("" if result.ok else " - " + "; ".join(result.problems))
    )
    return result


HEADER = (
    "| scenario | app | events sent | delivered | kept (failure log) | duplicated | lost "
    "| p99 latency | peak RSS | verdict |"
)


def table(results: list[Result]) -> str:
    lines = [HEADER, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.app} | {r.sent} | {r.delivered} | {r.kept} | {r.duplicated} "
            f"| {r.lost} | {r.p99_ms:.1f} ms | {r.peak_rss_mb:.0f} MiB | {r.verdict} |"
        )
    return "\n".join(lines)
