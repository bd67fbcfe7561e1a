"""``FluxrateClient``: track usage off the request path; ``send()`` for one delivery now.

::

    client = FluxrateClient()                       # FLUXRATE_API_KEY, FLUXRATE_BASE_URL
    client.track("meter-token", "cust_42", 3)       # validates, queues, returns: no I/O
    client.flush(5.0)                               # optional: wait for delivery
    client.close()                                  # drain, then close connections

Delivery runs on the process's dispatcher thread (see :mod:`fluxrate_web.core.dispatcher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any

from fluxrate_web.core._log import logger, warn_limited
from fluxrate_web.core.aggregation import AggregationSpec, WindowAggregator
from fluxrate_web.core.dispatcher import (
    Counters,
    DeliverySink,
    FinalCallback,
    Lane,
    LaneSettings,
    LatencySnapshot,
    close_lane,
    exiting,
    flush_lane,
    open_lane,
    release_lane,
)
from fluxrate_web.core.errors import (
    ConfigError,
    FluxrateError,
    InvalidUsageError,
    TransportError,
)
from fluxrate_web.core.events import UsageEvent, reseed_keys_if_forked, trusted_event
from fluxrate_web.core.failures import FailureLog
from fluxrate_web.core.spool import DURABILITY_MODES, Spool, has_spool_files
from fluxrate_web.core.transport import (
    DEFAULT_BASE_URL,
    Transport,
    Wire,
    make_ssl_context,
    mask,
    parse_base_url,
    proxy_for,
)

__all__ = ["ClientStats", "FluxrateClient", "capture_events"]

# --------------------------------------------------------------------------- capture

_captures: list[list[UsageEvent]] = []
_getpid = os.getpid


@contextlib.contextmanager
def capture_events() -> Iterator[list[UsageEvent]]:
    """While active (process-wide, all threads), every client's ``track()``/``enqueue()``
    appends the validated event to the yielded list instead of queueing it for delivery.
    Nested captures: the innermost receives the events."""
    captured: list[UsageEvent] = []
    _captures.append(captured)
    try:
        yield captured
    finally:
        with contextlib.suppress(ValueError):
            # remove this very list (identity, not equality: two empty lists are equal)
            for i in range(len(_captures) - 1, -1, -1):
                if _captures[i] is captured:
                    del _captures[i]
                    break


# --------------------------------------------------------------------------- stats


class ClientStats:
    """Counters of one client since it was created (or since a fork, in a child).

    ``enqueued``: events accepted into the queue; ``delivered``: accepted by the API as new;
    ``deduplicated``: the API already had the idempotency key (so they were delivered before);
    ``retried``: attempts scheduled again after a retryable failure; ``failed``: events written to
    the failure log; ``dropped``: ``track()`` calls refused as invalid (nothing logged but a
    warning); ``pending``: queued, in flight or waiting to retry right now; ``queue_depth``: the
    part of ``pending`` still in the queue, waiting for a delivery worker. ``latency``: a
    histogram of the seconds from enqueue to the final answer (see :attr:`latency`).
    """

    __slots__ = ("_client",)

    def __init__(self, client: FluxrateClient) -> None:
        self._client = client

    @property
    def _c(self) -> Counters:
        client = self._client
        if client._pid != os.getpid():
            client._after_fork()
        return client._counters

    @property
    def enqueued(self) -> int:
        taken = self._c.taken
        lane = self._client._lane
        return taken + (len(lane.queue) if lane is not None else 0)

    @property
    def delivered(self) -> int:
        return self._c.delivered

    @property
    def deduplicated(self) -> int:
        return self._c.deduplicated

    @property
    def retried(self) -> int:
        return self._c.retried

    @property
    def failed(self) -> int:
        return self._c.failed

    @property
    def dropped(self) -> int:
        return self._c.dropped

    @property
    def pending(self) -> int:
        self._c  # noqa: B018  # (the fork check)
        lane = self._client._lane
        return lane.pending if lane is not None and not lane.closed else 0

    @property
    def queue_depth(self) -> int:
        """Events waiting in the queue for a delivery worker (not yet in flight nor retrying)."""
        self._c  # noqa: B018  # (the fork check)
        lane = self._client._lane
        return len(lane.queue) if lane is not None and not lane.closed else 0

    @property
    def latency(self) -> LatencySnapshot:
        """Delivery latency: seconds from the moment an event was queued to the API's final
        answer, retries and backoff included, for every event delivered or deduplicated
        (failed events are in ``failed``, not here). ``.buckets`` (ascending upper bounds,
        the last ``inf``), ``.counts`` (per bucket, not cumulative), ``.sum``, ``.count`` and
        ``.quantile(q)``. Events read back from a disk spool count from that moment."""
        return self._c.latency.snapshot()

    # pre-aggregation (0 / 1.0 without it)

    @property
    def folded(self) -> int:
        """Usages folded into an aggregate instead of being sent singly."""
        self._c  # noqa: B018  # (the fork check)
        agg = self._client._aggregator
        return agg.stats.folded if agg is not None else 0

    @property
    def aggregates(self) -> int:
        """Aggregates emitted (handed to the queue); ``enqueued`` counts them too."""
        self._c  # noqa: B018
        agg = self._client._aggregator
        return agg.stats.emitted if agg is not None else 0

    @property
    def aggregates_open(self) -> int:
        """Aggregates still open in memory (their usage is not sent yet)."""
        self._c  # noqa: B018
        agg = self._client._aggregator
        return agg.stats.open if agg is not None else 0

    @property
    def reduction_ratio(self) -> float:
        """Usages per aggregate (emitted or open); 1.0 without pre-aggregation."""
        self._c  # noqa: B018
        agg = self._client._aggregator
        return agg.stats.reduction_ratio if agg is not None else 1.0

    def as_dict(self) -> dict[str, Any]:
        """All counters at once; the pre-aggregation ones only when it is configured."""
        values: dict[str, Any] = {
            "enqueued": self.enqueued,
            "delivered": self.delivered,
            "deduplicated": self.deduplicated,
            "retried": self.retried,
            "failed": self.failed,
            "dropped": self.dropped,
            "pending": self.pending,
            "queue_depth": self.queue_depth,
        }
        agg = self._client._aggregator
        if agg is not None:
            agg_stats = agg.stats
            values["folded"] = agg_stats.folded
            values["aggregates"] = agg_stats.emitted
            values["aggregates_open"] = agg_stats.open
            values["reduction_ratio"] = agg_stats.reduction_ratio
        if self._client.durability != "memory":
            values["spooled"] = self.spooled
            values["spool_backlog"] = self.spool_backlog
            values["adopted"] = self.adopted
        return values

    # durability (0 in memory mode)

    @property
    def spooled(self) -> int:
        """Events written to the spool's backlog (outage, high water, retries exhausted,
        shutdown deadline, queue full)."""
        return self._c.spooled

    @property
    def adopted(self) -> int:
        """Events adopted from the spools of processes that ended."""
        return self._c.adopted

    @property
    def spool_backlog(self) -> int:
        """Events waiting in the spool right now (not counting ``strict`` copies of queued
        events)."""
        self._c  # noqa: B018
        lane = self._client._lane
        return max(0, lane.on_disk) if lane is not None and not lane.closed else 0

    def __repr__(self) -> str:
        return "ClientStats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"


# --------------------------------------------------------------------------- the client


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value and value.strip() else None


class FluxrateClient:
    """Sends usage events to Fluxrate (or the devserver).

    ``api_key`` and ``base_url`` default to ``$FLUXRATE_API_KEY`` and ``$FLUXRATE_BASE_URL``
    (then ``https://api.fluxrate.co``). Plain ``http://`` is refused for non-loopback hosts
    unless ``allow_insecure=True``. ``access_token`` enables REST events (``meter_id`` /
    ``customer_id``) to ``POST /api/v1/usage``.

    Delivery: up to ``max_in_flight`` concurrent requests over keep-alive connections; a queue
    of ``max_queue_size`` events; ``max_attempts`` attempts per event within ``max_retry_age``
    seconds of its first attempt, backing off exponentially with full jitter from
    ``backoff_base`` up to ``backoff_max`` seconds (a ``Retry-After`` is a floor); each request
    ends within ``request_timeout`` seconds; ``close()`` and interpreter exit wait up to
    ``shutdown_timeout`` seconds. Events that finally fail go to ``failed_events_path`` (JSON
    lines, mode 0600) or, without one, to a WARNING log line. ``verify``: ``True`` (system CAs),
    a CA bundle path, an ``ssl.SSLContext``, or ``False`` (no TLS verification: development
    only). Proxies come from ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``.

    ``aggregation`` ({meter token: :class:`~fluxrate_web.core.aggregation.AggregationSpec`})
    pre-aggregates those meters: ``track()`` folds their usages per meter, customer, metadata
    and window (usages with an ``idempotency_key`` are sent singly), the worker sends closed
    windows about once a second, ``flush()``/``close()``/interpreter exit send the open ones.

    ``stats_log_interval`` (seconds; ``None`` or 0: off) makes the background worker log one
    INFO line of ``stats`` on the ``fluxrate_web`` logger that often, from the first event (or
    ``start()``) until ``close()``.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        access_token: str | None = None,
        allow_insecure: bool = False,
        max_queue_size: int = 100_000,
        max_in_flight: int = 16,
        max_attempts: int = 8,
        max_retry_age: float = 300.0,
        request_timeout: float = 10.0,
        shutdown_timeout: float = 5.0,
        failed_events_path: str | os.PathLike[str] | None = None,
        verify: bool | str | ssl.SSLContext = True,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        aggregation: Mapping[str, AggregationSpec] | None = None,
        durability: str = "memory",
        spool_path: str | os.PathLike[str] | None = None,
        spool_grace: float = 5.0,
        spool_high_water: int | None = None,
        transport: str = "direct",
        redis_url: str | None = None,
        redis_stream: str | None = None,
        on_final: FinalCallback | None = None,
        stats_log_interval: float | None = None,
    ) -> None:
        if api_key is not None and not isinstance(api_key, str):
            raise ConfigError("api_key: expected a string")
        if access_token is not None and not isinstance(access_token, str):
            raise ConfigError("access_token: expected a string")
        self._api_key = (api_key.strip() or None) if api_key else _env("FLUXRATE_API_KEY")
        self._access_token = access_token.strip() or None if access_token else None
        url = base_url if base_url else (_env("FLUXRATE_BASE_URL") or DEFAULT_BASE_URL)
        self.endpoint = parse_base_url(url, allow_insecure=bool(allow_insecure))
        self.base_url = str(self.endpoint)
        self.settings = LaneSettings(
            max_queue_size=max_queue_size,
            max_in_flight=max_in_flight,
            max_attempts=max_attempts,
            max_retry_age=max_retry_age,
            request_timeout=request_timeout,
            shutdown_timeout=shutdown_timeout,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )
        self.settings.check()
        self._ssl_context = make_ssl_context(verify) if self.endpoint.tls else None
        if verify is False and self.endpoint.tls:
            logger.warning("TLS certificate verification is off for %s", self.endpoint.origin)
        self._proxy = proxy_for(self.endpoint)
        self._wire = Wire(
            self.endpoint,
            api_key=self._api_key,
            access_token=self._access_token,
            proxy=self._proxy,
        )
        self.failed_events_path = (
            os.fspath(failed_events_path) if failed_events_path is not None else None
        )
        self._secrets = self._wire.secrets
        if aggregation is not None and not isinstance(aggregation, Mapping):
            raise ConfigError("aggregation: expected a mapping of meter tokens to AggregationSpec")
        for token, spec in (aggregation or {}).items():
            if not isinstance(token, str) or not isinstance(spec, AggregationSpec):
                raise ConfigError(
                    f"aggregation[{token!r}]: expected a meter token mapped to an AggregationSpec"
                )
        self.aggregation: dict[str, AggregationSpec] = dict(aggregation or {})
        if durability not in DURABILITY_MODES:
            raise ConfigError(
                f"durability: expected one of {', '.join(DURABILITY_MODES)}, got {durability!r}"
            )
        self.durability = durability
        if durability != "memory" and spool_path is None:
            raise ConfigError(f"spool_path: required with durability {durability!r} (a directory)")
        self.spool_path = os.path.abspath(os.fspath(spool_path)) if spool_path else None
        if isinstance(spool_grace, bool) or not isinstance(spool_grace, int | float):
            raise ConfigError(f"spool_grace: expected a number, got {spool_grace!r}")
        if not spool_grace >= 0:
            raise ConfigError(f"spool_grace: must be >= 0, got {spool_grace!r}")
        self.spool_grace = float(spool_grace)
        if spool_high_water is None:
            spool_high_water = max(1, max_queue_size // 2) if isinstance(max_queue_size, int) else 1
        if isinstance(spool_high_water, bool) or not isinstance(spool_high_water, int):
            raise ConfigError(f"spool_high_water: expected an integer, got {spool_high_water!r}")
        if spool_high_water < 1:
            raise ConfigError(f"spool_high_water: must be >= 1, got {spool_high_water!r}")
        self.spool_high_water = min(spool_high_water, max_queue_size)
        if stats_log_interval is None:
            stats_log_interval = 0.0
        if isinstance(stats_log_interval, bool) or not isinstance(stats_log_interval, int | float):
            raise ConfigError(
                f"stats_log_interval: expected a number of seconds, got {stats_log_interval!r}"
            )
        if not 0 <= stats_log_interval < float("inf"):
            raise ConfigError(
                f"stats_log_interval: must be >= 0 (0: off), got {stats_log_interval!r}"
            )
        self.stats_log_interval = float(stats_log_interval)
        self._strict = durability == "strict"
        self._sink_factory = self._redis_sink_factory(transport, redis_url, redis_stream)
        self._on_final = on_final
        self._closed = False
        self._spool: Spool | None = None
        self._reset_process_state()
        self.stats = ClientStats(self)
        if self.spool_path is not None and has_spool_files(self.spool_path):
            # a process that ended left events behind: adopt and deliver them now (on the
            # dispatcher thread), not only once this process tracks something
            self._start_lane()

    def _redis_sink_factory(
        self, transport: str, redis_url: str | None, redis_stream: str | None
    ) -> Callable[[], DeliverySink] | None:
        """``transport="redis"``: the background worker appends to a Redis stream instead of
        calling the API (see :mod:`fluxrate_web.core.redis_transport`)."""
        if transport not in ("direct", "redis"):
            raise ConfigError(f"transport: expected 'direct' or 'redis', got {transport!r}")
        self.transport = transport
        self.redis_url: str | None = None
        self.redis_stream: str | None = None
        if transport == "direct":
            return None
        from fluxrate_web.core import redis_transport as rt

        rt.require_redis()
        self.redis_url = rt.check_redis_url(redis_url or rt.DEFAULT_REDIS_URL)
        self.redis_stream = rt.check_stream_name(redis_stream or rt.DEFAULT_REDIS_STREAM)
        self._secrets = (*self._secrets, *rt.url_secrets(self.redis_url))
        return functools.partial(
            rt.RedisSink,
            self.redis_url,
            self.redis_stream,
            timeout=self.settings.request_timeout,
            aggregation=self.aggregation,
        )

    def _reset_process_state(self) -> None:
        """Fresh locks, queue, counters and failure-log handle for this process."""
        self._pid = os.getpid()
        reseed_keys_if_forked(self._pid)  # a fork the at-fork hook did not see
        self._lock = threading.Lock()
        self._lane: Lane | None = None
        self._counters = Counters()
        self._failure_log = FailureLog(self.failed_events_path, secrets=self._secrets)
        # a fresh aggregator per process: a forked child never inherits (nor sends) the
        # parent's open aggregates, and gets a new instance id for its aggregate keys
        self._aggregator = WindowAggregator(self.aggregation) if self.aggregation else None
        # a spool file of our own per process (opened on first use); a forked child never
        # touches its parent's (see Spool.forget_in_child)
        old = self._spool
        if old is not None and old.pid != self._pid:
            old.forget_in_child()
        self._spool = Spool(self.spool_path) if self.spool_path is not None else None

    # ------------------------------------------------------------------ repr

    def __repr__(self) -> str:
        key = mask(self._api_key)
        token = ", access_token='***'" if self._access_token else ""
        durability = (
            f", durability={self.durability!r}, spool_path={self.spool_path!r}"
            if self.durability != "memory"
            else ""
        )
        if self.transport == "redis":
            from fluxrate_web.core.redis_transport import mask_redis_url

            durability += f", transport='redis', redis_url={mask_redis_url(self.redis_url or '')!r}"
        return f"FluxrateClient(base_url={self.base_url!r}, api_key={key}{token}{durability})"

    @property
    def api_key_configured(self) -> bool:
        return self._api_key is not None

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ the request path

    def track(
        self,
        meter_token: str,
        customer_external_id: str,
        quantity: int | float | Decimal = 1,
        *,
        timestamp: str | datetime | float | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> UsageEvent | None:
        """Validate and queue one event; returns it, or ``None`` when it was refused (invalid:
        counted in ``stats.dropped`` with a rate-limited WARNING) or could not be queued (queue
        full or client closed: written to the failure log). No I/O; never raises."""
        try:
            event = UsageEvent.create(
                meter_token,
                customer_external_id,
                quantity,
                timestamp=timestamp,
                idempotency_key=idempotency_key,
                metadata=metadata,
            )
        except InvalidUsageError as exc:
            self.note_dropped(str(exc))
            return None
        except Exception as exc:  # e.g. a metadata mapping whose __iter__ raises
            self.note_dropped(f"{type(exc).__name__}: {exc}")
            return None
        if self.aggregation and idempotency_key is None and not _captures:
            try:
                if self._fold(event):
                    return event  # accepted: the aggregate's own key is what gets sent
            except Exception:  # never into the request: send it singly instead
                logger.exception("could not pre-aggregate a usage event")
        return event if self.enqueue(event) else None

    def _track_trusted(
        self,
        meter_token: str,
        customer_external_id: str,
        quantity: int | float | Decimal,
        metadata: Mapping[str, Any] | None,
        metadata_json: str | None,
    ) -> bool:
        """``track()`` for :class:`~fluxrate_web.core.metering.Metering`: the meter token,
        quantity and metadata were validated when the route was planned
        (:func:`~fluxrate_web.core.events.prepared_meter`), so only the customer is checked.
        Then the same folding, capture and queueing as ``track()``. Never raises."""
        check_pid = self._pid != _getpid()
        if check_pid:  # before the key is drawn: a fork reseeds the keys
            try:
                self._after_fork()
                check_pid = False
            except Exception:  # _submit() tries again and logs the event if it must
                logger.exception("could not reset the client after a fork")
        try:
            event = trusted_event(
                meter_token, customer_external_id, quantity, metadata, metadata_json
            )
        except InvalidUsageError as exc:
            self.note_dropped(str(exc))
            return False
        except Exception as exc:  # pragma: no cover - nothing else should raise
            self.note_dropped(f"{type(exc).__name__}: {exc}")
            return False
        if _captures:
            try:
                _captures[-1].append(event)
                return True
            except IndexError:  # the capture ended meanwhile
                pass
        elif self.aggregation:
            try:
                if self._fold(event):
                    return True
            except Exception:
                logger.exception("could not pre-aggregate a usage event")
        return self._submit(event, check_pid)

    def _fold(self, event: UsageEvent) -> bool:
        """Fold ``event`` into its window's aggregate; False: send it as a single event."""
        if self._pid != os.getpid():
            self._after_fork()
        agg = self._aggregator
        if agg is None or self._closed or not agg.aggregates(event.meter_token):
            return False
        lane = self._lane
        if lane is None or lane.closed:
            if exiting():  # nobody would send the window: the single path logs it
                return False
            lane = self._start_lane()  # the lane's tick sends the window when it closes
            if lane is None:
                return False
        return agg.add(
            event.meter_token,
            event.customer_external_id,
            event.quantity,
            timestamp=event.timestamp,
            metadata=event.metadata,
        )

    def enqueue(self, event: UsageEvent) -> bool:
        """Queue an already-built event. ``True`` if queued (or captured). Never raises."""
        if _captures:
            try:
                _captures[-1].append(event)
                return True
            except IndexError:  # the capture ended meanwhile
                pass
        return self._submit(event, True)

    def _submit(self, event: UsageEvent, check_pid: bool) -> bool:
        """enqueue() without the capture (``check_pid`` False: the caller just checked)."""
        try:
            if check_pid and self._pid != _getpid():
                self._after_fork()
            lane = self._lane
            if lane is None or lane.closed:
                if exiting():  # an atexit hook that ran after ours: nobody would send it
                    self._counters.add("failed")
                    self._failure_log.add(event, "shutdown_deadline")
                    return False
                lane = self._start_lane()
                if lane is None:
                    warn_limited(
                        "client_closed",
                        "usage event tracked on a closed FluxrateClient; "
                        "it is in the failure log (reason client_closed)",
                    )
                    self._counters.add("failed")
                    self._failure_log.add(event, "client_closed")
                    return False
            if self._strict:
                self._spool.append(event)  # type: ignore[union-attr]  # before it is queued
            if len(lane.queue) >= self.settings.max_queue_size:
                if lane.spool is not None and self._spill_now(lane, event):
                    return True
                warn_limited(
                    "queue_full",
                    "the usage queue is full (%d events); events go to the failure log "
                    "with reason queue_full",
                    self.settings.max_queue_size,
                )
                self._counters.add("failed")
                self._failure_log.add(event, "queue_full")
                return False
            lane.submit(event)
            if lane.closed:  # closed while we appended: write it out ourselves
                self._drain_closed(lane)
            return True
        except Exception as exc:  # never into the request; never silently
            logger.exception("could not queue a usage event")
            try:
                self._counters.add("failed")
                self._failure_log.add(event, "internal_error", error=repr(exc)[:500])
            except Exception:
                pass
            return False

    def _spill_now(self, lane: Lane, event: UsageEvent) -> bool:
        """Queue full with a spool: the event goes to disk (the same cost as the failure-log
        line it replaces). False if the spool cannot take it."""
        spool = lane.spool
        if spool is None or spool.closed or spool.broken:
            return False
        try:
            if spool.spill([(event, "queue_full")], foreign=True) != 1:
                return False
            self._counters.add("spooled")
        except Exception:
            logger.exception("cannot write to the spool %s", spool.db_path)
            return False
        warn_limited(
            "queue_full_spool",
            "the usage queue is full (%d events); events go to the spool",
            self.settings.max_queue_size,
        )
        try:
            lane.loop.call_soon_threadsafe(lane.absorb_spilled)
        except RuntimeError:  # pragma: no cover - the loop closed: the next process adopts it
            pass
        return True

    def note_dropped(self, reason: str) -> None:
        """Count an event refused before it was built, with a rate-limited WARNING."""
        try:
            self._counters.add("dropped")
            warn_limited(f"dropped:{reason[:60]}", "usage event dropped: %s", reason)
        except Exception:  # pragma: no cover
            pass

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background worker now (it starts by itself on the first event). With
        ``durability="strict"`` this also opens the spool file, which the first ``track()``
        would otherwise do (a few milliseconds, once)."""
        if self._pid != os.getpid():
            self._after_fork()
        if self._closed:
            raise FluxrateError("this FluxrateClient is closed")
        if self._strict and self._spool is not None:
            self._spool.open()
        self._start_lane()

    def _start_lane(self) -> Lane | None:
        with self._lock:
            if self._closed:
                return None
            lane = self._lane
            if lane is not None and not lane.closed:
                return lane
            lane = open_lane(
                wire=self._wire,
                # a partial, not a bound method: the lane must not keep the client alive
                transport_factory=functools.partial(
                    Transport,
                    self.endpoint,
                    ssl_context=self._ssl_context,
                    proxy=self._proxy,
                    timeout=self.settings.request_timeout,
                    max_idle=self.settings.max_in_flight + 4,
                ),
                settings=self.settings,
                counters=self._counters,
                failure_log=self._failure_log,
                name=hex(id(self))[-6:],
                aggregator=self._aggregator,
                tick_interval=0.5 if self._spool is not None else 1.0,
                spool=self._spool,
                strict=self._strict,
                spool_grace=self.spool_grace,
                high_water=self.spool_high_water if self._spool is not None else 0,
                sink_factory=self._sink_factory,
                on_final=self._on_final,
                stats_log_interval=self.stats_log_interval,
            )
            self._lane = lane
            # a client dropped without close(): its lane drains in the background, then closes
            # its connections (not at exit: the atexit flush handles every lane then)
            finalizer = weakref.finalize(self, release_lane, lane)
            finalizer.atexit = False
            return lane

    def _drain_closed(self, lane: Lane) -> None:
        records = []
        while True:
            try:
                event = lane.queue.popleft()
            except IndexError:
                break
            records.append(event)
        for event in records:
            self._counters.add("failed")
            self._failure_log.add(event, "client_closed")

    def _after_fork(self) -> None:
        """First use in a forked child: start afresh. The parent keeps (and delivers) what was
        queued before the fork; the child inherits nothing of it."""
        self._reset_process_state()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event is delivered or finally failed; ``False`` if
        ``timeout`` seconds passed first (``None``: no limit but the retry budget)."""
        if self._pid != os.getpid():
            self._after_fork()
        lane = self._lane
        if lane is None or lane.closed:
            return True
        agg = self._aggregator
        if agg is not None:
            for event in agg.drain():  # open windows are sent now
                self.enqueue(event)
        return flush_lane(lane, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is pending within ``timeout`` (default ``shutdown_timeout``) seconds,
        write the rest to the failure log (reason ``shutdown_deadline``), close connections.
        Idempotent."""
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            lane = self._lane
        if lane is not None:
            close_lane(lane, timeout)  # the lane drains the open windows first
        agg = self._aggregator
        if agg is not None:  # folded while closing: written out (client_closed), not lost
            for event in agg.drain():
                self.enqueue(event)

    async def flush_async(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """:meth:`flush` without blocking the calling event loop."""
        return await asyncio.to_thread(self.flush, timeout)

    async def close_async(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """:meth:`close` without blocking the calling event loop."""
        await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> FluxrateClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> FluxrateClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close_async()

    # ------------------------------------------------------------------ direct sends

    def _lane_for_send(self) -> Lane:
        if self._pid != os.getpid():
            self._after_fork()
        if not isinstance(self, FluxrateClient):  # pragma: no cover
            raise TypeError
        lane = self._lane
        if lane is None or lane.closed:
            lane = self._start_lane() if not self._closed and not exiting() else None
            if lane is None:
                raise FluxrateError("this FluxrateClient is closed")
        return lane

    def send(self, event: UsageEvent) -> dict[str, Any]:
        """Deliver ``event`` now, once (no retry), and return the server's record (for a
        duplicate: the original record). Raises ``AuthenticationError``, ``ValidationError``,
        ``NotFoundError``, ``RateLimitedError``, ``ServerError``, ``APIError``,
        ``TransportError`` or ``ConfigError`` (no credentials for this event)."""
        if not isinstance(event, UsageEvent):
            raise InvalidUsageError(f"send() takes a UsageEvent, got {type(event).__name__}")
        lane = self._lane_for_send()
        runtime = lane.runtime
        if runtime.in_loop_thread:
            raise RuntimeError("send() cannot run on the fluxrate dispatcher thread")
        future = lane.call(lane.send_once(event))
        try:
            result: dict[str, Any] = future.result(self.settings.request_timeout * 2 + 5.0)
        except TimeoutError:
            future.cancel()
            raise TransportError("send() timed out") from None
        return result

    async def send_async(self, event: UsageEvent) -> dict[str, Any]:
        """:meth:`send` for async code: awaits the dispatcher without blocking the caller's
        loop (the request runs on the dispatcher's connections, the same code path)."""
        if not isinstance(event, UsageEvent):
            raise InvalidUsageError(f"send() takes a UsageEvent, got {type(event).__name__}")
        lane = self._lane_for_send()
        result: dict[str, Any] = await asyncio.wrap_future(lane.call(lane.send_once(event)))
        return result
