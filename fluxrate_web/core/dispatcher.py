"""The background dispatcher: one asyncio loop in one daemon thread per process.

Every :class:`~fluxrate_web.core.client.FluxrateClient` of the process gets a :class:`Lane` on
that loop: its own bounded queue, ``max_in_flight`` worker coroutines, a keep-alive
:class:`~fluxrate_web.core.transport.Transport` and retry timers. WSGI and ASGI apps, threads and
event loops all hand events to the same thread, which sleeps in ``epoll`` when there is nothing
to send.

The request path (``Lane.submit``) is a ``deque.append`` plus, only when a worker sleeps and no
wake-up is already on its way, one ``loop.call_soon_threadsafe``: a burst of events costs one
wake-up, not one syscall per event.

Lifecycle:

* the loop thread starts with the first lane (lazily, on the first ``track()``) and stops when
  the last lane closes;
* in a child made by ``fork()`` the inherited loop, thread, locks and queues are abandoned (the
  parent still owns and delivers them) and a fresh runtime starts on the child's first event
  (``os.register_at_fork`` plus a pid check on enqueue);
* at interpreter exit an ``atexit`` hook (the thread is a daemon, so nothing else would) drains
  every lane within its ``shutdown_timeout`` and writes what is left to the failure log with
  reason ``shutdown_deadline``.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import math
import os
import random
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future as ConcurrentFuture
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fluxrate_web.core import _log
from fluxrate_web.core._log import log_limited, logger, warn_limited
from fluxrate_web.core.aggregation import WindowAggregator
from fluxrate_web.core.errors import ConfigError, TransportError
from fluxrate_web.core.events import UsageEvent
from fluxrate_web.core.failures import FORMAT_VERSION, FailureLog, make_record
from fluxrate_web.core.spool import Spool, SpoolError
from fluxrate_web.core.transport import (
    DEDUPLICATED,
    DELIVERED,
    PERMANENT,
    RETRY,
    MissingCredentials,
    Outcome,
    Transport,
    Wire,
    classify,
    classify_exception,
    error_for,
)

__all__ = [
    "LATENCY_BUCKETS",
    "Lane",
    "LaneSettings",
    "LatencyHistogram",
    "LatencySnapshot",
    "Runtime",
    "get_runtime",
]

T = TypeVar("T")

_LOAD_BATCH = 256  # backlog rows read from the spool at once
_ADOPT_EVERY = 30.0  # seconds between scans for dead processes' spools
_MARK_EVERY = 0.02  # seconds between queue-length marks while every worker is busy (latency)


@dataclass(frozen=True, slots=True)
class LaneSettings:
    max_queue_size: int = 100_000
    max_in_flight: int = 16
    max_attempts: int = 8
    max_retry_age: float = 300.0
    request_timeout: float = 10.0
    shutdown_timeout: float = 5.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    def check(self) -> None:
        def positive(name: str, value: float, *, integer: bool = False) -> None:
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                kind = "an integer" if integer else "a number"
                raise ConfigError(f"{name}: expected {kind}, got {value!r}")
            if not value > 0:
                raise ConfigError(f"{name}: must be > 0, got {value!r}")

        positive("max_queue_size", self.max_queue_size, integer=True)
        positive("max_in_flight", self.max_in_flight, integer=True)
        positive("max_attempts", self.max_attempts, integer=True)
        positive("max_retry_age", self.max_retry_age)
        positive("request_timeout", self.request_timeout)
        positive("shutdown_timeout", self.shutdown_timeout)
        positive("backoff_base", self.backoff_base)
        positive("backoff_max", self.backoff_max)
        if self.max_in_flight > 1024:
            raise ConfigError(f"max_in_flight: at most 1024, got {self.max_in_flight}")


LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    math.inf,
)  # fmt: skip
"""Upper bounds (seconds) of the delivery latency histogram. Loopback answers land in the
first buckets, a real API in the 25-500 ms ones; a retry adds at least ``backoff_base`` (0.5 s),
and the retry budget (``max_retry_age``, 300 s by default) bounds the rest."""


@dataclass(frozen=True, slots=True)
class LatencySnapshot:
    """The delivery latency histogram at one moment (``client.stats.latency``).

    ``buckets``: ascending upper bounds in seconds, the last one ``inf``; ``counts``: events per
    bucket (not cumulative: ``counts[i]`` events took more than ``buckets[i-1]`` and at most
    ``buckets[i]`` seconds); ``sum``: their total seconds; ``count``: ``sum(counts)``."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int

    def quantile(self, q: float) -> float | None:
        """An estimate of the ``q`` quantile (0..1) in seconds, interpolated linearly within its
        bucket as Prometheus' ``histogram_quantile`` does (the last finite bound when it falls in
        the ``inf`` bucket); ``None`` without events."""
        return _quantile(self.buckets, self.counts, q)

    def minus(self, earlier: LatencySnapshot) -> LatencySnapshot:
        """The events recorded since ``earlier`` (a snapshot of the same histogram)."""
        counts = tuple(max(0, a - b) for a, b in zip(self.counts, earlier.counts, strict=True))
        return LatencySnapshot(self.buckets, counts, max(0.0, self.sum - earlier.sum), sum(counts))


def _quantile(bounds: tuple[float, ...], counts: tuple[int, ...], q: float) -> float | None:
    total = sum(counts)
    if total <= 0:
        return None
    rank = min(max(q, 0.0), 1.0) * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            upper = bounds[i]
            lower = bounds[i - 1] if i > 0 else 0.0
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * ((rank - seen) / count)
        seen += count
    return bounds[-2] if len(bounds) > 1 else None  # pragma: no cover - rounding


class LatencyHistogram:
    """Seconds from enqueue to the final answer (delivered or deduplicated), per event.

    Written only on the dispatcher thread (``observe``); :meth:`snapshot` may run on any thread
    while it writes: the copy may miss an event being recorded (``sum`` one event ahead of the
    counts) but never raises."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        if seconds < 0.0:  # a clock step between the two reads: count it, as instant
            seconds = 0.0
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> LatencySnapshot:
        total = self.sum
        counts = tuple(self.counts)  # one C-level copy: no torn list
        return LatencySnapshot(self.bounds, counts, total, sum(counts))


class Counters:
    """The numbers behind ``client.stats``. Written on the loop thread, except ``dropped`` and
    the ``failed`` of queue_full/client_closed, which take the lock."""

    __slots__ = (
        "_lock",
        "adopted",
        "deduplicated",
        "delivered",
        "dropped",
        "failed",
        "latency",
        "retried",
        "spooled",
        "taken",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latency = LatencyHistogram()
        self.taken = 0  # events the workers took off the queue
        self.delivered = 0
        self.deduplicated = 0
        self.retried = 0
        self.failed = 0
        self.dropped = 0
        self.spooled = 0  # events written to the spool's backlog
        self.adopted = 0  # events adopted from the spools of processes that ended

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


# event, its retry state, spool row (0: none), loop time it was queued (for the latency)
_Item = tuple[UsageEvent, "_Retry | None", int, float]


class DeliverySink(Protocol):
    """Another destination than the HTTP API (e.g. a Redis stream, see
    :mod:`fluxrate_web.core.redis_transport`): one attempt for ``event``, answered with the same
    :class:`Outcome` the HTTP path yields, so retries, backoff, spool and failure log apply
    unchanged. Never raises (but ``CancelledError``)."""

    async def deliver(self, event: UsageEvent) -> Outcome: ...

    async def aclose(self) -> None: ...


# called on the loop thread when an event is settled: reason None = delivered or deduplicated
FinalCallback = Callable[[UsageEvent, "str | None", "int | None", "str | None"], None]


class _Retry:
    """An event between attempts."""

    __slots__ = ("attempts", "error", "event", "first", "handle", "queued", "row", "status")

    def __init__(self, event: UsageEvent, first: float, row: int = 0, queued: float = 0.0) -> None:
        self.event = event
        self.row = row  # > 0: a spool backlog row (leased), 0: an event from memory
        self.attempts = 0
        self.first = first
        self.queued = queued  # loop time it was queued: the latency counts the retries too
        self.status: int | None = None
        self.error: str | None = None
        self.handle: asyncio.TimerHandle | None = None


# --------------------------------------------------------------------------- the lane


class Lane:
    """One client's queue, workers and connections on the process's loop."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        wire: Wire,
        transport_factory: Callable[[], Transport],
        settings: LaneSettings,
        counters: Counters,
        failure_log: FailureLog,
        name: str = "",
        aggregator: WindowAggregator | None = None,
        tick_interval: float = 1.0,
        spool: Spool | None = None,
        strict: bool = False,
        spool_grace: float = 5.0,
        high_water: int = 0,
        sink_factory: Callable[[], DeliverySink] | None = None,
        on_final: FinalCallback | None = None,
        stats_log_interval: float = 0.0,
    ) -> None:
        self.runtime = runtime
        self.loop = runtime.loop
        self.wire = wire
        self.settings = settings
        self.counters = counters
        self.failure_log = failure_log
        self.name = name
        self.queue: deque[UsageEvent] = deque()
        self._ready: deque[_Retry] = deque()  # retries whose delay has passed
        self._waiting: set[_Retry] = set()  # retries waiting for their timer
        self._current: dict[int, _Item] = {}
        self._idle: deque[asyncio.Future[None]] = deque()
        self._wake_pending = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._paused_until = 0.0
        self._workers: list[asyncio.Task[None]] = []
        self._transport_factory = transport_factory
        self._transport: Transport | None = None
        # background deliveries go to the sink instead of the HTTP transport when one is given
        # (send()/send_async() keep using HTTP); on_final, when given, hears every settled
        # event and owns the final failures (they are not written to the failure log)
        self._sink_factory = sink_factory
        self._sink: DeliverySink | None = None
        self.on_final = on_final
        self._stopping = False
        self.closed = False
        self._failed_batch: list[dict[str, Any]] = []
        self.wakeups = 0  # cross-thread wake-ups scheduled by submit() (benchmarks read it)
        self._flush_scheduled = False
        # pre-aggregation: the lane asks for closed windows once per tick and for every open
        # one when it shuts down (close(), a dropped client, interpreter exit)
        self.aggregator = aggregator
        self.tick_interval = tick_interval
        self._tick_handle: asyncio.TimerHandle | None = None
        # durability (spool / strict): see fluxrate_web.core.spool
        self.spool = spool
        self.strict = bool(strict and spool is not None)
        self.spool_grace = spool_grace
        self.high_water = high_water if spool is not None else 0
        self._buffer: deque[tuple[int, UsageEvent]] = deque()  # backlog rows read, in order
        self._leased: set[int] = set()  # backlog rows in memory (buffer, in flight, retrying)
        self._cursor = 0  # highest backlog row id read so far
        self._unloaded = False  # there may be backlog rows beyond the cursor
        self._deferred = 0  # backlog rows that ran out of retries: read again on a wrap
        self._wrap_at = 0.0
        self.on_disk = 0  # backlog rows (state 1) in the spool
        self._spill_batch: list[tuple[UsageEvent, str]] = []
        self._ack_batch: list[tuple[str, int]] = []
        self._io_scheduled = False
        self._spill_pending = False
        self._failing_since: float | None = None
        self.outage = False
        self._probe_at = 0.0
        self._probe_delay = 0.0
        self._probe_row = 0
        self._probe_handle: asyncio.TimerHandle | None = None
        self._adopt_at = 0.0
        self._spool_ready = False  # the loop opened the spool and adopted what was left
        # latency without a clock read in submit(): (events ever queued, loop time) marks taken
        # when a worker takes an event, and every _MARK_EVERY seconds while no worker sleeps
        # (then submit() wakes nobody, and a take may be a long request away). The queue is
        # FIFO, so the n-th event queued was queued before the first mark counting >= n events:
        # a latency misses at most the time from its arrival to the next mark.
        self._marks: deque[tuple[int, float]] = deque()
        self._mark_handle: asyncio.TimerHandle | None = None
        self.stats_log_interval = stats_log_interval
        self._stats_handle: asyncio.TimerHandle | None = None
        self._stats_logged: LatencySnapshot | None = None

    # ------------------------------------------------------------ any thread

    @property
    def pending(self) -> int:
        """Events in memory: queued, in flight or waiting to retry."""
        return len(self.queue) + len(self._ready) + len(self._waiting) + len(self._current)

    def busy(self, settle_outage: bool = False) -> bool:
        """Anything left to deliver: in memory, and (with a spool) its backlog on disk. With
        ``settle_outage``, during an outage it is enough that everything is on disk."""
        if self.spool is None:
            return bool(self.pending)
        if not self._spool_ready and not self.closed:
            return True  # not started yet: it may adopt a dead process's backlog
        if self._spill_batch or self._ack_batch:
            return True
        if settle_outage and self.outage:
            return bool(self.queue or self._ready or self._waiting)
        return bool(self.pending or self.on_disk > 0 or self._buffer)

    def submit(self, event: UsageEvent) -> None:
        """Queue ``event`` (the caller checked the bound). Never blocks, never raises."""
        self.queue.append(event)
        if self._idle and not self._wake_pending:
            self._wake_pending = True
            self.wakeups += 1
            try:
                self.loop.call_soon_threadsafe(self._kick)
            except RuntimeError:  # loop closed under us: the closer writes the queue out
                pass
        if self.high_water and len(self.queue) > self.high_water and not self._spill_pending:
            self._spill_pending = True  # too much in memory: the loop moves the oldest to disk
            try:
                self.loop.call_soon_threadsafe(self._spill_excess)
            except RuntimeError:
                pass

    def call(self, coro: Any) -> ConcurrentFuture[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    # ------------------------------------------------------------ loop thread

    def start(self) -> None:
        """Loop thread: create the transport and the workers (idempotent)."""
        if self._workers or self.closed or self._stopping:
            return
        self._transport = self._transport_factory()
        if self._sink_factory is not None:
            self._sink = self._sink_factory()
        if self.spool is not None:
            self._start_spool()
        for i in range(self.settings.max_in_flight):
            self._workers.append(
                self.loop.create_task(self._worker(i), name=f"fluxrate-worker-{self.name}-{i}")
            )
        if (self.aggregator is not None or self.spool is not None) and self._tick_handle is None:
            self._tick_handle = self.loop.call_later(self.tick_interval, self._tick)
        if self.stats_log_interval > 0 and self._stats_handle is None:
            self._stats_logged = self.counters.latency.snapshot()
            self._stats_handle = self.loop.call_later(self.stats_log_interval, self._log_stats)

    def _start_spool(self) -> None:
        """Loop thread: open our spool, adopt dead processes' files, count the backlog."""
        assert self.spool is not None
        try:
            if not self.spool.open():
                return
            try:
                self.on_disk = self.spool.backlog()
            except Exception:
                logger.exception("cannot read the spool %s", self.spool.db_path)
            self._unloaded = self.on_disk > 0
            self._adopt()
        finally:
            self._spool_ready = True

    def _tick(self) -> None:
        """Loop thread, about once per ``tick_interval``: queue the closed windows."""
        self._tick_handle = None
        if self._stopping or self.closed:
            return
        try:
            self.on_tick()
        except Exception:  # pragma: no cover - a bug; the next tick tries again
            logger.exception("fluxrate: periodic delivery task failed")
        if not self._stopping and not self.closed:
            self._tick_handle = self.loop.call_later(self.tick_interval, self._tick)

    def _log_stats(self) -> None:
        """Loop thread, every ``stats_log_interval`` seconds: one INFO line of delivery stats."""
        self._stats_handle = None
        if self._stopping or self.closed:
            return
        try:
            logger.info("%s", self.stats_line())
        except Exception:  # pragma: no cover - a bug; the next interval tries again
            logger.exception("fluxrate: could not log the delivery stats")
        if not self._stopping and not self.closed:
            self._stats_handle = self.loop.call_later(self.stats_log_interval, self._log_stats)

    def stats_line(self) -> str:
        """The periodic summary: counters since the start, latency of the last interval."""
        c = self.counters
        depth = len(self.queue)
        latency = c.latency.snapshot()
        recent = latency.minus(self._stats_logged) if self._stats_logged is not None else latency
        self._stats_logged = latency
        p50, p99 = recent.quantile(0.5), recent.quantile(0.99)
        line = (
            f"fluxrate delivery: enqueued={c.taken + depth} delivered={c.delivered} "
            f"deduplicated={c.deduplicated} retried={c.retried} failed={c.failed} "
            f"dropped={c.dropped} pending={self.pending} queue_depth={depth}"
        )
        if self.spool is not None:
            line += f" spooled={c.spooled} spool_backlog={max(0, self.on_disk)}"
        # ASCII "~": a log handler on a non-UTF-8 stream must not choke on the line
        if p50 is None or p99 is None:
            line += " p50~- p99~-"
        else:
            line += f" p50~{p50:.3f}s p99~{p99:.3f}s"
        return f"{line} (latency of the {recent.count} event(s) answered in the last interval)"

    def on_tick(self) -> None:
        if self.aggregator is not None:
            self.take(self.aggregator.due())
        if self.spool is not None:
            self._spool_tick()

    def take(self, events: list[UsageEvent]) -> None:
        """Loop thread: queue events produced on the loop (aggregates), within the bound."""
        if not events:
            return
        limit = self.settings.max_queue_size
        for event in events:
            if len(self.queue) >= limit:
                warn_limited(
                    "queue_full",
                    "the usage queue is full (%d events); events go to the failure log "
                    "with reason queue_full",
                    limit,
                )
                self._fail(event, "queue_full", None)
            else:
                if self.strict:
                    self.spool.append(event)  # type: ignore[union-attr]
                self.queue.append(event)
        self._kick()

    def _drain_aggregator(self) -> None:
        """Every open aggregate into the queue (shutdown: nothing stays in memory)."""
        if self.aggregator is not None:
            self.take(self.aggregator.drain())

    # ------------------------------------------------------------ durability (loop thread)
    #
    # With a spool, the workers read the backlog (rows on disk, in id order) before the
    # in-memory queue, so events leave in the order they were spooled; the oldest events of an
    # over-full queue go to the back of the backlog. During an outage (retryable failures and
    # no answer for ``spool_grace`` seconds) nothing waits in memory: new events and retries
    # go to disk, and one probe at a time (backing off up to ``backoff_max``) tests the API.

    def _next_durable(self) -> _Item | None:
        if self.outage:
            if self.queue:
                self._spill_queue(len(self.queue), "outage")
            if self._probe_row or self.loop.time() < self._probe_at:
                return None
            item = self._from_backlog()
            if item is not None:
                self._probe_row = item[2]
            return item
        if self.high_water and len(self.queue) > self.high_water:
            self._spill_queue(len(self.queue) - self.high_water // 2, "high_water")
        if self._buffer or self._unloaded:
            item = self._from_backlog()
            if item is not None:
                return item
        try:
            event = self.queue.popleft()
        except IndexError:
            return None
        self.counters.taken += 1
        return event, None, 0, self._queued_at(self.counters.taken)

    def _spill_excess(self) -> None:
        self._spill_pending = False
        if self.high_water and len(self.queue) > self.high_water and not self._stopping:
            self._spill_queue(len(self.queue) - self.high_water // 2, "high_water")

    def _spill_queue(self, n: int, reason: str) -> None:
        """Move the ``n`` oldest queued events to the spool (written at the end of this pass)."""
        queue = self.queue
        batch = self._spill_batch
        moved = 0
        while moved < n:
            try:
                event = queue.popleft()
            except IndexError:
                break
            batch.append((event, reason))
            moved += 1
        self.counters.taken += moved
        if moved:
            self._schedule_io()

    def _from_backlog(self) -> _Item | None:
        if not self._buffer and self._unloaded:
            self._load()
        if not self._buffer:
            return None
        row, event = self._buffer.popleft()
        # the time on disk is not known (nor counted): from here, as if queued now
        return event, None, row, self.loop.time()

    def _load(self) -> None:
        assert self.spool is not None
        try:
            rows = self.spool.load(self._cursor, _LOAD_BATCH)
        except Exception as exc:
            log_limited(logging.ERROR, "spool-read", "cannot read the spool: %s", exc)
            self._unloaded = False
            return
        if len(rows) < _LOAD_BATCH:
            self._unloaded = False
        unreadable: list[tuple[str, int]] = []
        for row_id, key, data in rows:
            if row_id > self._cursor:
                self._cursor = row_id
            if row_id in self._leased:
                continue
            try:
                event = UsageEvent.from_dict(json.loads(data))
            except Exception as exc:  # a row we cannot turn back into an event
                logger.error("unreadable spool row %d (%s); moved to the failure log", row_id, exc)
                self.counters.add("failed")
                self._failed_batch.append(
                    {
                        "v": FORMAT_VERSION,
                        "reason": "internal_error",
                        "error": f"unreadable spool row: {exc}"[:500],
                        "row": data[:10_000],
                    }
                )
                self._leased.add(row_id)
                unreadable.append((key, row_id))
                continue
            self._leased.add(row_id)
            self._buffer.append((row_id, event))
        if unreadable:
            self._ack_batch.extend(unreadable)
            self._schedule_io()
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush_failures)
        if not rows and self.on_disk and not self._leased and not self._deferred:
            self._recount()

    def _recount(self) -> None:
        assert self.spool is not None
        try:
            self.on_disk = self.spool.backlog()
        except Exception:
            return
        if self.on_disk:
            self._cursor = 0
            self._unloaded = True

    def _settle(self, event: UsageEvent, row: int) -> None:
        """The event is answered for good: its spool row (if any) can go."""
        if row or self.strict:
            self._ack_batch.append((event.idempotency_key, row))
            self._schedule_io()

    def _park(self, event: UsageEvent, row: int, reason: str, *, defer: bool = False) -> None:
        """Not deliverable now: a backlog row stays on disk (back to the front of the buffer, or
        deferred until the next pass over the backlog); an event from memory is spilled."""
        if row:
            if defer:
                self._leased.discard(row)
                self._deferred += 1
            else:
                self._buffer.appendleft((row, event))
        else:
            self._spill_batch.append((event, reason))
            self._schedule_io()

    def _schedule_io(self) -> None:
        if not self._io_scheduled:
            self._io_scheduled = True
            self.loop.call_soon(self._flush_io)

    def _flush_io(self) -> None:
        """One transaction per loop pass for the spills, one for the acknowledgements."""
        self._io_scheduled = False
        spool = self.spool
        assert spool is not None
        spill, self._spill_batch = self._spill_batch, []
        acks, self._ack_batch = self._ack_batch, []
        if spill:
            try:
                written = spool.spill(spill)
                if written != len(spill):
                    raise SpoolError("the spool is not available")
            except Exception as exc:
                log_limited(
                    logging.ERROR,
                    "spool-write",
                    "cannot write to the spool %s (%s); events go to the failure log",
                    spool.directory,
                    exc,
                )
                for event, reason in spill:
                    self._fail(event, reason, None, error=f"spool: {exc}"[:300])
            else:
                self.counters.add("spooled", written)
                self.on_disk += written
                self._unloaded = True
                if not self.outage and self._idle:
                    self._kick()
        if acks:
            try:
                spool.ack([key for key, _ in acks])
            except Exception as exc:  # the rows stay: delivered again later, deduplicated
                log_limited(logging.ERROR, "spool-ack", "cannot update the spool: %s", exc)
            for _, row in acks:
                if row:
                    self._leased.discard(row)
                    self.on_disk -= 1
            if self.on_disk < 0:
                self.on_disk = 0

    def absorb_spilled(self) -> None:
        """Loop thread: count the events other threads spilled (queue full)."""
        if self.spool is None:
            return
        n = self.spool.take_unannounced()
        if n:
            self.on_disk += n
            self._unloaded = True
            self._kick()

    def _healthy(self) -> None:
        """The API answered (any final answer): no outage."""
        self._failing_since = None
        if self.outage:
            self.outage = False
            self._probe_delay = 0.0
            if self._probe_handle is not None:
                self._probe_handle.cancel()
                self._probe_handle = None
            logger.warning(
                "the Fluxrate API answers again; delivering the %d usage event(s) waiting in "
                "the spool",
                self.on_disk,
            )
            self._kick()

    def _enter_outage(self, error: str | None) -> None:
        self.outage = True
        logger.warning(
            "usage event deliveries have failed for %.1f s (%s); events wait in the spool %s "
            "until the API answers again",
            self.loop.time() - (self._failing_since or self.loop.time()),
            error,
            self.spool.db_path if self.spool is not None else "",
        )
        for retry in list(self._waiting):
            if retry.handle is not None:
                retry.handle.cancel()
            self._park(retry.event, retry.row, "outage")
        self._waiting.clear()
        while self._ready:
            retry = self._ready.popleft()
            self._park(retry.event, retry.row, "outage")
        if len(self._buffer) > 1:
            self._buffer = deque(sorted(self._buffer, key=lambda item: item[0]))
        if self.queue:
            self._spill_queue(len(self.queue), "outage")
        self._probe_delay = 0.0
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        settings = self.settings
        self._probe_delay = min(
            settings.backoff_max, max(settings.backoff_base, self._probe_delay * 2)
        )
        self._probe_at = self.loop.time() + self._probe_delay
        if self._probe_handle is not None:
            self._probe_handle.cancel()
        self._probe_handle = self.loop.call_later(self._probe_delay, self._probe_due)

    def _probe_due(self) -> None:
        self._probe_handle = None
        self._kick()

    def _probe_done(self) -> None:
        self._probe_row = 0
        if self.outage:
            self._schedule_probe()

    def _spool_tick(self) -> None:
        now = self.loop.time()
        self.absorb_spilled()
        if self.outage:
            if not (self.queue or self._buffer or self._unloaded or self._probe_row):
                if self.on_disk <= 0 and not self._deferred:
                    self.outage = False  # nothing left to test the API with: start afresh
                    self._failing_since = None
            elif now >= self._probe_at and not self._probe_row:
                self._kick()
        elif (
            self._failing_since is not None
            and now - self._failing_since >= self.spool_grace
            and (self._waiting or self._ready)
        ):
            self._enter_outage("still failing")
        if self._deferred and not self._unloaded and not self._buffer and now >= self._wrap_at:
            # another pass over the backlog for the rows that ran out of retries
            self._cursor = 0
            self._unloaded = True
            self._deferred = 0
            self._wrap_at = now + max(self.settings.backoff_max, 1.0)
            self._kick()
        if self.high_water and len(self.queue) > self.high_water:
            self._spill_excess()
        if now >= self._adopt_at:
            self._adopt()
        try:
            self.spool.checkpoint()  # type: ignore[union-attr]
        except Exception as exc:
            log_limited(logging.ERROR, "spool-checkpoint", "spool checkpoint failed: %s", exc)
        if (
            self.on_disk > 0
            and not self._unloaded
            and not self._buffer
            and not self._leased
            and not self._deferred
            and not self._spill_batch
        ):
            self._recount()  # the count drifted (a row replaced, an ack that failed)

    def _adopt(self) -> None:
        self._adopt_at = self.loop.time() + _ADOPT_EVERY
        spool = self.spool
        if spool is None or spool.closed or spool.broken:
            return
        adopted = spool.adopt()
        if adopted:
            self.counters.add("adopted", adopted)
            self.on_disk += adopted
            self._unloaded = True
            self._kick()

    def _kick(self) -> None:
        self._wake_pending = False
        n = len(self.queue) + len(self._ready)
        if self.spool is not None:
            if self.outage:  # one worker spills the queue, one probes when it is time
                n = min(n, 1)
                if not self._probe_row and self.loop.time() >= self._probe_at:
                    n += 1
            elif self._buffer or self._unloaded:
                n += self.settings.max_in_flight  # backlog to read
        idle = self._idle
        while n > 0 and idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    def _next(self) -> _Item | None:
        if self._ready:
            retry = self._ready.popleft()
            return retry.event, retry, retry.row, retry.queued
        if self.spool is not None:
            return self._next_durable()
        try:
            event = self.queue.popleft()
        except IndexError:
            return None
        self.counters.taken += 1
        return event, None, 0, self._queued_at(self.counters.taken)

    def _mark(self) -> None:
        """Timer, while every worker is busy: note how many events were queued by now."""
        self._mark_handle = None
        if self._stopping or self.closed:
            return
        self._note_queued()
        if not self._idle and self._workers:
            self._mark_handle = self.loop.call_later(_MARK_EVERY, self._mark)

    def _queued_at(self, n: int) -> float:
        """Loop time by which the ``n``-th event ever queued was in the queue (see ``_marks``).
        Every pop of the queue counts in ``counters.taken``, so ``taken + len(queue)`` is the
        number of events queued so far."""
        marks = self._note_queued()
        while marks[0][0] < n:  # the last mark counts >= n: never empties
            marks.popleft()
        return marks[0][1]

    def _note_queued(self) -> deque[tuple[int, float]]:
        """Add a mark (events queued so far, now) unless nothing was queued since the last."""
        marks = self._marks
        queued = self.counters.taken + len(self.queue)
        if not marks or marks[-1][0] < queued:
            marks.append((queued, self.loop.time()))
        return marks

    async def _worker(self, wid: int) -> None:
        loop = self.loop
        current = self._current
        while True:
            item = self._next()
            if item is None:
                if self._stopping:
                    return
                if self._drain_waiters and not self.busy():
                    self._notify_drained()
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle.append(waiter)
                if self.queue or self._ready:  # an event slipped in: no sleep
                    self._idle.remove(waiter)
                    continue
                await waiter
                continue
            if self._idle and (self.queue or self._ready):
                self._kick()  # fan out a burst to the other sleeping workers
            elif not self._idle and self._mark_handle is None:
                self._mark_handle = loop.call_later(_MARK_EVERY, self._mark)
            current[wid] = item
            await self._deliver(*item)
            del current[wid]

    async def _deliver(
        self, event: UsageEvent, retry: _Retry | None, row: int = 0, queued: float = 0.0
    ) -> None:
        try:
            sink = self._sink
            data = b""
            if sink is None:
                try:
                    data = self.wire.build(event)
                except MissingCredentials as exc:
                    warn_limited(
                        f"missing-credentials:{exc.reason}",
                        "%s; events go to the failure log with reason %s",
                        exc,
                        exc.reason,
                    )
                    self._fail(event, exc.reason, retry, error=str(exc))
                    self._settle(event, row)
                    return
            loop = self.loop
            if self._paused_until > loop.time():
                await asyncio.sleep(self._paused_until - loop.time())
            if retry is not None:
                retry.attempts += 1
            try:
                if sink is not None:
                    outcome = await sink.deliver(event)
                else:
                    assert self._transport is not None
                    response = await self._transport.request(data)
                    outcome = classify(response, secrets=self.wire.secrets, want_record=False)
            except TransportError as exc:
                outcome = classify_exception(exc, secrets=self.wire.secrets)
            if outcome.kind == DELIVERED:
                self.counters.latency.observe(loop.time() - queued)
                self.counters.delivered += 1
                if self.on_final is not None:
                    self.on_final(event, None, outcome.status, None)
                if self.spool is not None:
                    self._settle(event, row)
                    self._healthy()
            elif outcome.kind == DEDUPLICATED:
                self.counters.latency.observe(loop.time() - queued)
                self.counters.deduplicated += 1
                if self.on_final is not None:
                    self.on_final(event, None, outcome.status, None)
                if self.spool is not None:
                    self._settle(event, row)
                    self._healthy()
            elif outcome.kind == RETRY:
                self._retry_later(event, retry, outcome, row, queued)
            else:
                assert outcome.kind == PERMANENT
                warn_limited(
                    f"rejected:{outcome.status}",
                    "the API rejected a usage event for good (%s); it is in the failure log",
                    outcome.error,
                )
                self._fail(
                    event,
                    "rejected",
                    retry,
                    status=outcome.status,
                    error=outcome.error,
                    attempts=retry.attempts if retry else 1,
                )
                if self.spool is not None:
                    self._settle(event, row)
                    self._healthy()  # the API answered: it is up
            if row and row == self._probe_row:
                self._probe_done()
        except asyncio.CancelledError:
            raise  # shutdown: the closer writes self._current to the failure log
        except BaseException as exc:  # a bug: never a silent drop
            logger.exception("unexpected error delivering a usage event")
            self._fail(
                event,
                "internal_error",
                retry,
                error=f"{type(exc).__name__}: {exc}"[:500],
                attempts=retry.attempts if retry else 1,
            )
            self._settle(event, row)
            if row and row == self._probe_row:
                self._probe_done()

    def _retry_later(
        self,
        event: UsageEvent,
        retry: _Retry | None,
        outcome: Outcome,
        row: int = 0,
        queued: float = 0.0,
    ) -> None:
        loop = self.loop
        now = loop.time()
        if self.spool is not None:
            if self._failing_since is None:
                self._failing_since = now
            if not self.outage and now - self._failing_since >= self.spool_grace:
                self._enter_outage(outcome.error)
            if self.outage:  # the API is down: wait on disk, not in memory
                self._park(event, row, "outage")
                return
        if retry is None:
            retry = _Retry(event, now, row, queued)
            retry.attempts = 1
        retry.status = outcome.status
        retry.error = outcome.error
        settings = self.settings
        if outcome.status == 429 and outcome.retry_after:
            # the server asked everyone to wait: hold the whole lane, not just this event
            self._paused_until = max(self._paused_until, now + outcome.retry_after)
        if retry.attempts >= settings.max_attempts:
            self._give_up(retry)
            return
        delay = backoff_delay(
            retry.attempts, settings.backoff_base, settings.backoff_max, outcome.retry_after
        )
        if now + delay - retry.first > settings.max_retry_age:
            self._give_up(retry)
            return
        warn_limited(
            "delivery-retry",
            "usage event delivery failed (%s); retrying with backoff",
            outcome.error,
        )
        self.counters.retried += 1
        self._waiting.add(retry)
        retry.handle = loop.call_later(delay, self._retry_due, retry)

    def _retry_due(self, retry: _Retry) -> None:
        retry.handle = None
        self._waiting.discard(retry)
        if self._stopping and not self._workers:
            return
        self._ready.append(retry)
        self._kick()

    def _give_up(self, retry: _Retry) -> None:
        if self.spool is not None and not self.spool.broken:
            warn_limited(
                "retries-exhausted-spool",
                "usage event not delivered after %d attempt(s) (%s); it waits in the spool",
                retry.attempts,
                retry.error,
            )
            self._park(retry.event, retry.row, "retries_exhausted", defer=True)
            return
        warn_limited(
            "retries-exhausted",
            "usage event not delivered after %d attempt(s) (%s); it is in the failure log",
            retry.attempts,
            retry.error,
        )
        self._fail(
            retry.event,
            "retries_exhausted",
            None,
            status=retry.status,
            error=retry.error,
            attempts=retry.attempts,
        )

    def _fail(
        self,
        event: UsageEvent,
        reason: str,
        retry: _Retry | None,
        *,
        status: int | None = None,
        error: str | None = None,
        attempts: int = 0,
    ) -> None:
        """Loop thread: count and batch the failure-log line (one write per loop pass)."""
        if retry is not None:
            status = status if status is not None else retry.status
            error = error if error is not None else retry.error
            attempts = max(attempts, retry.attempts)
        self.counters.add("failed")
        if self.on_final is not None:  # the owner keeps it (the relay: dead-letter or not ack)
            try:
                self.on_final(event, reason, status, error)
            except Exception:  # pragma: no cover - a bug in the callback
                logger.exception("fluxrate: the on_final callback failed")
            return
        self._failed_batch.append(
            make_record(event, reason, status=status, error=error, attempts=attempts)
        )
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_failures)

    def _flush_failures(self) -> None:
        self._flush_scheduled = False
        batch, self._failed_batch = self._failed_batch, []
        self.failure_log.write(batch)

    def _notify_drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_drained(self, settle_outage: bool = False) -> None:
        """Until nothing is queued, in flight or waiting to retry (nor, with a spool, waiting
        on disk; with ``settle_outage``, during an outage: until everything is on disk)."""
        while self.busy(settle_outage):
            if self._idle and (
                self.queue or self._ready or (self.spool is not None and self._unloaded)
            ):
                self._kick()
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._drain_waiters.append(waiter)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), 0.05)
            except TimeoutError:
                pass
        if self._spill_batch or self._ack_batch:
            self._flush_io()
        if self._failed_batch:
            self._flush_failures()

    async def send_once(self, event: UsageEvent) -> dict[str, Any]:
        """One attempt now, on this lane's connections; raises on failure."""
        self.start()
        try:
            data = self.wire.build(event)
        except MissingCredentials as exc:
            raise ConfigError(str(exc)) from None
        if self._transport is None:
            raise TransportError("client closed")
        response = await self._transport.request(data)
        outcome = classify(response, secrets=self.wire.secrets)
        if outcome.ok:
            return outcome.record or {}
        raise error_for(outcome)

    async def shutdown(self, deadline: float) -> None:
        """Drain until ``deadline`` (loop time), then write what is left to the failure log with
        reason ``shutdown_deadline`` and close every connection."""
        if self.closed:
            return
        self._drain_aggregator()
        if self.spool is not None:
            self._adopt()  # before we exit: what dead processes left is ours to keep
        remaining = deadline - self.loop.time()
        if remaining > 0 and self.busy(settle_outage=True):
            try:
                await asyncio.wait_for(self.wait_drained(settle_outage=True), remaining)
            except TimeoutError:
                pass
        await self.abandon("shutdown_deadline")

    async def abandon(self, reason: str) -> None:
        """Stop the workers now; every event not delivered goes to the failure log."""
        if self.closed:
            return
        self._drain_aggregator()
        self._stopping = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        if self._stats_handle is not None:
            self._stats_handle.cancel()
            self._stats_handle = None
        if self._mark_handle is not None:
            self._mark_handle.cancel()
            self._mark_handle = None
        for task in self._workers:
            task.cancel()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        if self._probe_handle is not None:
            self._probe_handle.cancel()
            self._probe_handle = None
        durable = self.spool is not None and not self.spool.broken
        left = self.pending
        for event, retry, row, _queued in list(self._current.values()):
            if durable:
                self._park(event, row, reason)
            else:
                self._fail(event, reason, retry, attempts=retry.attempts if retry else 1)
        self._current.clear()
        for retry in list(self._waiting):
            if retry.handle is not None:
                retry.handle.cancel()
            if durable:
                self._park(retry.event, retry.row, reason)
            else:
                self._fail(retry.event, reason, retry)
        self._waiting.clear()
        while self._ready:
            retry = self._ready.popleft()
            if durable:
                self._park(retry.event, retry.row, reason)
            else:
                self._fail(retry.event, reason, retry)
        self.closed = True  # from here on, submit() is refused by the client
        while True:
            try:
                event = self.queue.popleft()
            except IndexError:
                break
            self.counters.taken += 1
            if durable:
                self._park(event, 0, reason)
            else:
                self._fail(event, reason, None)
        if self.spool is not None:
            self._flush_io()
            kept = self.spool.close()
            self._buffer.clear()
            self._leased.clear()
            if left and kept > 0:
                logger.warning(
                    "%d usage event(s) not delivered before the shutdown deadline; they are "
                    "in the spool %s",
                    left,
                    self.spool.db_path,
                )
                left = 0
        self._flush_failures()
        if left:
            logger.warning(
                "%d usage event(s) not delivered before the shutdown deadline; "
                "they are in the failure log (reason %s)",
                left,
                reason,
            )
        for waiter in self._idle:
            if not waiter.done():
                waiter.cancel()
        self._idle.clear()
        self._notify_drained()
        if self._transport is not None:
            await self._transport.aclose()
        self._transport = None
        if self._sink is not None:
            sink, self._sink = self._sink, None
            try:
                await sink.aclose()
            except Exception:  # pragma: no cover
                logger.exception("fluxrate: could not close the delivery sink")


def backoff_delay(
    attempts: int, base: float, cap: float, retry_after: float | None = None
) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempts-1))); a
    ``Retry-After`` from the server is a floor."""
    ceiling = min(cap, base * (2.0 ** min(attempts - 1, 62)))
    delay = random.uniform(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


# --------------------------------------------------------------------------- the runtime


class Runtime:
    """The process's loop thread and its lanes."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.lanes: set[Lane] = set()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fluxrate-dispatcher", daemon=True)
        self.thread.start()
        self._started.wait()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        loop.call_soon(self._started.set)
        try:
            loop.run_forever()
        finally:
            try:
                tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    @property
    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    def run(self, coro: Any, timeout: float | None) -> Any:
        """Run ``coro`` on the loop from another thread and wait up to ``timeout``."""
        if self.in_loop_thread:
            raise RuntimeError("cannot wait for the fluxrate dispatcher from its own thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return
        if not self.in_loop_thread:
            self.thread.join(5.0)


_lock = threading.Lock()
_runtime: Runtime | None = None
_exit_pid = -1  # the pid whose atexit flush has run
_orphans: list[object] = []  # what a forked child inherited: kept, never closed or collected


def exiting() -> bool:
    """True once the interpreter-exit flush of this process has run."""
    return _exit_pid == os.getpid()


def get_runtime() -> Runtime:
    """The running runtime of this process, started if needed."""
    global _runtime
    if exiting():
        raise RuntimeError("the interpreter is exiting: no new delivery")
    runtime = _runtime
    if runtime is not None and runtime.pid == os.getpid() and runtime.thread.is_alive():
        return runtime
    with _lock:
        runtime = _runtime
        if runtime is not None and runtime.pid != os.getpid():
            _orphans.append(runtime)  # a fork that skipped the at-fork hook
            runtime = None
        if runtime is None or not runtime.thread.is_alive():
            runtime = _runtime = Runtime()
        return runtime


def open_lane(**kwargs: Any) -> Lane:
    """Create a lane on the process's runtime and start its workers."""
    while True:
        runtime = get_runtime()
        lane = Lane(runtime, **kwargs)
        with _lock:
            if _runtime is not runtime or not runtime.thread.is_alive():
                continue  # stopped meanwhile: take the next one
            runtime.lanes.add(lane)
        try:
            # not waited for: the first track() must not wait on the loop; the workers find
            # the events already queued when they start
            runtime.loop.call_soon_threadsafe(lane.start)
        except RuntimeError:  # the loop closed meanwhile: take the next runtime
            with _lock:
                runtime.lanes.discard(lane)
            continue
        return lane


def close_lane(lane: Lane, timeout: float | None) -> None:
    """Drain ``lane`` for up to ``timeout`` seconds (``None``: its shutdown_timeout), write the
    rest to the failure log, close its connections; stop the runtime when it was the last."""
    global _runtime
    runtime = lane.runtime
    if runtime.pid != os.getpid():
        return
    wait = lane.settings.shutdown_timeout if timeout is None else max(0.0, timeout)
    if runtime.thread.is_alive() and not runtime.in_loop_thread:
        try:
            runtime.run(lane.shutdown(runtime.loop.time() + wait), wait + 5.0)
        except Exception:  # the loop is wedged: write the queue out from here
            logger.exception("the fluxrate dispatcher did not stop in time")
            _abandon_from_outside(lane)
    elif not runtime.thread.is_alive():
        _abandon_from_outside(lane)
    with _lock:
        runtime.lanes.discard(lane)
        last = not runtime.lanes and _runtime is runtime
        if last:
            _runtime = None
    if last:
        runtime.stop()


def release_lane(lane: Lane) -> None:
    """Drain and close ``lane`` in the background (its client is gone). Any thread; never
    blocks, never raises."""
    runtime = lane.runtime
    if runtime.pid != os.getpid() or lane.closed or exiting() or not runtime.thread.is_alive():
        return

    async def drain() -> None:
        global _runtime
        loop = asyncio.get_running_loop()
        try:
            await lane.shutdown(loop.time() + lane.settings.shutdown_timeout)
        finally:
            with _lock:
                runtime.lanes.discard(lane)
                last = not runtime.lanes and _runtime is runtime
                if last:
                    _runtime = None
            if last:
                loop.stop()

    try:
        asyncio.run_coroutine_threadsafe(drain(), runtime.loop)
    except RuntimeError:  # the loop is closed
        pass


def _abandon_from_outside(lane: Lane) -> None:
    if lane.aggregator is not None:
        try:
            lane.queue.extend(lane.aggregator.drain())
        except Exception:  # pragma: no cover
            logger.exception("fluxrate: could not drain the open aggregates")
    events = []
    while True:
        try:
            events.append(lane.queue.popleft())
        except IndexError:
            break
    lane.closed = True
    spool = lane.spool
    if spool is not None:  # the loop is wedged or gone: write to the spool from here
        try:
            if events:
                written = spool.spill([(event, "shutdown_deadline") for event in events])
                if written == len(events):
                    lane.counters.add("spooled", written)
                    events = []
        except Exception:
            logger.exception("cannot write to the spool %s", spool.db_path)
        spool.close()
    lane.counters.add("failed", len(events))
    lane.failure_log.write([make_record(event, "shutdown_deadline") for event in events])


def flush_lane(lane: Lane, timeout: float | None) -> bool:
    """Wait until ``lane`` has nothing pending; ``False`` if ``timeout`` passed first. With a
    spool, the backlog on disk counts, and ``None`` waits at most ``max_retry_age``."""
    if not lane.busy():
        return True
    if timeout is None and lane.spool is not None:
        timeout = lane.settings.max_retry_age
    runtime = lane.runtime
    if runtime.pid != os.getpid() or not runtime.thread.is_alive():
        return False
    try:
        runtime.run(lane.wait_drained(), timeout)
    except TimeoutError:
        return False
    return True


# --------------------------------------------------------------------------- exit and fork


def _atexit_flush() -> None:
    """Interpreter exit: drain every lane within its shutdown_timeout, all lanes at once."""
    global _runtime, _exit_pid
    _exit_pid = os.getpid()
    runtime = _runtime
    if runtime is None or runtime.pid != os.getpid() or not runtime.thread.is_alive():
        return
    lanes = [lane for lane in list(runtime.lanes) if not lane.closed]
    if lanes:
        wait = max(lane.settings.shutdown_timeout for lane in lanes)

        async def drain_all() -> None:
            deadline = asyncio.get_running_loop().time()
            await asyncio.gather(
                *(lane.shutdown(deadline + lane.settings.shutdown_timeout) for lane in lanes),
                return_exceptions=True,
            )

        try:
            runtime.run(drain_all(), wait + 5.0)
        except BaseException:
            for lane in lanes:
                _abandon_from_outside(lane)
    with _lock:
        runtime.lanes.clear()
        _runtime = None
    runtime.stop()


def _after_fork_in_child() -> None:
    global _lock, _runtime
    _lock = threading.Lock()
    if _runtime is not None:
        _orphans.append(_runtime)  # the parent's loop, sockets and epoll: leave them alone
        _runtime = None
    _log._lock = threading.Lock()


atexit.register(_atexit_flush)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
