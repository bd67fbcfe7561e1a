"""Bad input at run time (issue 12, item 4): ``track()`` and ``record()`` fed random values.

NaN, infinities, negative and huge numbers, booleans, strings, ``None``, unicode (control
characters, separators, lone surrogates), bytes, containers, objects whose every method raises,
and metadata of about 1 MB: each usage is either accepted, or dropped with exactly one WARNING
and one count in ``stats.dropped``; no exception ever reaches the caller (the request).
``record()`` goes through a real :class:`Metering` and a request-view stub, so the customer
resolver (a header holding any text) and the quantity parsing run too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxrate_web.core import FluxrateClient, UsageEvent, capture_events
from fluxrate_web.core._log import reset_limits
from fluxrate_web.core.aggregation import AggregationSpec
from fluxrate_web.core.config import load_config
from fluxrate_web.core.metering import Metering, record
from fluxrate_web.core.quantities import parse_number

METER = "550e8400-e29b-41d4-a716-446655440000"
AGG_METER = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
MEGABYTE = "x" * 1_000_000


class Exploding:
    """Every conversion, comparison and iteration raises (``repr`` aside)."""

    def _boom(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    def __repr__(self) -> str:  # (hypothesis prints falsifying examples with repr)
        return "<Exploding>"

    __str__ = __format__ = _boom
    __int__ = __float__ = __index__ = __bool__ = __len__ = __iter__ = _boom
    __eq__ = __lt__ = __gt__ = __le__ = __ge__ = _boom  # type: ignore[assignment]
    __hash__ = _boom  # type: ignore[assignment]
    __getitem__ = keys = items = _boom


class ExplodingMapping(dict[str, Any]):
    def __iter__(self) -> Any:
        raise RuntimeError("boom")

    def items(self) -> Any:
        raise RuntimeError("boom")


text_values = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x3000), max_size=300),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\nb",
            "\u2028",
            "\x85",
            "\ud800",
            "é" * 300,
            "nan",
            "inf",
            "-1",
            "1e400",
            "0",
            " 7 ",
            "1" * 5000,
            MEGABYTE,
        ]
    ),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=10**29, max_value=10**40),
    st.integers(max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.just(1e30),
    st.just(1e30 + 1e15),
)
anything = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    text_values,
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.builds(Exploding),
)
json_ish = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, text_values),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(), inner)),
    max_leaves=6,
)
metadata_values = st.one_of(
    st.none(),
    anything,
    st.dictionaries(st.text(max_size=10), json_ish, max_size=4),
    st.dictionaries(st.one_of(st.integers(), st.none()), st.integers(), min_size=1, max_size=2),
    st.just({"blob": MEGABYTE}),
    st.just({"user_id": "u1", "n": float("nan")}),
    st.just({"b": b"bytes", "o": object()}),
    st.builds(lambda: ExplodingMapping(a=1)),
)
meters = st.one_of(st.just(METER), st.just(AGG_METER), anything)
customers = st.one_of(st.just("cust_1"), anything)
quantities = st.one_of(st.just(1), st.just(2.5), st.just(Decimal("0.001")), anything)
timestamps = st.one_of(st.none(), st.just(1.7e9), st.just("2026-11-27T15:14:24.123Z"), anything)
keys = st.one_of(st.none(), st.just("key-1"), anything)


@contextmanager
def warnings_here() -> Iterator[list[logging.LogRecord]]:
    """WARNING records logged on this thread (the request's) under ``fluxrate_web``."""
    found: list[logging.LogRecord] = []
    me = threading.get_ident()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == me and record.levelno >= logging.WARNING:
                found.append(record)

    handler = Collect()
    log = logging.getLogger("fluxrate_web")
    log.addHandler(handler)
    try:
        yield found
    finally:
        log.removeHandler(handler)


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[FluxrateClient, FluxrateClient]]:
    """A plain client (events captured) and an aggregating one whose events go nowhere (no
    key: the worker writes them to the WARNING log, on its own thread)."""
    plain = FluxrateClient("org_live_bad_input", "http://127.0.0.1:9")
    agg = FluxrateClient(
        None,
        "http://127.0.0.1:9",
        aggregation={AGG_METER: AggregationSpec("SUM", 60)},
        max_queue_size=1_000_000,
    )
    yield plain, agg
    plain.close(0)
    agg.close(0)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(meter=meters, customer=customers, quantity=quantities, timestamp=timestamps, key=keys,
       metadata=metadata_values)  # fmt: skip
def test_track_accepts_or_drops_with_one_warning(
    clients: tuple[FluxrateClient, FluxrateClient],
    meter: Any,
    customer: Any,
    quantity: Any,
    timestamp: Any,
    key: Any,
    metadata: Any,
) -> None:
    plain, agg = clients
    for client, captured_mode in ((plain, True), (agg, False)):
        reset_limits()
        dropped = client.stats.dropped
        accepted_before = client.stats.enqueued + client.stats.folded
        # the plain client's events are captured; the aggregating one really folds/queues
        capturing = capture_events() if captured_mode else nullcontext([])
        with warnings_here() as warned, capturing as captured:
            result = client.track(
                meter, customer, quantity, timestamp=timestamp, idempotency_key=key,
                metadata=metadata,
            )  # fmt: skip
        if result is None:
            assert client.stats.dropped == dropped + 1
            assert len(warned) == 1, [r.getMessage()[:200] for r in warned]
            assert "dropped" in warned[0].getMessage()
            assert captured == []
        else:
            assert isinstance(result, UsageEvent)
            assert client.stats.dropped == dropped
            assert warned == []
            if captured_mode:
                assert captured == [result]
            else:
                assert client.stats.enqueued + client.stats.folded == accepted_before + 1


class View:
    """A request view whose customer header holds whatever the strategy gave."""

    native = object()

    def __init__(self, customer_header: str | None) -> None:
        self.customer_header = customer_header

    def header(self, name: str) -> str | None:
        return self.customer_header if name == "x-customer-id" else None

    def query(self, name: str) -> str | None:
        return None

    def state(self, name: str) -> object | None:
        return None

    def user(self) -> object | None:
        return None


@pytest.fixture(scope="module")
def metering(clients: tuple[FluxrateClient, FluxrateClient]) -> Metering:
    config = load_config(
        overrides={
            "customer": "header:X-Customer-Id",
            "meters": {"api": METER, "summed": {"token": AGG_METER, "aggregation": "SUM"}},
        }
    )
    return Metering(config, client=clients[0])


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    header=st.one_of(st.none(), st.just("cust_9"), text_values),
    meter=st.one_of(st.just("api"), st.just("summed"), st.just(METER), anything),
    quantity=quantities,
    metadata=metadata_values,
    customer=st.one_of(st.none(), st.just("other"), anything),
)
def test_record_accepts_or_drops_with_one_warning(
    metering: Metering,
    header: str | None,
    meter: Any,
    quantity: Any,
    metadata: Any,
    customer: Any,
) -> None:
    reset_limits()
    client = metering.client
    assert isinstance(client, FluxrateClient)
    dropped = client.stats.dropped
    plan = metering.route("/v1/things/{id}", "POST")
    with warnings_here() as warned, capture_events() as captured:
        scope = metering.open_scope()
        record(meter, quantity, metadata=metadata, customer=customer)  # inside the view
        sent = metering.finish(plan, View(header), scope, status=200)
    assert sent == len(captured)
    zero = parse_number(quantity) == 0 if not isinstance(quantity, Exploding) else False
    if captured:
        assert len(captured) == 1
        assert client.stats.dropped == dropped
        assert warned == []
    elif client.stats.dropped == dropped:
        # the one outcome that is neither: a zero quantity bills nothing, by design
        assert zero, (meter, quantity, customer, header)
        assert warned == []
    else:
        assert client.stats.dropped == dropped + 1
        assert len(warned) == 1, [r.getMessage()[:200] for r in warned]


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("boom")


def test_track_survives_values_whose_repr_raises(
    clients: tuple[FluxrateClient, FluxrateClient],
) -> None:
    plain, _ = clients
    dropped = plain.stats.dropped
    with capture_events() as captured:
        assert plain.track(METER, "c", BadRepr()) is None  # type: ignore[arg-type]
        assert plain.track(METER, BadRepr(), 1) is None  # type: ignore[arg-type]
        assert plain.track(METER, "c", 1, metadata={"x": BadRepr()}) is None
    assert captured == []
    assert plain.stats.dropped == dropped + 3


def test_record_with_a_quantity_whose_repr_raises_drops_only_that_usage(
    metering: Metering,
) -> None:
    client = metering.client
    assert isinstance(client, FluxrateClient)
    dropped = client.stats.dropped
    plan = metering.route("/v1/things/{id}", "POST")
    with capture_events() as captured:
        scope = metering.open_scope()
        record("api", 1)
        record("api", BadRepr())  # type: ignore[arg-type]
        record("api", 2)
        metering.finish(plan, View("cust_1"), scope, status=200)
    assert [e.quantity for e in captured] == [1, 2]
    assert client.stats.dropped == dropped + 1
