"""Pre-aggregation against the devserver: the bill is the same with and without it.

Each example sends random usages twice through a real FluxrateClient over loopback HTTP: once
one event per usage, once folded by WindowAggregator (with worker ticks, late usages and
refused usages going singly), resetting the server in between, and compares the devserver's
per-customer billable totals, over all time and window by window.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxrate_web.core.aggregation import AggregationSpec, WindowAggregator
from fluxrate_web.core.client import FluxrateClient
from fluxrate_web.core.events import UsageEvent
from fluxrate_web.devserver import DevServer

METERS = {"SUM": "api_calls", "MAX": "peak", "UNIQUE_COUNT": "seats", "LAST": "level"}
FAST_RETRIES: dict[str, Any] = {
    "max_attempts": 50,
    "backoff_base": 0.005,
    "backoff_max": 0.05,
    "request_timeout": 5.0,
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def iso(ms: int) -> str:
    dt = EPOCH + timedelta(milliseconds=ms)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


Usage = tuple[str, Any, int, dict[str, Any] | None]  # customer, quantity, ts_ms, metadata


def random_usages(
    rnd: random.Random, kind: str, n: int, start_ms: int, span_ms: int
) -> list[Usage]:
    out: list[Usage] = []
    times = rnd.sample(range(start_ms, start_ms + span_ms), n)  # distinct: LAST ties undocumented
    for ts in times:
        q: Any = rnd.choice(
            [
                rnd.randrange(1, 1000),
                round(rnd.uniform(0.001, 1000), rnd.randrange(0, 6)) or 0.5,
                0.1,
                Decimal(rnd.randrange(1, 10**6)) / 1000,
            ]
        )
        meta: dict[str, Any] | None = rnd.choice([None, {"region": "eu"}, {"region": "us"}])
        if kind == "UNIQUE_COUNT":
            meta = {**(meta or {}), "user_id": rnd.choice(["u1", "u2", "u3", "7", 7])}
        out.append((f"cust-{rnd.randrange(6)}", q, ts, meta))
    return out


def deliver(server: DevServer, events: list[UsageEvent], **client_kwargs: Any) -> FluxrateClient:
    client = FluxrateClient(server.api_key, server.url, **{**FAST_RETRIES, **client_kwargs})
    with client:
        for e in events:
            assert client.enqueue(e)
        assert client.flush(60)
    assert client.stats.failed == 0
    assert client.stats.delivered + client.stats.deduplicated == len(events)
    return client


def summaries(server: DevServer, periods: list[tuple[int, int]]) -> list[Any]:
    out: list[Any] = [server.summary()]
    for start, end in periods:
        query = urlencode({"org": "default", "start": iso(start), "end": iso(end)})
        out.append(server.request("GET", f"/_dev/summary?{query}"))
    return out


def aggregate(
    kind: str,
    token: str,
    usages: list[Usage],
    rnd: random.Random,
    window_s: int,
    now_ms: int,
    tick_rate: float = 0.1,
) -> tuple[list[UsageEvent], WindowAggregator]:
    """Fold usages as the client would: random arrival order, worker ticks, late usages."""
    clock = FakeClock(now_ms / 1000)
    agg = WindowAggregator({token: AggregationSpec(kind, window_s)}, clock=clock)  # type: ignore[arg-type]
    sent: list[UsageEvent] = []
    order = usages[:]
    rnd.shuffle(order)
    for customer, q, ts, meta in order:
        if rnd.random() < tick_rate:
            clock.t += rnd.uniform(0, window_s)
            sent += agg.due()
        if not agg.add(token, customer, q, timestamp=iso(ts), metadata=meta):
            sent.append(UsageEvent.create(token, customer, q, timestamp=iso(ts), metadata=meta))
    sent += agg.due()
    sent += agg.drain()
    return sent, agg


@pytest.fixture
def server(devserver: DevServer) -> Iterator[DevServer]:
    devserver.reset()
    yield devserver
    devserver.reset()


@pytest.mark.parametrize("kind", list(METERS))
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 60), window_s=st.sampled_from([1, 60]))
def test_devserver_bills_the_same_with_and_without_aggregation(
    server: DevServer, kind: str, seed: int, n: int, window_s: int
) -> None:
    rnd = random.Random(seed)
    token = server.meter_token(METERS[kind])
    window_ms = window_s * 1000
    now_ms = int(time.time() * 1000)
    first = now_ms - now_ms % window_ms - 3 * window_ms
    usages = random_usages(rnd, kind, n, first, 4 * window_ms)
    periods = [(first + i * window_ms, first + (i + 1) * window_ms) for i in range(4)]

    server.reset()
    raw_events = [
        UsageEvent.create(token, c, q, timestamp=iso(ts), metadata=m) for c, q, ts, m in usages
    ]
    deliver(server, raw_events)
    raw = summaries(server, periods)
    assert server.track_requests() == n

    server.reset()
    aggregates, agg = aggregate(kind, token, usages, rnd, window_s, first + 2 * window_ms)
    deliver(server, aggregates)
    folded = summaries(server, periods)
    assert server.track_requests() == len(aggregates) <= n

    assert folded == raw
    assert agg.stats.folded + agg.stats.bypassed == n


@pytest.mark.parametrize("kind", ["SUM", "UNIQUE_COUNT"])
def test_retried_flushes_under_faults_do_not_double_bill(server: DevServer, kind: str) -> None:
    rnd = random.Random(1234)
    token = server.meter_token(METERS[kind])
    now_ms = int(time.time() * 1000)
    first = now_ms - now_ms % 60_000 - 60_000
    usages = random_usages(rnd, kind, 600, first, 120_000)
    expected = {}
    for customer in {u[0] for u in usages}:
        mine = [u for u in usages if u[0] == customer]
        if kind == "SUM":
            expected[customer] = sum(
                (Decimal(repr(q)) if isinstance(q, float) else Decimal(q) for _, q, _, _ in mine),
                Decimal(0),
            )
        else:
            expected[customer] = Decimal(len({repr(m["user_id"]) for *_, m in mine if m}))

    aggregates, agg = aggregate(kind, token, usages, rnd, 60, first + 60_000, tick_rate=0)
    assert agg.stats.bypassed == 0
    # SUM: customers x regions x windows; UNIQUE_COUNT also x distinct users
    assert len(aggregates) <= 6 * 3 * 2 * (1 if kind == "SUM" else 5)

    # 30% of requests fail with 503, 20% are stored and then the connection drops (the client
    # never learns it worked): every retry carries the aggregate's key, so nothing bills twice.
    server.set_faults(error_rate=0.3, stored_drop_rate=0.2, seed=7)
    first_client = deliver(server, aggregates)
    assert first_client.stats.retried > 0
    # A whole flush retried (e.g. replayed from the failure log): all deduplicated.
    second_client = deliver(server, aggregates)
    server.clear_faults()
    assert second_client.stats.deduplicated == len(aggregates)

    stored = server.events(METERS[kind])
    assert len(stored) == len(aggregates)
    assert len({e["idempotency_key"] for e in stored}) == len(aggregates)
    got = {c: Decimal(str(v[METERS[kind]])) for c, v in server.summary().items() if v}
    assert got == expected
