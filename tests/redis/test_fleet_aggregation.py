"""Fleet-wide pre-aggregation with ``transport: redis``: the per-process aggregates of every app
process are merged in Redis, idempotently, and a relay sends ONE event per
(meter, customer, metadata, window) with a key derived from the group alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from _redishelpers import REPO, RelayThread, wait_until, write_config

from fluxrate_web.core.aggregation import AggregationSpec, _epoch_ms, _iso
from fluxrate_web.core.client import FluxrateClient
from fluxrate_web.core.config import load_config
from fluxrate_web.core.events import UsageEvent
from fluxrate_web.core.redis_transport import fleet_key, merge_contributions
from fluxrate_web.devserver import DevServer

STREAM = "fluxrate:events"
FAST = {"backoff_base": 0.005, "backoff_max": 0.05}

APP = textwrap.dedent(
    """
    import json, random, sys, time
    from fluxrate_web.core.client import FluxrateClient
    from fluxrate_web.core.config import load_config

    config = load_config(sys.argv[1])
    n, customers, seed = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    client = FluxrateClient(**{**config.client_kwargs(), "max_in_flight": 128})
    token = config.meters["api_calls"].token
    rng = random.Random(seed)
    totals = {}
    deadline = time.monotonic() + 1.5          # spread over a few one-second windows
    for i in range(n):
        customer = f"cust_{rng.randrange(customers)}"
        quantity = rng.randint(1, 5)
        assert client.track(token, customer, quantity) is not None
        totals[customer] = totals.get(customer, 0) + quantity
        if i % 200 == 0:
            time.sleep(max(0.0, (deadline - time.monotonic()) * 200 / max(1, n - i)))
    client.close(10)
    print(json.dumps({"totals": totals, "stats": client.stats.as_dict()}))
    """
)


def aggregated_config(tmp_path: Path, server: DevServer, redis_url: str) -> Path:
    meters = {"api_calls": {"token": server.meter_token("api_calls"), "aggregation": "SUM",
                            "window": "1s"}}  # fmt: skip
    return write_config(tmp_path / "fluxrate.yaml", server, redis_url, meters=meters)


def test_four_processes_fifty_customers_one_aggregate_per_customer_and_window(
    redis_url: str, redis_client: Any, tmp_path: Path, fluxrate_server: DevServer
) -> None:
    config_path = aggregated_config(tmp_path, fluxrate_server, redis_url)
    script = tmp_path / "app.py"
    script.write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with RelayThread(load_config(config_path), consumer="r", aggregation_grace=3.0) as relay:
        apps = [
            subprocess.Popen([sys.executable, str(script), str(config_path), "4000", "50",
                              str(seed)], stdout=subprocess.PIPE, text=True, env=env)
            for seed in range(4)
        ]  # fmt: skip
        outputs = [json.loads(p.communicate(timeout=60)[0]) for p in apps]
        expected: Counter[str] = Counter()
        for out in outputs:
            expected.update(out["totals"])
            assert out["stats"]["failed"] == 0
        wait_until(lambda: not redis_client.zcard(f"{STREAM}:agg:open"), timeout=30)
        wait_until(
            lambda: (
                sum(float(e["quantity"]) for e in fluxrate_server.events())
                == sum(expected.values())
            ),
            timeout=30,
        )
    events = fluxrate_server.events()
    summary = fluxrate_server.summary()
    assert {c: int(v["api_calls"]) for c, v in summary.items()} == dict(expected)
    # at most one event per (customer, window): the four processes' aggregates were merged
    per_window = Counter((e["customer_external_id"], _epoch_ms(e["timestamp"]) // 1000)
                         for e in events)  # fmt: skip
    assert max(per_window.values()) == 1
    assert all(e["idempotency_key"].startswith("agg_") for e in events)
    per_process_aggregates = sum(out["stats"]["aggregates"] for out in outputs)
    assert len(events) < per_process_aggregates  # fleet-wide: fewer than per process
    assert relay.relay.stats.sealed == len(events)
    assert Counter(e["idempotency_key"] for e in events).most_common(1)[0][1] == 1


def test_contributions_are_idempotent_and_late_ones_are_billed_singly(
    redis_url: str, redis_client: Any, tmp_path: Path, fluxrate_server: DevServer
) -> None:
    """The same per-process aggregate appended twice (a retried append) counts once; one
    appended after its window was sealed is sent as its own event (billed, not merged)."""
    config_path = aggregated_config(tmp_path, fluxrate_server, redis_url)
    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(**{**load_config(config_path).client_kwargs(), **FAST})
    start_ms = (int(time.time()) - 5) * 1000  # a one-second window that closed 4 s ago
    a = UsageEvent(token, "cust", 5, _iso(start_ms + 100), "agg_" + "a" * 32)
    b = UsageEvent(token, "cust", 7, _iso(start_ms + 900), "agg_" + "b" * 32)
    late = UsageEvent(token, "cust", 11, _iso(start_ms + 500), "agg_" + "c" * 32)
    for event in (a, b, a):  # a twice: the second append is recognised
        assert client.enqueue(event)
    assert client.flush(10)
    assert client.stats.delivered == 2
    assert client.stats.deduplicated == 1
    with RelayThread(load_config(config_path), consumer="r", aggregation_grace=0.5) as relay:
        wait_until(lambda: relay.relay.stats.sealed == 1)
        wait_until(lambda: len(fluxrate_server.events()) == 1)
        assert client.enqueue(late)
        assert client.enqueue(a)  # still recognised after the seal: not billed again
        assert client.flush(10)
        wait_until(lambda: len(fluxrate_server.events()) == 2)
    client.close()
    events = sorted(fluxrate_server.events(), key=lambda e: float(e["quantity"]))
    assert [float(e["quantity"]) for e in events] == [11, 12]
    assert events[1]["idempotency_key"] == fleet_key(token, "cust", "", start_ms, 1000)
    assert events[1]["timestamp"] == _iso(start_ms + 900)
    assert events[0]["idempotency_key"] == late.idempotency_key
    assert fluxrate_server.summary()["cust"]["api_calls"] == 23


def test_merge_follows_the_meter_aggregation() -> None:
    def group(kind: str, metadata: str = "") -> dict[str, Any]:
        return {"aggregation": kind, "meter": "m", "customer": "c", "metadata": metadata,
                "start": 60_000, "window": 60_000}  # fmt: skip

    contributions = {
        "agg_1": "2026-01-01T00:01:10.000Z|0.1",
        "agg_2": "2026-01-01T00:01:30.000Z|0.2",
        "agg_3": "2026-01-01T00:01:20.000Z|7",
    }
    (total,) = merge_contributions(group("SUM"), contributions)
    assert total.quantity == Decimal("7.3")  # exact, not 7.300000000000001
    assert total.timestamp == "2026-01-01T00:01:30.000Z"
    assert total.idempotency_key == fleet_key("m", "c", "", 60_000, 60_000)
    (peak,) = merge_contributions(group("MAX"), contributions)
    assert peak.quantity == 7
    (last,) = merge_contributions(group("LAST"), contributions)
    assert last.quantity == Decimal("0.2")
    (seat,) = merge_contributions(group("UNIQUE_COUNT", '{"user_id":"u1"}'), contributions)
    assert seat.metadata == {"user_id": "u1"}
    huge = {"agg_1": "2026-01-01T00:01:10.000Z|1E+30", "agg_2": "2026-01-01T00:01:11.000Z|5"}
    parts = merge_contributions(group("SUM"), huge)
    assert [p.quantity for p in parts] == [10**30, 5]
    assert len({p.idempotency_key for p in parts}) == 2
    assert merge_contributions(group("SUM"), {}) == []


def test_without_aggregation_nothing_is_merged(
    redis_url: str, redis_client: Any, tmp_path: Path, fluxrate_server: DevServer
) -> None:
    """A meter without aggregation keeps one stream entry per usage, even with an ``agg_``
    key; an aggregated meter's single events (own idempotency keys) are not merged either."""
    config_path = aggregated_config(tmp_path, fluxrate_server, redis_url)
    kwargs = {**load_config(config_path).client_kwargs(), **FAST}
    assert kwargs["aggregation"] == {
        fluxrate_server.meter_token("api_calls"): AggregationSpec("SUM", 1.0)
    }
    client = FluxrateClient(**kwargs)
    client.track(fluxrate_server.meter_token("peak"), "c", 3)
    client.track(fluxrate_server.meter_token("api_calls"), "c", 2, idempotency_key="req-9")
    assert client.flush(10)
    client.close()
    entries = redis_client.xrange(STREAM)
    assert len(entries) == 2
    assert redis_client.zcard(f"{STREAM}:agg:open") == 0
    by_customer: dict[str, list[str]] = defaultdict(list)
    for _, fields in entries:
        by_customer["c"].append(fields["idempotency_key"])
    assert "req-9" in by_customer["c"]
