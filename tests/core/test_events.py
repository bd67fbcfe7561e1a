"""UsageEvent: validation at creation, fixed timestamp and key, wire and log forms."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluxrate_web.core.errors import InvalidUsageError
from fluxrate_web.core.events import (
    MAX_ID_LENGTH,
    MAX_METADATA_BYTES,
    UsageEvent,
    new_idempotency_key,
    utc_timestamp,
)
from fluxrate_web.core.transport import rest_body, track_body

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_create_fills_timestamp_and_key() -> None:
    event = UsageEvent.create("mt", "cust", 2)
    assert TS.fullmatch(event.timestamp)
    assert re.fullmatch(r"[0-9a-f]{32}", event.idempotency_key)
    assert event.quantity == 2
    assert event.metadata is None
    parsed = datetime.fromisoformat(event.timestamp)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 5


def test_keys_are_unique() -> None:
    keys = {new_idempotency_key() for _ in range(50_000)}
    assert len(keys) == 50_000


def test_events_are_immutable() -> None:
    event = UsageEvent.create("mt", "cust")
    with pytest.raises(AttributeError):
        event.quantity = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "quantity",
    [1, 2.5, Decimal("0.001"), 10**20, Fraction(3, 2)],
)
def test_good_quantities(quantity: object) -> None:
    event = UsageEvent.create("mt", "cust", quantity)  # type: ignore[arg-type]
    assert event.quantity > 0


@pytest.mark.parametrize(
    ("quantity", "why"),
    [
        (0, "> 0"),
        (-1, "> 0"),
        (-0.5, "> 0"),
        (True, "number"),
        (False, "number"),
        ("1", "number"),
        (b"1", "number"),
        (None, "number"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (Decimal("NaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        (10**31, "larger"),
        ([1], "number"),
    ],
)
def test_bad_quantities(quantity: object, why: str) -> None:
    with pytest.raises(InvalidUsageError, match=why):
        UsageEvent.create("mt", "cust", quantity)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("meter", "customer", "why"),
    [
        ("", "c", "meter_token: must not be empty"),
        ("m", "", "customer_external_id: must not be empty"),
        ("m\n", "c", "control"),
        ("m", "c\x00", "control"),
        ("m", "a\u2028b", "control"),
        ("x" * (MAX_ID_LENGTH + 1), "c", "longer"),
        (5, "c", "string"),
        ("m", None, "string"),
    ],
)
def test_bad_ids(meter: object, customer: object, why: str) -> None:
    with pytest.raises(InvalidUsageError, match=why):
        UsageEvent.create(meter, customer)  # type: ignore[arg-type]


def test_unicode_ids_are_fine() -> None:
    event = UsageEvent.create("mètre", "client-é 🙂")
    assert event.customer_external_id == "client-é 🙂"


def test_metadata_is_validated_and_frozen() -> None:
    meta = {"user_id": "u1", "n": [1, 2, {"x": None}]}
    event = UsageEvent.create("mt", "cust", metadata=meta)
    meta["user_id"] = "changed"
    assert event.metadata is not None
    assert event.metadata["user_id"] == "u1"
    assert json.loads(event.metadata_json or "") == {"user_id": "u1", "n": [1, 2, {"x": None}]}
    with pytest.raises(TypeError):
        event.metadata["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        ([("a", 1)], "mapping"),
        ({1: "a"}, "keys must be strings"),
        ({"a": object()}, "JSON"),
        ({"a": float("nan")}, "JSON"),
        ({"a": Decimal("1")}, "JSON"),
        ({"a": "x" * (MAX_METADATA_BYTES + 1)}, "larger"),
    ],
)
def test_bad_metadata(metadata: object, why: str) -> None:
    with pytest.raises(InvalidUsageError, match=why):
        UsageEvent.create("mt", "cust", metadata=metadata)  # type: ignore[arg-type]


def test_circular_metadata_is_refused() -> None:
    meta: dict[str, object] = {}
    meta["self"] = meta
    with pytest.raises(InvalidUsageError, match="JSON"):
        UsageEvent.create("mt", "cust", metadata=meta)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-01-31T12:00:00.123Z", "2026-01-31T12:00:00.123Z"),
        ("2026-01-31T12:00:00Z", "2026-01-31T12:00:00.000Z"),
        ("2026-01-31T14:00:00.5+02:00", "2026-01-31T12:00:00.500Z"),
        ("2026-01-31T12:00:00.123456", "2026-01-31T12:00:00.123Z"),
        (datetime(2026, 1, 31, 12, 0, 0, 999999, tzinfo=UTC), "2026-01-31T12:00:00.999Z"),
        (
            datetime(2026, 1, 31, 7, 0, tzinfo=timezone(timedelta(hours=-5))),
            "2026-01-31T12:00:00.000Z",
        ),
        (datetime(2026, 1, 31, 12, 0), "2026-01-31T12:00:00.000Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (1_800_000_000.25, "2027-01-15T08:00:00.250Z"),
    ],
)
def test_timestamps_are_normalised(given: object, expected: str) -> None:
    event = UsageEvent.create("mt", "cust", timestamp=given)  # type: ignore[arg-type]
    assert event.timestamp == expected


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01T00:00:00.000Z", "", [], -1, math.nan])
def test_bad_timestamps(bad: object) -> None:
    with pytest.raises(InvalidUsageError, match="timestamp"):
        UsageEvent.create("mt", "cust", timestamp=bad)  # type: ignore[arg-type]


def test_direct_construction_validates_too() -> None:
    with pytest.raises(InvalidUsageError):
        UsageEvent("mt", "cust", 0, "2026-01-01T00:00:00.000Z", "k")
    with pytest.raises(InvalidUsageError, match="idempotency_key"):
        UsageEvent("mt", "cust", 1, "2026-01-01T00:00:00.000Z", "")
    event = UsageEvent("mt", "cust", 1, "2026-01-01T01:00:00+01:00", "k")
    assert event.timestamp == "2026-01-01T00:00:00.000Z"


def test_rest_events() -> None:
    event = UsageEvent.rest("meter-uuid", "customer-uuid", 3)
    assert event.is_rest
    assert event.meter_token == ""
    with pytest.raises(InvalidUsageError, match="go together"):
        UsageEvent.create("mt", "c", meter_id="m")
    body = json.loads(rest_body(event))
    assert body["meter_id"] == "meter-uuid"
    assert body["customer_id"] == "customer-uuid"
    assert body["quantity"] == 3
    assert body["idempotency_key"] == event.idempotency_key


def test_dict_round_trip_keeps_everything() -> None:
    event = UsageEvent.create(
        "mt", "cust", Decimal("1.50"), idempotency_key="key-1", metadata={"user_id": "u"}
    )
    data = json.loads(json.dumps(event.to_dict()))
    assert data["quantity"] == "1.50"
    again = UsageEvent.from_dict(data)
    assert again == event
    assert again.quantity == Decimal("1.50")
    rest = UsageEvent.rest("m", "c", 2)
    assert UsageEvent.from_dict(json.loads(json.dumps(rest.to_dict()))) == rest
    with pytest.raises(InvalidUsageError, match="idempotency_key"):
        UsageEvent.from_dict(
            {
                "meter_token": "m",
                "customer_external_id": "c",
                "quantity": 1,
                "timestamp": "2026-01-01T00:00:00.000Z",
            }
        )


def test_track_body_is_the_payload_as_json() -> None:
    event = UsageEvent.create(
        'mt"x', "cüst", 2.5, metadata={"user_id": "ü", "n": 1}, idempotency_key="k"
    )
    body = track_body(event)
    assert json.loads(body) == {**event.to_payload(), "metadata": {"user_id": "ü", "n": 1}}
    decimal_event = UsageEvent.create("mt", "c", Decimal("0.000001"))
    assert json.loads(track_body(decimal_event), parse_float=Decimal)["quantity"] == Decimal(
        "0.000001"
    )
    big = UsageEvent.create("mt", "c", 1e20)
    assert json.loads(track_body(big))["quantity"] == 1e20


def test_utc_timestamp_format() -> None:
    assert utc_timestamp(0.9999) == "1970-01-01T00:00:00.999Z"
    assert utc_timestamp(86400.001) == "1970-01-02T00:00:00.001Z"


@given(
    quantity=st.one_of(
        st.integers(min_value=1, max_value=10**18),
        st.floats(min_value=1e-9, max_value=1e18, allow_nan=False),
        st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("1e18"), places=6),
    ),
    customer=st.text(min_size=1, max_size=40).filter(
        lambda s: not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", s)
    ),
    metadata=st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8))),
)
def test_any_valid_event_encodes_to_json_and_back(
    quantity: int | float | Decimal, customer: str, metadata: dict[str, object]
) -> None:
    if quantity <= 0:
        return
    event = UsageEvent.create("mt", customer, quantity, metadata=metadata)
    body = json.loads(track_body(event), parse_float=Decimal)
    assert body["customer_external_id"] == customer
    assert Decimal(str(body["quantity"])) == Decimal(str(quantity))
    assert body.get("metadata", {}) == metadata
    assert UsageEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event


@pytest.mark.parametrize(
    "kwargs",
    [
        {"customer_external_id": "cust\udc80"},
        {"meter_token": "\ud800meter"},
        {"idempotency_key": "key\udfff"},
        {"metadata": {"note": "x\ud800"}},
        {"metadata": {"\udc80": 1}},
    ],
)
def test_lone_surrogates_are_refused(kwargs: dict[str, object]) -> None:
    # No UTF-8 form: such an event could be neither sent nor written to the failure log.
    args: dict[str, object] = {"meter_token": "mt", "customer_external_id": "cust"} | kwargs
    with pytest.raises(InvalidUsageError, match="surrogate"):
        UsageEvent.create(**args)  # type: ignore[arg-type]
