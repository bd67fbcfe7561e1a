"""WindowAggregator: unit tests, billing-equivalence properties, keys, late usages, threads.

The billing model below is what Fluxrate bills per (customer, billing period): SUM adds the
quantities (the decimals the wire carries), MAX takes the largest, LAST the quantity with the
latest timestamp, UNIQUE_COUNT counts distinct ``metadata.user_id``. The properties check that
the aggregates bill exactly what the raw usages bill, period by period.
"""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fluxrate_web.core.aggregation import AggregationSpec, WindowAggregator
from fluxrate_web.core.events import UsageEvent

TYPES = ("SUM", "MAX", "LAST", "UNIQUE_COUNT")
BASE_MS = 1_790_000_040_000  # a whole minute (and 5 minutes), 2026-09-21
TOKEN = "tok-meter"


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------------------- billing model


@dataclass(frozen=True)
class Usage:
    customer: str
    quantity: int | float | Decimal
    ts_ms: int
    metadata: dict[str, Any] | None = None


def as_decimal(q: int | float | Decimal) -> Decimal:
    return Decimal(repr(q)) if isinstance(q, float) else Decimal(q)


def event_ms(e: UsageEvent) -> int:
    return (datetime.fromisoformat(e.timestamp) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        milliseconds=1
    )


def billable(
    kind: str, rows: Iterable[tuple[str, Any, int, Any]], period_ms: int
) -> dict[tuple[str, int], Any]:
    """rows: (customer, quantity, ts_ms, metadata) -> {(customer, period index): billable}."""
    groups: dict[tuple[str, int], list[tuple[Any, int, Any]]] = defaultdict(list)
    for customer, q, ts, meta in rows:
        groups[(customer, ts // period_ms)].append((q, ts, meta))
    out: dict[tuple[str, int], Any] = {}
    for k, items in groups.items():
        if kind == "SUM":
            out[k] = sum((as_decimal(q) for q, _, _ in items), Decimal(0))
        elif kind == "MAX":
            out[k] = as_decimal(max(q for q, _, _ in items))
        elif kind == "LAST":
            out[k] = as_decimal(max(items, key=lambda i: i[1])[0])
        else:
            out[k] = len({json.dumps(meta["user_id"]) for _, _, meta in items})  # "4" != 4
    return out


def bill_usages(kind: str, usages: Iterable[Usage], period_ms: int) -> dict[Any, Any]:
    return billable(
        kind, ((u.customer, u.quantity, u.ts_ms, u.metadata) for u in usages), period_ms
    )


def bill_events(kind: str, events: Iterable[UsageEvent], period_ms: int) -> dict[Any, Any]:
    return billable(
        kind,
        ((e.customer_external_id, e.quantity, event_ms(e), e.metadata) for e in events),
        period_ms,
    )


def single(u: Usage) -> UsageEvent:
    """What the caller sends when add() returns False."""
    return UsageEvent.create(
        TOKEN, u.customer, u.quantity, timestamp=iso(u.ts_ms), metadata=u.metadata
    )


def iso(ms: int) -> str:
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


# ------------------------------------------------------------------------------- unit tests


def make(kind: str = "SUM", window: float = 60, **kw: Any) -> tuple[WindowAggregator, FakeClock]:
    clock = FakeClock(BASE_MS / 1000)
    kw.setdefault("instance_id", "inst-a")
    return WindowAggregator({TOKEN: AggregationSpec(kind, window)}, clock=clock, **kw), clock  # type: ignore[arg-type]


def test_spec_validation_and_parsing() -> None:
    assert AggregationSpec.of("sum", "60s") == AggregationSpec("SUM", 60.0)
    assert AggregationSpec.of("Unique_Count", "5m").window_seconds == 300.0
    assert AggregationSpec.of("MAX", "500ms").window_seconds == pytest.approx(0.5)
    assert AggregationSpec.of("LAST", 90).window_seconds == 90
    assert AggregationSpec.of("LAST", "1h").window_seconds == 3600.0
    assert AggregationSpec.of("SUM", timedelta(minutes=2)).window_seconds == 120.0
    for bad in [("COUNT", 60), ("SUM", 0), ("SUM", -1), ("SUM", "60x"), ("SUM", float("nan"))]:
        with pytest.raises(ValueError):
            AggregationSpec.of(*bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AggregationSpec("SUM", True)
    with pytest.raises(ValueError):
        AggregationSpec("SUM", 2 * 86400)
    with pytest.raises(TypeError):
        WindowAggregator({TOKEN: ("SUM", 60)})  # type: ignore[dict-item]


def test_sum_folds_one_window_into_one_event_with_the_latest_timestamp() -> None:
    agg, _clock = make("SUM")
    for i in range(10):
        assert agg.add(TOKEN, "c1", 2, timestamp=(BASE_MS + 1000 * i) / 1000)
    assert agg.add(TOKEN, "c1", 0.5, timestamp=iso(BASE_MS + 59_999))
    assert agg.add(TOKEN, "c1", Decimal("0.25"), timestamp=datetime.fromtimestamp(BASE_MS / 1000))
    assert agg.due(BASE_MS / 1000 + 60) == []  # grace: window end + 1 s
    (event,) = agg.due(BASE_MS / 1000 + 61)
    assert event.meter_token == TOKEN
    assert event.customer_external_id == "c1"
    assert event.quantity == Decimal("20.75")
    assert event.timestamp == iso(BASE_MS + 59_999)
    assert event.idempotency_key.startswith("agg_")
    assert len(event.idempotency_key) == 36
    assert event.metadata is None
    s = agg.stats
    assert (s.folded, s.emitted, s.open, s.late, s.bypassed) == (12, 1, 0, 0, 0)
    assert s.reduction_ratio == 12.0
    assert agg.due(BASE_MS / 1000 + 1000) == []
    assert agg.drain() == []


def test_float_epoch_timestamps_truncate_like_usage_event() -> None:
    agg, clock = make("SUM")
    clock.t += 120
    for t in (1790000043.988, 1790000040.123, 1790000099.9999):
        agg.add(TOKEN, "c", 1, timestamp=t)
        (e,) = agg.drain()
        assert e.timestamp == UsageEvent.create(TOKEN, "c", timestamp=t).timestamp


def test_naive_datetime_is_utc() -> None:
    agg, _ = make("SUM")
    naive = datetime(2026, 9, 21, 12, 0, 30, 123456)
    assert agg.add(TOKEN, "c", 1, timestamp=naive)
    assert agg.add(TOKEN, "c", 1, timestamp=naive.replace(tzinfo=UTC))
    (e,) = agg.drain()
    assert e.quantity == 2
    assert e.timestamp == "2026-09-21T12:00:30.123Z"


def test_float_sums_are_exact_decimals() -> None:
    agg, _ = make("SUM")
    for _ in range(1000):
        agg.add(TOKEN, "c", 0.1, timestamp=BASE_MS / 1000)
    for _ in range(3):
        agg.add(TOKEN, "d", 0.1, timestamp=BASE_MS / 1000)
    by_customer = {e.customer_external_id: e.quantity for e in agg.drain()}
    assert by_customer["c"] == 100
    assert type(by_customer["c"]) is int
    assert by_customer["d"] == Decimal("0.3")
    assert sum([0.1] * 3) != 0.3  # what float sums would have sent


def test_int_sums_stay_int() -> None:
    agg, _ = make("SUM")
    for q in (1, 2, 3):
        agg.add(TOKEN, "c", q, timestamp=BASE_MS / 1000)
    (e,) = agg.drain()
    assert e.quantity == 6
    assert type(e.quantity) is int


def test_max_keeps_the_largest_as_given() -> None:
    agg, _ = make("MAX")
    for q in (3, 7.5, Decimal("7.25"), 1):
        agg.add(TOKEN, "c", q, timestamp=BASE_MS / 1000)
    (e,) = agg.drain()
    assert e.quantity == 7.5
    assert type(e.quantity) is float


def test_last_keeps_the_latest_timestamp_not_the_latest_call() -> None:
    agg, _ = make("LAST")
    agg.add(TOKEN, "c", 5, timestamp=(BASE_MS + 30_000) / 1000)
    agg.add(TOKEN, "c", 9, timestamp=(BASE_MS + 10_000) / 1000)  # older, arrives later
    agg.add(TOKEN, "c", 4, timestamp=(BASE_MS + 20_000) / 1000)
    (e,) = agg.drain()
    assert e.quantity == 5
    assert e.timestamp == iso(BASE_MS + 30_000)
    agg.add(TOKEN, "c", 1, timestamp=BASE_MS / 1000)
    agg.add(TOKEN, "c", 2, timestamp=BASE_MS / 1000)  # a tie: the later add wins
    (e,) = agg.drain()
    assert e.quantity == 2


def test_unique_count_sends_one_event_per_user_and_metadata() -> None:
    agg, _ = make("UNIQUE_COUNT", 300)
    t = BASE_MS / 1000
    for user in ("u1", "u2", "u1", "u1", "u2"):
        assert agg.add(TOKEN, "c", 1, timestamp=t, metadata={"user_id": user})
    assert agg.add(TOKEN, "c", 1, timestamp=t, metadata={"user_id": "u1", "plan": "pro"})
    assert not agg.add(TOKEN, "c", 1, timestamp=t, metadata={"plan": "pro"})  # no user_id
    assert not agg.add(TOKEN, "c", 1, timestamp=t)
    for bad in (None, "", True, 1.5, ["u1"]):
        assert not agg.add(TOKEN, "c", 1, timestamp=t, metadata={"user_id": bad})
    assert agg.add(TOKEN, "c", 1, timestamp=t, metadata={"user_id": 7})
    assert agg.add(TOKEN, "c", 1, timestamp=t, metadata={"user_id": "7"})  # not the same user
    events = agg.drain()
    users = sorted(json.dumps((e.metadata or {}).get("user_id")) for e in events)
    assert users == ['"7"', '"u1"', '"u1"', '"u2"', "7"]
    assert {e.quantity for e in events} == {1}
    assert agg.stats.bypassed == 7


def test_metadata_splits_aggregates_and_is_copied() -> None:
    agg, _ = make("SUM")
    t = BASE_MS / 1000
    meta: dict[str, Any] = {"region": "eu", "tags": ["a"]}
    agg.add(TOKEN, "c", 1, timestamp=t, metadata=meta)
    agg.add(TOKEN, "c", 1, timestamp=t, metadata={"tags": ["a"], "region": "eu"})  # same
    meta["tags"].append("mutated")
    agg.add(TOKEN, "c", 1, timestamp=t, metadata={"region": "us"})
    agg.add(TOKEN, "c", 1, timestamp=t, metadata={"n": 1})
    agg.add(TOKEN, "c", 1, timestamp=t, metadata={"n": 1.0})  # not merged with {"n": 1}
    agg.add(TOKEN, "c", 1, timestamp=t)
    agg.add(TOKEN, "c", 1, timestamp=t, metadata={})  # empty metadata is no metadata
    got = sorted((dict(e.metadata or {}).__repr__(), e.quantity) for e in agg.drain())
    assert got == sorted(
        [
            (repr({"region": "eu", "tags": ["a"]}), 2),
            (repr({"region": "us"}), 1),
            (repr({"n": 1}), 1),
            (repr({"n": 1.0}), 1),
            (repr({}), 2),
        ]
    )


def test_fields_of_a_validated_usage_event_fold() -> None:
    """The client may validate with UsageEvent.create() first and fold the event's fields."""
    agg, clock = make("SUM")
    clock.t += 30
    for _ in range(3):
        ev = UsageEvent.create(
            TOKEN, "c", 0.1, timestamp=iso(BASE_MS + 5), metadata={"r": "eu", "n": [1, {"x": 2}]}
        )
        assert agg.add(
            ev.meter_token,
            ev.customer_external_id,
            ev.quantity,
            timestamp=ev.timestamp,
            metadata=ev.metadata,
        )
    (e,) = agg.drain()
    assert e.quantity == Decimal("0.3")
    assert dict(e.metadata or {}) == {"r": "eu", "n": [1, {"x": 2}]}


def test_customers_and_meters_are_separate() -> None:
    clock = FakeClock(BASE_MS / 1000)
    agg = WindowAggregator(
        {"a": AggregationSpec("SUM", 60), "b": AggregationSpec("SUM", 60)}, clock=clock
    )
    for meter in ("a", "b"):
        for customer in ("x", "y"):
            agg.add(meter, customer, 1)
            agg.add(meter, customer, 1)
    assert not agg.add("not-aggregated", "x", 1)
    assert agg.aggregates("a")
    assert not agg.aggregates("not-aggregated")
    events = agg.drain()
    assert sorted((e.meter_token, e.customer_external_id, e.quantity) for e in events) == [
        ("a", "x", 2),
        ("a", "y", 2),
        ("b", "x", 2),
        ("b", "y", 2),
    ]
    assert agg.stats.bypassed == 0  # a meter that is not aggregated is not a bypass


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quantity": 0},
        {"quantity": -1},
        {"quantity": float("nan")},
        {"quantity": float("inf")},
        {"quantity": Decimal("NaN")},
        {"quantity": True},
        {"quantity": "1"},
        {"quantity": 10**40},
        {"customer": ""},
        {"customer": "bad\ncustomer"},
        {"customer": 42},
        {"customer": "x" * 1000},
        {"timestamp": "yesterday"},
        {"timestamp": object()},
        {"metadata": {"x": object()}},
        {"metadata": {1: "non-str key"}},
        {"metadata": {"big": "x" * 10_000}},
        {"metadata": ["not", "a", "mapping"]},
        {"idempotency_key": "caller-key"},
        {"timestamp": (BASE_MS + 3_600_000) / 1000},  # far future
    ],
)
def test_refused_usages_go_single(kwargs: dict[str, Any]) -> None:
    agg, _ = make("SUM")
    args: dict[str, Any] = {"quantity": 1, "customer": "c", "timestamp": BASE_MS / 1000}
    args.update(kwargs)
    customer = args.pop("customer")
    quantity = args.pop("quantity")
    assert agg.add(TOKEN, customer, quantity, **args) is False
    assert agg.stats.bypassed == 1
    assert agg.stats.folded == 0
    assert agg.drain() == []


def test_timestamp_defaults_to_the_clock_and_near_future_is_accepted() -> None:
    agg, clock = make("SUM")
    clock.t = BASE_MS / 1000 + 50.25
    assert agg.add(TOKEN, "c", 1)
    assert agg.add(TOKEN, "c", 1, timestamp=clock.t + 30)  # within one window ahead
    events = agg.drain()
    assert sorted(e.timestamp for e in events) == [iso(BASE_MS + 50_250), iso(BASE_MS + 80_250)]


def test_max_open_bounds_memory() -> None:
    agg, _ = make("SUM", max_open=3)
    for c in ("a", "b", "c"):
        assert agg.add(TOKEN, c, 1, timestamp=BASE_MS / 1000)
    assert not agg.add(TOKEN, "d", 1, timestamp=BASE_MS / 1000)
    assert agg.add(TOKEN, "a", 1, timestamp=BASE_MS / 1000)  # an open one still folds
    assert agg.stats.open == 3
    assert agg.stats.bypassed == 1
    agg.drain()
    assert agg.add(TOKEN, "d", 1, timestamp=BASE_MS / 1000)


def test_windows_align_to_wall_clock_and_timestamps_stay_inside() -> None:
    agg, clock = make("SUM", 7)
    clock.t += 60
    # 7 s windows from the epoch: [k*7000, (k+1)*7000)
    ts = [BASE_MS + d for d in range(0, 30_000, 997)]
    for t in ts:
        agg.add(TOKEN, "c", 1, timestamp=iso(t))
    events = agg.drain()
    starts = {t - t % 7000 for t in ts}
    assert len(events) == len(starts)
    for e in events:
        ms = event_ms(e)
        start = ms - ms % 7000
        assert e.quantity == sum(1 for t in ts if start <= t < start + 7000)
        assert ms == max(t for t in ts if start <= t < start + 7000)


def test_due_emits_only_closed_windows_oldest_first() -> None:
    agg, clock = make("SUM", 60)
    clock.t = (BASE_MS + 2 * 60_000 + 10) / 1000
    for minute in (2, 0, 1):
        agg.add(TOKEN, "c", minute + 1, timestamp=(BASE_MS + minute * 60_000 + 5) / 1000)
    clock.t = (BASE_MS + 2 * 60_000 + 999) / 1000  # 1 s grace: minute 1 not yet due
    assert [e.quantity for e in agg.due()] == [1]
    clock.t = (BASE_MS + 2 * 60_000 + 1000) / 1000
    assert [e.quantity for e in agg.due()] == [2]
    assert agg.stats.open == 1
    assert [e.quantity for e in agg.due(clock.t + 60)] == [3]


def test_late_usage_opens_a_new_aggregate_and_never_changes_an_emitted_one() -> None:
    agg, _clock = make("SUM", 60)
    t = (BASE_MS + 10_000) / 1000
    agg.add(TOKEN, "c", 1, timestamp=t)
    agg.add(TOKEN, "c", 1, timestamp=t)
    (first,) = agg.due(BASE_MS / 1000 + 120)
    agg.add(TOKEN, "c", 5, timestamp=t + 1)  # late: its window was emitted
    (late,) = agg.due(BASE_MS / 1000 + 121)
    assert first.quantity == 2
    assert late.quantity == 5
    assert first.idempotency_key != late.idempotency_key
    assert event_ms(late) - event_ms(late) % 60_000 == BASE_MS
    assert agg.stats.late == 1
    assert agg.stats.emitted == 2


def test_late_after_drain_counts_as_late() -> None:
    agg, _ = make("SUM", 60)
    agg.add(TOKEN, "c", 1, timestamp=BASE_MS / 1000)
    (a,) = agg.drain()
    agg.add(TOKEN, "c", 1, timestamp=BASE_MS / 1000)
    (b,) = agg.drain()
    assert a.idempotency_key != b.idempotency_key
    assert agg.stats.late == 1


def run_fixed_script(instance_id: str | None) -> list[str]:
    agg, clock = make("SUM", 60, instance_id=instance_id)
    rnd = random.Random(7)
    keys: list[str] = []
    for i in range(500):
        clock.t = (BASE_MS + i * 600) / 1000
        agg.add(
            TOKEN,
            f"c{rnd.randrange(5)}",
            rnd.randrange(1, 9),
            timestamp=(BASE_MS + rnd.randrange(0, 300_000)) / 1000,
            metadata={"r": rnd.choice("ab")},
        )
        if i % 50 == 0:
            keys += [e.idempotency_key for e in agg.due()]
    keys += [e.idempotency_key for e in agg.drain()]
    return keys


def test_keys_are_deterministic_unique_and_instance_scoped() -> None:
    a1 = run_fixed_script("host-1:pid-1")
    a2 = run_fixed_script("host-1:pid-1")
    b = run_fixed_script("host-2:pid-9")
    assert a1 == a2  # same inputs, same keys: a retried flush re-sends the same key
    assert len(set(a1)) == len(a1)  # no two aggregates share a key
    assert not set(a1) & set(b)  # two processes never collide
    r1, r2 = run_fixed_script(None), run_fixed_script(None)
    assert not set(r1) & set(r2)  # the default instance id is random per aggregator


def test_emitted_event_is_frozen() -> None:
    agg, _ = make("SUM")
    agg.add(TOKEN, "c", 1, timestamp=BASE_MS / 1000)
    (e,) = agg.drain()
    with pytest.raises(AttributeError):
        e.quantity = 2  # type: ignore[misc]
    assert UsageEvent.from_dict(e.to_dict()) == e  # failure log / replay keeps the key


def test_reset_after_fork_gives_a_new_instance_and_empty_state() -> None:
    agg, _ = make("SUM", instance_id="parent")
    agg.add(TOKEN, "c", 1, timestamp=BASE_MS / 1000)
    agg._lock.acquire()  # as if a parent thread held the lock at fork time
    agg.reset_after_fork()
    assert agg.instance_id != "parent"
    assert agg.stats.open == 0
    assert agg.stats.folded == 0
    assert agg.add(TOKEN, "c", 1, timestamp=BASE_MS / 1000)
    (e,) = agg.drain()
    assert e.quantity == 1


def test_sums_stay_within_the_valid_quantity_range() -> None:
    agg, _ = make("SUM")
    big = 10**29
    folded = [agg.add(TOKEN, "c", big, timestamp=BASE_MS / 1000) for _ in range(12)]
    assert folded == [True] * 10 + [False] * 2  # the 11th would pass 1e30: it goes singly
    assert not agg.add(TOKEN, "c", 10**31, timestamp=BASE_MS / 1000)  # into an open aggregate
    assert not agg.add(TOKEN, "c", Decimal("Infinity"), timestamp=BASE_MS / 1000)
    (e,) = agg.drain()
    assert e.quantity == 10**30
    assert agg.stats.bypassed == 4


def test_a_broken_aggregate_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fluxrate_web.core import aggregation

    agg, _ = make("SUM")
    for customer in ("bad", "ok"):
        for _ in range(20):
            agg.add(TOKEN, customer, 1, timestamp=BASE_MS / 1000)
    real_key = aggregation.aggregate_key

    def key(meter: str, customer: str, *rest: Any) -> str:
        if customer == "bad":
            raise RuntimeError("boom")
        return real_key(meter, customer, *rest)

    monkeypatch.setattr(aggregation, "aggregate_key", key)
    with caplog.at_level("ERROR", logger="fluxrate_web"):
        events = agg.drain()
    assert [e.customer_external_id for e in events] == ["ok"]
    assert agg.stats.failed == 1
    assert agg.stats.open == 0
    assert "20 usages" in caplog.text


def test_eight_threads_fold_exactly() -> None:
    clock = FakeClock(BASE_MS / 1000)
    lock = threading.Lock()
    agg = WindowAggregator(
        {TOKEN: AggregationSpec("SUM", 1), "m": AggregationSpec("MAX", 1)},
        clock=clock,
        grace_seconds=0,
    )
    n_threads, per_thread = 8, 4000
    emitted: list[UsageEvent] = []
    stop = threading.Event()
    barrier = threading.Barrier(n_threads + 1)

    def producer(k: int) -> None:
        rnd = random.Random(k)
        barrier.wait()
        for i in range(per_thread):
            with lock:
                now = clock.t
            assert agg.add(TOKEN, f"c{rnd.randrange(10)}", 1 + i % 3, timestamp=now)
            assert agg.add("m", f"c{rnd.randrange(10)}", rnd.randrange(1, 100), timestamp=now)

    def ticker() -> None:
        barrier.wait()
        while not stop.is_set():
            with lock:
                clock.t += 0.05
            emitted.extend(agg.due())

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(n_threads)]
    tick = threading.Thread(target=ticker)
    for th in [*threads, tick]:
        th.start()
    for th in threads:
        th.join()
    stop.set()
    tick.join()
    emitted.extend(agg.drain())
    sums = [e for e in emitted if e.meter_token == TOKEN]
    assert sum(e.quantity for e in sums) == n_threads * sum(1 + i % 3 for i in range(per_thread))
    s = agg.stats
    assert s.folded == 2 * n_threads * per_thread
    assert s.open == 0
    assert s.bypassed == 0
    assert s.emitted == len(emitted)
    assert len({e.idempotency_key for e in emitted}) == len(emitted)
    assert s.emitted < s.folded


# ------------------------------------------------------------------------------- properties

WINDOWS_S = (1, 7, 60)


def usages_strategy(kind: str) -> st.SearchStrategy[tuple[int, int, list[Usage], list[Any]]]:
    quantities: st.SearchStrategy[Any] = st.one_of(
        st.integers(1, 10**6),
        st.floats(0.001, 1e6, allow_nan=False, allow_infinity=False),
        st.sampled_from([0.1, 0.2, 0.3, 1e-3, 123.456]),
        st.decimals(Decimal("0.001"), Decimal("1e6"), places=3),
    ).filter(lambda q: q > 0)

    @st.composite
    def build(draw: st.DrawFn) -> tuple[int, int, list[Usage], list[Any]]:
        window_s = draw(st.sampled_from(WINDOWS_S))
        span = window_s * 1000 * draw(st.integers(1, 5))
        n = draw(st.integers(1, 80))
        if kind == "LAST":  # distinct timestamps: the server's tie-break is undocumented
            times = draw(st.lists(st.integers(0, span), min_size=n, max_size=n, unique=True))
        else:
            times = draw(st.lists(st.integers(0, span), min_size=n, max_size=n))
        usages = []
        for t in times:
            customer = draw(st.sampled_from(["c1", "c2", "c3", "ü-4"]))
            q = draw(quantities)
            region = draw(st.sampled_from([None, "eu", "us"]))
            meta: dict[str, Any] | None = None if region is None else {"region": region}
            if kind == "UNIQUE_COUNT":
                meta = {**(meta or {}), "user_id": draw(st.sampled_from(["u1", "u2", "4", 4]))}
            usages.append(Usage(customer, q, BASE_MS + t, meta))
        # Arrival: a random order, with due() ticks (the worker) at clock times that move on.
        actions = draw(st.permutations(range(n)))
        ticks = draw(st.lists(st.integers(0, n), max_size=6))
        return window_s, span, usages, [("add", i) for i in actions] + [("tick", t) for t in ticks]

    return build()


@pytest.mark.parametrize("kind", TYPES)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_aggregation_bills_exactly_what_raw_usages_bill(kind: str, data: st.DataObject) -> None:
    window_s, span, usages, script = data.draw(usages_strategy(kind))
    clock = FakeClock(BASE_MS / 1000)
    agg = WindowAggregator({TOKEN: AggregationSpec(kind, window_s)}, clock=clock)  # type: ignore[arg-type]
    adds = [a for a in script if a[0] == "add"]
    tick_at = sorted(t for kind_, t in script if kind_ == "tick")
    sent: list[UsageEvent] = []
    for step, (_, i) in enumerate(adds):
        while tick_at and tick_at[0] <= step:
            tick_at.pop(0)
            clock.t += data.draw(st.integers(0, span), label="advance") / 1000
            sent += agg.due()
        u = usages[i]
        # the app tracks "now" mostly, sometimes a usage from the past (late) or near future
        ts = iso(u.ts_ms)
        if not agg.add(TOKEN, u.customer, u.quantity, timestamp=ts, metadata=u.metadata):
            sent.append(single(u))
    sent += agg.due(clock.t + 10 * window_s)
    sent += agg.drain()

    s = agg.stats
    event(f"late aggregates: {bool(s.late)}, bypassed usages: {bool(s.bypassed)}")
    assert s.folded + s.bypassed == len(usages)
    assert s.open == 0
    assert s.failed == 0
    assert len({e.idempotency_key for e in sent}) == len(sent)
    for period_windows in (1, 2, 5):  # billing periods made of whole windows
        period_ms = window_s * 1000 * period_windows
        assert bill_events(kind, sent, period_ms) == bill_usages(kind, usages, period_ms)
    assert bill_events(kind, sent, 10**15) == bill_usages(kind, usages, 10**15)  # all time
    # an aggregate never leaves its window
    for e in sent:
        assert event_ms(e) // (window_s * 1000) in {u.ts_ms // (window_s * 1000) for u in usages}
