"""The request path's shortcuts keep every guarantee of the slow path: events built the fast way
equal validated ones, keys stay unique (threads, forks), ids are still checked."""

from __future__ import annotations

import os
import re
import threading
import warnings
from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from fluxrate_web.core import events
from fluxrate_web.core.client import FluxrateClient, capture_events
from fluxrate_web.core.config import load_config
from fluxrate_web.core.errors import InvalidUsageError
from fluxrate_web.core.events import UsageEvent, new_idempotency_key, utc_timestamp
from fluxrate_web.core.metering import Metering, derive_idempotency_key
from fluxrate_web.devserver import DevServer
from fluxrate_web.testing import CapturingClient

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TOKEN = "0b8f6d6e-2c1a-4f5e-9a53-3f3c8d9e7a10"


def test_fast_built_event_is_a_plain_frozen_usage_event() -> None:
    for _ in range(3):  # the first call validates, the next ones take the cached-id path
        event = UsageEvent.create(TOKEN, "cust_42", 3)
        assert type(event) is UsageEvent
        same = UsageEvent(TOKEN, "cust_42", 3, event.timestamp, event.idempotency_key)
        assert event == same
        assert hash(event) == hash(same)
        assert repr(event) == repr(same)
        assert event.to_dict() == same.to_dict()
        assert TS.fullmatch(event.timestamp)
        assert re.fullmatch(r"[0-9a-f]{32}", event.idempotency_key)
        with pytest.raises(FrozenInstanceError):
            event.quantity = 5  # type: ignore[misc]
        assert not hasattr(event, "__dict__")


def test_cached_ids_still_refuse_bad_input() -> None:
    UsageEvent.create(TOKEN, "cust_42")  # cached now

    class Sub(str):
        pass

    event = UsageEvent.create(Sub(TOKEN), Sub("cust_42"))
    assert type(event.meter_token) is str
    assert type(event.customer_external_id) is str
    for bad, why in (("", "empty"), ("a\x00b", "control"), ("x" * 257, "longer"), (5, "string")):
        with pytest.raises(InvalidUsageError, match=why):
            UsageEvent.create(TOKEN, bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidUsageError, match=why):
            UsageEvent.create(bad, "cust_42")  # type: ignore[arg-type]
    for quantity in (0, -1, True, 10**31):
        with pytest.raises(InvalidUsageError):
            UsageEvent.create(TOKEN, "cust_42", quantity)


def test_id_cache_is_bounded() -> None:
    for i in range(events._VALID_IDS_MAX + 10):
        events.checked_id(f"c{i}", "customer_external_id")
    assert len(events._valid_ids) <= events._VALID_IDS_MAX


def test_keys_unique_across_threads() -> None:
    keys: list[list[str]] = [[] for _ in range(8)]

    def draw(out: list[str]) -> None:
        for _ in range(5000):
            out.append(new_idempotency_key())
            out.append(UsageEvent.create(TOKEN, "cust_42").idempotency_key)

    threads = [threading.Thread(target=draw, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [k for part in keys for k in part]
    assert len(set(flat)) == len(flat) == 80_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_forked_child_draws_other_keys() -> None:
    parent = {new_idempotency_key() for _ in range(3)}
    read, write = os.pipe()
    with warnings.catch_warnings():
        # 3.12+: "This process is multi-threaded, use of fork() may lead to deadlocks"
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            child = [UsageEvent.create(TOKEN, "c").idempotency_key for _ in range(3)]
            os.write(write, " ".join(child).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child_keys = set(f.read().split())
    os.waitpid(pid, 0)
    assert len(child_keys) == 3
    after = {new_idempotency_key() for _ in range(3)}
    prefixes = {k[:16] for k in child_keys}
    assert prefixes.isdisjoint({k[:16] for k in parent | after})


def test_timestamp_cache_follows_the_clock() -> None:
    assert utc_timestamp(0.9999) == "1970-01-01T00:00:00.999Z"
    assert utc_timestamp(1.0) == "1970-01-01T00:00:01.000Z"
    assert utc_timestamp(1.0015) == "1970-01-01T00:00:01.001Z"
    now = utc_timestamp()
    assert TS.fullmatch(now)
    assert now >= "2024"


# --------------------------------------------------------------------------- the trusted path


class View:
    native: object = "request"

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.asked: list[str] = []

    def header(self, name: str) -> str | None:
        self.asked.append(name)
        return self.headers.get(name.lower())

    def query(self, name: str) -> str | None:
        return None

    def state(self, name: str) -> object | None:
        return None

    def user(self) -> object | None:
        return None


SETTINGS: dict[str, Any] = {
    "meters": {"api_calls": TOKEN, "tokens": "650e8400-e29b-41d4-a716-446655440001"},
    "customer": "header:X-Customer-Id",
    "endpoints": [
        {"route": "/v1/items/*", "meter": "api_calls"},
        {
            "route": "/v1/multi",
            "meters": [
                {"meter": "api_calls", "quantity": 2.5, "metadata": {"plan": "pro", "n": 1}},
                {"meter": "tokens", "quantity": 7},
            ],
        },
    ],
}


def bill(metering: Metering, template: str, headers: dict[str, str], status: int = 200) -> int:
    scope = metering.open_scope()
    plan = metering.route(template, "GET", None)
    return metering.finish(plan, View(headers), scope, status=status)


def fields(event: UsageEvent) -> tuple[object, ...]:
    return (
        event.meter_token,
        event.customer_external_id,
        event.quantity,
        type(event.quantity),
        event.metadata,
        event.metadata_json,
        event.meter_id,
        event.customer_id,
    )


def test_trusted_path_builds_what_track_builds() -> None:
    class ThroughTrack(CapturingClient):  # a subclass: Metering calls its track()
        pass

    client = FluxrateClient("org_live_x", "http://127.0.0.1:9")
    metering = Metering(load_config(overrides=SETTINGS), client=client)
    reference = Metering(load_config(overrides=SETTINGS), client=ThroughTrack())
    capturing = Metering(load_config(overrides=SETTINGS), client=CapturingClient())
    assert metering._trusted is not None
    assert capturing._trusted is not None
    assert reference._trusted is None
    requests = [
        ("/v1/items/{id}", {"X-Customer-Id": "cust-1"}, 200),
        ("/v1/multi", {"X-Customer-Id": "cust-2"}, 201),
        ("/v1/items/{id}", {"X-Customer-Id": "cust-1"}, 404),  # not billed
        ("/v1/items/{id}", {}, 200),  # no customer
        ("/v1/items/{id}", {"X-Customer-Id": "bad\x85id"}, 200),  # invalid customer
        ("/v1/items/{id}", {"X-Customer-Id": "x" * 300}, 200),
        ("/v1/multi", {"X-Customer-Id": "cust-2", "Idempotency-Key": "abc"}, 200),
    ]
    with capture_events() as captured:
        sent = [bill(metering, t, h, s) for t, h, s in requests]
    assert metering.route("/v1/multi", "GET", None).prepared is not None
    expected = [bill(reference, t, h, s) for t, h, s in requests]
    assert [bill(capturing, t, h, s) for t, h, s in requests] == expected
    assert sent == expected == [1, 2, 0, 0, 0, 0, 2]
    ref_events = reference.client.events  # type: ignore[attr-defined]
    assert [fields(e) for e in captured] == [fields(e) for e in ref_events]
    assert [fields(e) for e in capturing.client.events] == [  # type: ignore[attr-defined]
        fields(e) for e in ref_events
    ]
    assert capturing.client.dropped == reference.client.dropped  # type: ignore[attr-defined]
    assert client.stats.dropped == reference.client.stats.dropped == 3  # type: ignore[attr-defined]
    assert all(type(e) is UsageEvent for e in captured)
    multi = captured[1]
    assert multi.metadata == {"plan": "pro", "n": 1}
    with pytest.raises(TypeError):
        multi.metadata["plan"] = "free"  # type: ignore[index]
    # the request's Idempotency-Key still derives the keys (the general path)
    assert captured[-2].idempotency_key == derive_idempotency_key("abc", TOKEN, "cust-2", 0)
    assert len({e.idempotency_key for e in captured}) == len(captured)
    client.close(0.1)


def test_a_subclass_that_overrides_track_sees_every_call() -> None:
    calls: list[tuple[object, ...]] = []

    class Instrumented(FluxrateClient):
        def track(self, *args: Any, **kwargs: Any) -> UsageEvent | None:
            calls.append(args)
            return super().track(*args, **kwargs)

    client = Instrumented("org_live_x", "http://127.0.0.1:9")
    metering = Metering(load_config(overrides=SETTINGS), client=client)
    assert metering._trusted is None
    with capture_events() as captured:
        assert bill(metering, "/v1/items/{id}", {"X-Customer-Id": "c"}) == 1
    assert len(calls) == len(captured) == 1
    # reassigning the client switches the path too
    plain = FluxrateClient("org_live_x", "http://127.0.0.1:9")
    metering.client = plain
    assert metering._trusted is not None
    assert metering.client is plain
    with capture_events() as captured:
        assert bill(metering, "/v1/items/{id}", {"X-Customer-Id": "c"}) == 1
    assert len(calls) == 1
    assert len(captured) == 1
    client.close(0.1)
    plain.close(0.1)


def test_a_meter_token_that_is_not_a_valid_id_goes_through_track() -> None:
    bad = "t" * 300  # config accepts it; the event would be refused
    metering = Metering(
        load_config(overrides={**SETTINGS, "meters": {"api_calls": bad, "tokens": TOKEN}}),
        client=FluxrateClient("org_live_x", "http://127.0.0.1:9"),
    )
    assert metering.route("/v1/items/{id}", "GET", None).prepared is None
    with capture_events() as captured:
        assert bill(metering, "/v1/items/{id}", {"X-Customer-Id": "c"}) == 0
    assert captured == []
    assert metering.client.stats.dropped == 1  # type: ignore[attr-defined]
    metering.close(0.1)


def test_trusted_path_folds_aggregated_meters_and_delivers(fluxrate_server: DevServer) -> None:
    token = fluxrate_server.meter_token("api_calls")
    settings = {
        "api_key": fluxrate_server.api_key,
        "base_url": fluxrate_server.url,
        "meters": {"api_calls": {"token": token, "aggregation": "SUM", "window": "1h"}},
        "customer": "header:X-Customer-Id",
        "default_meter": "api_calls",
    }
    metering = Metering.from_config(overrides=settings)
    try:
        assert metering._trusted is not None
        for i in range(30):
            assert bill(metering, "/v1/x", {"X-Customer-Id": f"agg-{i % 3}"}) == 1
        assert metering.flush(10)
        assert metering.client.stats.folded == 30  # type: ignore[attr-defined]
    finally:
        metering.close()
    assert fluxrate_server.summary() == {f"agg-{i}": {"api_calls": 10} for i in range(3)}
    assert fluxrate_server.track_requests() == 3


def test_trusted_path_delivers_single_events(fluxrate_server: DevServer) -> None:
    settings = {
        "api_key": fluxrate_server.api_key,
        "base_url": fluxrate_server.url,
        "meters": {"api_calls": fluxrate_server.meter_token("api_calls")},
        "customer": "header:X-Customer-Id",
        "default_meter": "api_calls",
    }
    metering = Metering.from_config(overrides=settings)
    try:
        for i in range(50):
            assert bill(metering, "/v1/x", {"X-Customer-Id": f"one-{i % 2}"}) == 1
        assert metering.flush(10)
        assert metering.client.stats.delivered == 50  # type: ignore[attr-defined]
    finally:
        metering.close()
    assert fluxrate_server.summary() == {"one-0": {"api_calls": 25}, "one-1": {"api_calls": 25}}
    keys = [e["idempotency_key"] for e in fluxrate_server.events()]
    assert len(set(keys)) == 50


def test_the_fallback_builders_build_the_same_events() -> None:
    # used where __class__ assignment between same-layout classes is refused
    slow = events._built_slowly(TOKEN, "c", 2, None, None, "2026-01-01T00:00:00.000Z", "k1")
    fast = events._built(TOKEN, "c", 2, None, None, "2026-01-01T00:00:00.000Z", "k1")
    assert type(slow) is type(fast) is UsageEvent
    assert slow == fast
    assert repr(slow) == repr(fast)
    one = events._trusted_event_slowly(TOKEN, "c", 2, None, None)
    two = events.trusted_event(TOKEN, "c", 2, None, None)
    assert fields(one) == fields(two)
    assert one.idempotency_key != two.idempotency_key
    with pytest.raises(InvalidUsageError, match="control"):
        events._trusted_event_slowly(TOKEN, "c\x00", 2, None, None)


def test_a_fork_the_hook_missed_reseeds_the_keys_on_the_trusted_paths() -> None:
    client = FluxrateClient("org_live_x", "http://127.0.0.1:9")
    capturing = Metering(load_config(overrides=SETTINGS), client=CapturingClient())
    assert capturing._trusted is not None
    with capture_events() as captured:
        assert client._track_trusted(TOKEN, "c", 1, None, None)
        events._key_pid = -1  # what a child sees after a fork that nobody told us about
        client._pid = -1
        assert client._track_trusted(TOKEN, "c", 1, None, None)
    first, second = captured
    assert first.idempotency_key[:16] != second.idempotency_key[:16]
    events._key_pid = -1
    capturing._trusted(TOKEN, "c", 1, None, None)
    third = capturing.client.events[-1]  # type: ignore[attr-defined]
    assert third.idempotency_key[:16] not in {k.idempotency_key[:16] for k in captured}
    client.close(0.1)
