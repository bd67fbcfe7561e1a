"""Pre-aggregation: fold usages per meter, customer, metadata and window before sending.

Framework-free and delivery-free. A :class:`WindowAggregator` sits in front of the delivery
queue: ``add()`` folds one usage into the open aggregate of its window (O(1) under a lock, no
I/O), ``due()`` hands out the aggregates of windows that have closed as ordinary
:class:`~fluxrate_web.core.events.UsageEvent` objects, ``drain()`` hands out everything (exit).

The bill is the same with or without aggregation, because each aggregate is what Fluxrate
itself would compute from the events it replaces, and it lands in the same billing period:

===============  ===========================================================================
``SUM``          the exact (Decimal) sum of the quantities
``MAX``          the largest quantity, as given
``LAST``         the quantity of the event with the latest timestamp (ties: the later ``add``)
``UNIQUE_COUNT`` one event per distinct metadata (which includes ``user_id``) per window
===============  ===========================================================================

Metadata is part of the aggregate's identity: usages with different metadata are never merged.
Windows align to wall-clock boundaries (``floor(epoch_ms / window_ms) * window_ms``, UTC) and an
aggregate carries the latest timestamp of its usages, which lies inside the window.

Exactly-once: every aggregate gets a fresh sequence number when it opens, and its idempotency
key (``agg_`` + 32 hex digits of a SHA-256 over meter, customer, metadata, window start, the
per-process instance id and that sequence number) is fixed in the emitted ``UsageEvent``, so a
retried delivery sends the same key. A usage that arrives for a window already emitted opens a
new aggregate (a new sequence number): an emitted aggregate is never changed.

See ``docs/aggregation.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, InvalidOperation
from typing import Any, Final, Literal, cast, get_args

from fluxrate_web.core.events import MAX_QUANTITY, UsageEvent

__all__ = [
    "AggregationSpec",
    "AggregationStats",
    "AggregationType",
    "WindowAggregator",
]

logger = logging.getLogger("fluxrate_web.aggregation")

AggregationType = Literal["SUM", "MAX", "LAST", "UNIQUE_COUNT"]
_TYPES: Final[tuple[str, ...]] = get_args(AggregationType)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
# Exact decimal arithmetic for SUM, independent of the (thread-local, user-settable) context.
_DECIMAL: Final = Context(prec=60, traps=[InvalidOperation])
_WINDOW_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS: Final[dict[str, float]] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_MAX_WINDOW_SECONDS: Final = 86400.0
# Metadata identity: canonical JSON (sorted keys), so {"n": 1} and {"n": 1.0} stay apart.
_canonical: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class AggregationSpec:
    """How one meter is pre-aggregated: the meter's aggregation type and the window length."""

    aggregation: AggregationType
    window_seconds: float

    def __post_init__(self) -> None:
        if self.aggregation not in _TYPES:
            raise ValueError(f"aggregation: expected one of {', '.join(_TYPES)}")
        w = self.window_seconds
        if isinstance(w, bool) or not isinstance(w, int | float):
            raise ValueError("window: expected a number of seconds or a string like '60s'")
        if not math.isfinite(w) or not 0.001 <= w <= _MAX_WINDOW_SECONDS:
            raise ValueError("window: expected between 1ms and 1 day")

    @classmethod
    def of(cls, aggregation: str, window: str | float | timedelta) -> AggregationSpec:
        """Build from config values: ``AggregationSpec.of("sum", "60s")``.

        ``window`` is seconds (a number), a ``timedelta`` or a string ``<number><unit>`` with unit
        ``ms``, ``s``, ``m``, ``h`` or ``d`` (no unit: seconds). Raises ``ValueError``.
        """
        kind = aggregation.strip().upper() if isinstance(aggregation, str) else aggregation
        if isinstance(window, timedelta):
            seconds = window.total_seconds()
        elif isinstance(window, str):
            m = _WINDOW_RE.match(window)
            if m is None:
                raise ValueError(f"window: expected e.g. '60s', '5m', '500ms'; got {window!r}")
            seconds = float(m.group(1)) * _UNIT_SECONDS[(m.group(2) or "s").lower()]
        else:
            seconds = window
        return cls(cast(AggregationType, kind), seconds)


@dataclass(frozen=True, slots=True)
class AggregationStats:
    """Counters since the aggregator was created (or since ``reset_after_fork``)."""

    folded: int  # usages folded into aggregates (add() returned True)
    emitted: int  # aggregates handed out by due() / drain()
    open: int  # aggregates still open (folded, not yet emitted)
    late: int  # aggregates opened for a window that had already been emitted
    bypassed: int  # usages of aggregated meters that add() refused (sent singly instead)
    failed: int  # aggregates that could not be built (logged at ERROR)

    @property
    def reduction_ratio(self) -> float:
        """Usages per aggregate (emitted or open): 1,000 means 1,000x fewer requests."""
        aggregates = self.emitted + self.open
        return self.folded / aggregates if aggregates else 1.0


class _Bucket:
    """One open aggregate. Mutated only under the aggregator's lock."""

    __slots__ = ("count", "customer", "meta", "meter", "seq", "start_ms", "ts_ms", "value")

    def __init__(
        self, meter: str, customer: str, meta: str, start_ms: int, seq: int, value: Any, ts_ms: int
    ) -> None:
        self.meter = meter
        self.customer = customer
        self.meta = meta  # canonical JSON of the metadata, "" for none
        self.start_ms = start_ms
        self.seq = seq
        self.value = value
        self.ts_ms = ts_ms
        self.count = 1


_Key = tuple[str, str, str]  # meter token, customer, canonical metadata


class WindowAggregator:
    """Folds usages of aggregated meters per (meter, customer, metadata, window).

    ``specs`` maps meter *tokens* to their :class:`AggregationSpec`; other meters are not
    aggregated (``add()`` returns False and the caller sends them singly).

    Thread-safe: ``add()`` holds the lock for a couple of dict operations; ``due()`` and
    ``drain()`` hold it only to detach closed windows, and build events outside it.
    """

    def __init__(
        self,
        specs: Mapping[str, AggregationSpec],
        *,
        instance_id: str | None = None,
        clock: Callable[[], float] = time.time,
        grace_seconds: float = 1.0,
        max_open: int = 100_000,
    ) -> None:
        for token, spec in specs.items():
            if not isinstance(spec, AggregationSpec):
                raise TypeError(f"specs[{token!r}]: expected an AggregationSpec")
        self._specs: dict[str, tuple[str, int]] = {
            token: (spec.aggregation, max(1, round(spec.window_seconds * 1000)))
            for token, spec in specs.items()
        }
        self._clock = clock
        self._grace_ms = max(0, round(grace_seconds * 1000))
        self._max_open = max_open
        self._instance_id = instance_id or secrets.token_hex(8)
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        # window end (ms) -> aggregates of the windows ending then; a due window is detached whole.
        self._windows: dict[int, dict[_Key, _Bucket]] = {}
        # meter token -> end (ms) of the latest window emitted, to count late aggregates.
        self._emitted_until: dict[str, int] = {}
        self._seq = 0
        self._open = 0
        self._folded = 0
        self._emitted = 0
        self._late = 0
        self._bypassed = 0
        self._failed = 0

    # ----------------------------------------------------------------------------- public API

    @property
    def instance_id(self) -> str:
        return self._instance_id

    def aggregates(self, meter_token: str) -> bool:
        """Whether usages of this meter token are aggregated."""
        return meter_token in self._specs

    def add(
        self,
        meter_token: str,
        customer_external_id: str,
        quantity: int | float | Decimal = 1,
        *,
        timestamp: datetime | str | float | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Fold one usage into its window's aggregate. Never raises; no I/O.

        Returns False when the usage is not aggregated, and the caller must send it as a single
        event: the meter is not aggregated; the caller gave an ``idempotency_key`` (its
        deduplication is the server's job); the input is invalid (the single-event path then
        rejects and counts it); a ``UNIQUE_COUNT`` usage has no ``metadata.user_id``; the
        timestamp is more than one window in the future; or ``max_open`` aggregates are open.
        ``timestamp``: a ``datetime`` (naive means UTC), an ISO-8601 string, or epoch seconds;
        default now.
        """
        spec = self._specs.get(meter_token)
        if spec is None:
            return False
        kind, window_ms = spec
        try:
            prepared = self._prepare(kind, window_ms, customer_external_id, quantity, timestamp,
                                     metadata, idempotency_key)  # fmt: skip
        except Exception:  # invalid input of any kind: the single-event path reports it
            prepared = None
        if prepared is not None:
            value, ts_ms, meta = prepared
            start_ms = ts_ms - ts_ms % window_ms
            end_ms = start_ms + window_ms
            key: _Key = (meter_token, customer_external_id, meta)
            with self._lock:
                window = self._windows.get(end_ms)
                bucket = window.get(key) if window is not None else None
                if bucket is not None:
                    if _fold(kind, bucket, value, ts_ms):
                        self._folded += 1
                        return True
                    self._bypassed += 1  # the sum would leave the valid range
                    return False
            # A new aggregate: validate the usage as a whole (once per aggregate, not per fold)
            # outside the lock, exactly as the single-event path would.
            if _valid_event(meter_token, customer_external_id, quantity, ts_ms, metadata):
                with self._lock:
                    return self._open_or_fold(kind, key, start_ms, end_ms, value, ts_ms)
        with self._lock:
            self._bypassed += 1
        return False

    def _open_or_fold(
        self, kind: str, key: _Key, start_ms: int, end_ms: int, value: Any, ts_ms: int
    ) -> bool:
        """Under the lock: open the aggregate (or fold, if another thread opened it meanwhile)."""
        window = self._windows.get(end_ms)
        if window is None:
            window = self._windows[end_ms] = {}
        bucket = window.get(key)
        if bucket is not None:
            if not _fold(kind, bucket, value, ts_ms):
                self._bypassed += 1
                return False
        elif self._open >= self._max_open:
            self._bypassed += 1
            return False
        else:
            window[key] = _Bucket(key[0], key[1], key[2], start_ms, self._seq, value, ts_ms)
            self._seq += 1
            self._open += 1
            if end_ms <= self._emitted_until.get(key[0], -1):
                self._late += 1
        self._folded += 1
        return True

    def due(self, now: float | None = None) -> list[UsageEvent]:
        """The aggregates of windows that have closed (end + grace <= now), oldest first."""
        now_ms = math.floor((self._clock() if now is None else now) * 1000)
        cutoff = now_ms - self._grace_ms
        with self._lock:
            ends = [end for end in self._windows if end <= cutoff]
            closed = [self._windows.pop(end) for end in ends]
        return self._emit(closed)

    def drain(self) -> list[UsageEvent]:
        """Every open aggregate, closed or not (shutdown, exit flush)."""
        with self._lock:
            closed = list(self._windows.values())
            self._windows = {}
        return self._emit(closed)

    @property
    def stats(self) -> AggregationStats:
        with self._lock:
            return AggregationStats(
                folded=self._folded,
                emitted=self._emitted,
                open=self._open,
                late=self._late,
                bypassed=self._bypassed,
                failed=self._failed,
            )

    def reset_after_fork(self) -> None:
        """In a forked child: a new instance id and empty state (the parent emits its own)."""
        self._instance_id = secrets.token_hex(8)
        self._init_state()

    # ------------------------------------------------------------------------------ internals

    def _prepare(
        self,
        kind: str,
        window_ms: int,
        customer: str,
        quantity: int | float | Decimal,
        timestamp: datetime | str | float | None,
        metadata: Mapping[str, Any] | None,
        idempotency_key: str | None,
    ) -> tuple[Any, int, str] | None:
        """Validate cheaply and normalise: (value to fold, epoch ms, canonical metadata)."""
        if idempotency_key is not None or type(customer) is not str or not customer:
            return None
        kind_q = type(quantity)
        if kind_q is int or kind_q is float or kind_q is Decimal:
            # NaN and infinities fail too; Decimal NaN raises (caught by add()).
            if not 0 < quantity <= MAX_QUANTITY:
                return None
        else:
            return None  # bool, str, numpy scalars...: the single-event path decides
        value: Any = quantity
        if kind_q is float and kind == "SUM":
            # The wire carries a float as its repr: sum exactly those decimals, not the binary
            # approximations (0.1 + 0.2 is 0.3 here, as it is in the server's Decimal column).
            value = Decimal(repr(quantity))
        if timestamp is None:
            ts_ms = math.floor(self._clock() * 1000)
        else:
            ts_ms = _epoch_ms(timestamp)
            if ts_ms > math.floor(self._clock() * 1000) + window_ms:
                return None  # far future: would sit in memory; send it singly
        if metadata:
            if type(metadata) is not dict:
                if not isinstance(metadata, Mapping):
                    return None
                metadata = dict(metadata)  # e.g. a UsageEvent's read-only metadata view
            if kind == "UNIQUE_COUNT" and not _valid_user_id(metadata.get("user_id")):
                return None
            meta = _canonical.encode(metadata)
        elif kind == "UNIQUE_COUNT":
            return None
        else:
            meta = ""
        return value, ts_ms, meta

    def _emit(self, closed: list[dict[_Key, _Bucket]]) -> list[UsageEvent]:
        buckets = [b for window in closed for b in window.values()]
        if not buckets:
            return []
        buckets.sort(key=lambda b: (b.start_ms, b.seq))
        events: list[UsageEvent] = []
        failed = 0
        emitted_until: dict[str, int] = {}
        for b in buckets:
            end_ms = b.start_ms + self._specs[b.meter][1]
            emitted_until[b.meter] = max(end_ms, emitted_until.get(b.meter, end_ms))
            try:
                events.append(self._event(b))
            except Exception:
                failed += 1
                logger.exception(
                    "fluxrate: could not build the aggregate of %d usages (meter %s, customer "
                    "%s, window %s, quantity %s); they are not billed",
                    b.count, b.meter, b.customer, _iso(b.start_ms), b.value,
                )  # fmt: skip
        with self._lock:
            self._open -= len(buckets)
            self._emitted += len(events)
            self._failed += failed
            for meter, end in emitted_until.items():
                if end > self._emitted_until.get(meter, -1):
                    self._emitted_until[meter] = end
        return events

    def _event(self, b: _Bucket) -> UsageEvent:
        value = b.value
        if isinstance(value, Decimal):
            value = int(value) if value == value.to_integral_value() else value.normalize(_DECIMAL)
        return UsageEvent(
            meter_token=b.meter,
            customer_external_id=b.customer,
            quantity=value,
            timestamp=_iso(b.ts_ms),
            idempotency_key=aggregate_key(
                b.meter, b.customer, b.meta, b.start_ms, self._instance_id, b.seq
            ),
            metadata=json.loads(b.meta) if b.meta else None,
        )


def aggregate_key(
    meter_token: str,
    customer: str,
    metadata_json: str,
    window_start_ms: int,
    instance: str,
    seq: int,
) -> str:
    """The idempotency key of one aggregate: ``agg_`` + 32 hex digits (128 bits) of SHA-256."""
    material = "\x1f".join(
        (meter_token, customer, metadata_json, str(window_start_ms), instance, str(seq))
    )
    return "agg_" + hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _fold(kind: str, b: _Bucket, value: Any, ts_ms: int) -> bool:
    """Fold one value into an open aggregate (under the lock). False if a sum would exceed the
    largest valid quantity: the usage then goes singly and the aggregate stays valid."""
    if kind == "SUM":
        if type(value) is int and type(b.value) is int:
            total: Any = b.value + value
        else:
            total = _DECIMAL.add(b.value, value)
        if total > MAX_QUANTITY:
            return False
        b.value = total
    elif kind == "MAX":
        if value > b.value:
            b.value = value
    elif ts_ms >= b.ts_ms:  # LAST, UNIQUE_COUNT: the latest timestamp wins (ties: later add)
        b.value = value
    if ts_ms > b.ts_ms:
        b.ts_ms = ts_ms
    b.count += 1
    return True


_ts_prefix: tuple[str, int] = ("", 0)  # last "YYYY-MM-DDTHH:MM:SS" seen -> its epoch ms


def _epoch_ms(timestamp: datetime | str | float) -> int:
    global _ts_prefix
    if type(timestamp) is str:
        # Fast path for the canonical form UsageEvent produces: 2026-11-27T15:14:24.123Z
        if len(timestamp) == 24 and timestamp[19] == "." and timestamp[23] == "Z":
            digits = timestamp[20:23]
            if digits.isdigit():
                prefix = timestamp[:19]
                cached = _ts_prefix
                if cached[0] != prefix:
                    seconds = datetime.fromisoformat(prefix).replace(tzinfo=UTC)
                    cached = _ts_prefix = (prefix, (seconds - _EPOCH) // _MS)
                return cached[1] + int(digits)
        timestamp = datetime.fromisoformat(timestamp)
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        return (timestamp - _EPOCH) // _MS
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise TypeError("timestamp")
    # epoch seconds, truncated to ms the way UsageEvent stamps them (a test checks)
    return math.floor(timestamp * 1000)


def _iso(ms: int) -> str:
    """UTC ISO-8601 with milliseconds, as the wire format wants: 2026-11-27T15:14:24.123Z."""
    dt = _EPOCH + timedelta(milliseconds=ms)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def _valid_user_id(user_id: object) -> bool:
    """A non-empty string or an integer: what a UNIQUE_COUNT meter accepts (the rest go singly
    and are refused one by one, as they would be without aggregation)."""
    return (type(user_id) is str and user_id != "") or type(user_id) is int


def _valid_event(
    meter: str, customer: str, quantity: Any, ts_ms: int, metadata: Mapping[str, Any] | None
) -> bool:
    """Whether a single event with these fields would be valid (checked once per aggregate)."""
    try:
        UsageEvent(
            meter_token=meter,
            customer_external_id=customer,
            quantity=quantity,
            timestamp=_iso(ts_ms),
            idempotency_key="agg_probe",
            metadata=metadata or None,
        )
    except Exception:
        return False
    return True
