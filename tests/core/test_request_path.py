"""The request path's shortcuts keep every guarantee of the slow path: events built the fast way
equal validated ones, keys stay unique (threads, forks), ids are still checked."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import FrozenInstanceError

import pytest

from fluxrate_web.core import events
from fluxrate_web.core.errors import InvalidUsageError
from fluxrate_web.core.events import UsageEvent, new_idempotency_key, utc_timestamp

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
