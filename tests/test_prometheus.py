"""fluxrate_web.prometheus: after a known burst delivered to the devserver, the collector's
output (parsed back from the text exposition format) matches ``client.stats``."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fluxrate_web import FluxrateClient, Metering, load_config
from fluxrate_web.devserver import DevServer
from fluxrate_web.prometheus import FluxrateCollector, register
from fluxrate_web.testing import CapturingClient

FAST = {"backoff_base": 0.005, "backoff_max": 0.05}
UNKNOWN_METER = "00000000-0000-4000-8000-000000000000"

# stats name -> exported sample name
COUNTERS = {
    "enqueued": "fluxrate_events_enqueued_total",
    "delivered": "fluxrate_events_delivered_total",
    "deduplicated": "fluxrate_events_deduplicated_total",
    "retried": "fluxrate_events_retried_total",
    "failed": "fluxrate_events_failed_total",
    "dropped": "fluxrate_events_dropped_total",
}


def scrape(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """{(sample name, client label): value} of one scrape, parsed as Prometheus would."""
    text = generate_latest(registry).decode()
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if "le" in sample.labels:
                key += "{le=" + sample.labels["le"] + "}"
            samples[(key, sample.labels.get("client", ""))] = sample.value
    return samples


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def client(fluxrate_server: DevServer, tmp_path: Path) -> Iterator[FluxrateClient]:
    c = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        failed_events_path=tmp_path / "failed.jsonl",
        **FAST,  # type: ignore[arg-type]
    )
    yield c
    c.close()


def test_burst_matches_client_stats(
    fluxrate_server: DevServer, client: FluxrateClient, registry: CollectorRegistry, tmp_path: Path
) -> None:
    register(client, registry=registry)
    before = scrape(registry)
    assert all(before[(name, "default")] == 0 for name in COUNTERS.values())

    token = fluxrate_server.meter_token("api_calls")
    fluxrate_server.set_faults(error_rate=0.25, seed=7)  # retries, all within the budget
    for i in range(200):
        assert client.track(token, f"cust_{i % 4}", 1)
    for i in range(10):  # ten keys sent twice: one 201 and one duplicate each
        assert client.track(token, "cust_dup", 1, idempotency_key=f"dup-{i}")
        assert client.track(token, "cust_dup", 1, idempotency_key=f"dup-{i}")
    for _ in range(3):  # refused before queueing
        assert client.track(token, "cust_0", -1) is None
    for _ in range(2):  # the API refuses them for good (404): failure log
        assert client.track(UNKNOWN_METER, "cust_0", 1)
    assert client.flush(30)
    fluxrate_server.clear_faults()

    stats = client.stats.as_dict()
    assert stats == {
        "enqueued": 222,
        "delivered": 210,
        "deduplicated": 10,
        "retried": stats["retried"],
        "failed": 2,
        "dropped": 3,
        "pending": 0,
        "queue_depth": 0,
    }
    assert stats["retried"] > 0
    assert fluxrate_server.summary()["cust_dup"]["api_calls"] == 10
    lines = (tmp_path / "failed.jsonl").read_text().splitlines()
    assert [json.loads(line)["reason"] for line in lines] == ["rejected", "rejected"]

    samples = scrape(registry)
    for name, metric in COUNTERS.items():
        assert samples[(metric, "default")] == stats[name], name
    assert samples[("fluxrate_events_pending", "default")] == 0
    assert samples[("fluxrate_queue_depth", "default")] == 0
    assert samples[("fluxrate_queue_capacity", "default")] == client.settings.max_queue_size

    # the latency histogram: one observation per event delivered or deduplicated
    latency = client.stats.latency
    assert latency.count == stats["delivered"] + stats["deduplicated"] == 220
    running = 0
    for bound, count in zip(latency.buckets, latency.counts, strict=True):
        running += count
        le = "+Inf" if math.isinf(bound) else repr(float(bound))
        bucket = samples[(f"fluxrate_delivery_latency_seconds_bucket{{le={le}}}", "default")]
        assert bucket == running, le
    assert samples[("fluxrate_delivery_latency_seconds_count", "default")] == latency.count
    assert samples[("fluxrate_delivery_latency_seconds_sum", "default")] == pytest.approx(
        latency.sum
    )
    assert latency.sum > 0


def test_queue_depth_and_pending_while_events_wait(
    fluxrate_server: DevServer, client: FluxrateClient, registry: CollectorRegistry
) -> None:
    """During an outage the queue holds what the workers have not taken yet and ``pending``
    counts every event not finished; both drain to zero once the server is back."""
    register(client, registry=registry, name="api")
    fluxrate_server.set_faults(latency_ms=300)
    token = fluxrate_server.meter_token("api_calls")
    for i in range(100):
        client.track(token, "cust_q", 1, idempotency_key=f"q-{i}")
    samples = scrape(registry)
    in_flight = client.settings.max_in_flight
    assert samples[("fluxrate_events_pending", "api")] == 100 - client.stats.delivered
    assert samples[("fluxrate_queue_depth", "api")] >= 100 - in_flight - client.stats.delivered
    fluxrate_server.clear_faults()
    assert client.flush(30)
    samples = scrape(registry)
    assert samples[("fluxrate_events_pending", "api")] == 0
    assert samples[("fluxrate_queue_depth", "api")] == 0
    assert samples[("fluxrate_events_delivered_total", "api")] == 100


def test_sources_metering_callable_and_several_clients(registry: CollectorRegistry) -> None:
    config = load_config(
        overrides={"meters": {"api_calls": "550e8400-e29b-41d4-a716-446655440000"}}
    )
    capturing = CapturingClient()
    metering = Metering(config, client=capturing)
    other = CapturingClient()
    collector = FluxrateCollector(metering, name="web")
    collector.add(lambda: other, name="jobs")  # read at every scrape
    registry.register(collector)

    capturing.track("550e8400-e29b-41d4-a716-446655440000", "cust_1", 2)
    other.note_dropped("no customer")
    samples = scrape(registry)
    assert samples[("fluxrate_events_enqueued_total", "web")] == 1
    assert samples[("fluxrate_events_dropped_total", "web")] == 0
    assert samples[("fluxrate_events_dropped_total", "jobs")] == 1
    assert ("fluxrate_queue_capacity", "web") not in samples  # a CapturingClient has none

    collector.remove("jobs")
    assert ("fluxrate_events_dropped_total", "jobs") not in scrape(registry)


def test_a_failing_source_never_breaks_the_scrape(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> object:
        raise RuntimeError("settings.FLUXRATE is invalid")

    collector = register(broken, name="broken", registry=registry)
    collector.add(CapturingClient(), name="ok")
    with caplog.at_level(logging.WARNING, logger="fluxrate_web.prometheus"):
        first = scrape(registry)
        second = scrape(registry)
    assert first[("fluxrate_events_enqueued_total", "ok")] == 0
    assert ("fluxrate_events_enqueued_total", "broken") not in second
    assert len([r for r in caplog.records if "'broken'" in r.getMessage()]) == 1  # once


def test_describe_reads_no_client(registry: CollectorRegistry) -> None:
    def source() -> object:
        raise AssertionError("describe() must not read the source")

    collector = FluxrateCollector(source)
    names = [family.name for family in collector.describe()]
    assert "fluxrate_events_delivered" in names
    assert "fluxrate_queue_depth" in names
    registry.register(collector)  # name collision check only
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(FluxrateCollector(CapturingClient()))


def test_latency_histogram_and_aggregation_when_the_client_has_them(
    registry: CollectorRegistry,
) -> None:
    """The shape the core is asked for (docs/metrics.md): ``stats.latency`` with ascending
    ``buckets`` (seconds), per-bucket ``counts`` and ``sum``; ``folded`` / ``aggregates`` /
    ``aggregates_open`` for pre-aggregation."""
    latency = SimpleNamespace(buckets=(0.01, 0.1, 1.0, math.inf), counts=(5, 3, 1, 1), sum=2.75)
    stats = SimpleNamespace(
        enqueued=10, delivered=10, deduplicated=0, retried=0, failed=0, dropped=0, pending=0,
        folded=990, aggregates=10, aggregates_open=2, latency=latency,
    )  # fmt: skip
    register(SimpleNamespace(stats=stats), registry=registry)
    samples = scrape(registry)
    assert samples[("fluxrate_delivery_latency_seconds_bucket{le=0.01}", "default")] == 5
    assert samples[("fluxrate_delivery_latency_seconds_bucket{le=0.1}", "default")] == 8
    assert samples[("fluxrate_delivery_latency_seconds_bucket{le=1.0}", "default")] == 9
    assert samples[("fluxrate_delivery_latency_seconds_bucket{le=+Inf}", "default")] == 10
    assert samples[("fluxrate_delivery_latency_seconds_count", "default")] == 10
    assert samples[("fluxrate_delivery_latency_seconds_sum", "default")] == 2.75
    assert samples[("fluxrate_aggregation_folded_total", "default")] == 990
    assert samples[("fluxrate_aggregation_emitted_total", "default")] == 10
    assert samples[("fluxrate_aggregation_open", "default")] == 2
    assert ("fluxrate_queue_depth", "default") not in samples  # unknown: not invented


def test_register_again_adds_to_the_same_collector(registry: CollectorRegistry) -> None:
    """An app factory run once per test registers again: no 'Duplicated timeseries'."""
    first, second = CapturingClient(), CapturingClient()
    collector = register(first, registry=registry)
    assert register(second, registry=registry) is collector  # replaces "default"
    assert register(first, name="other", registry=registry) is collector
    second.note_dropped("no customer")
    samples = scrape(registry)
    assert samples[("fluxrate_events_dropped_total", "default")] == 1
    assert samples[("fluxrate_events_dropped_total", "other")] == 0


def test_pre_aggregation_counters_match_client_stats(
    fluxrate_server: DevServer, registry: CollectorRegistry
) -> None:
    from fluxrate_web.core.aggregation import AggregationSpec

    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        aggregation={token: AggregationSpec("SUM", 60)},
        **FAST,  # type: ignore[arg-type]
    )
    try:
        register(client, registry=registry)
        for i in range(100):
            assert client.track(token, f"cust_{i % 2}", 1)
        samples = scrape(registry)
        assert samples[("fluxrate_aggregation_folded_total", "default")] == 100
        assert samples[("fluxrate_aggregation_open", "default")] == 2
        assert client.flush(10)  # sends the open windows
        stats = client.stats.as_dict()
        samples = scrape(registry)
    finally:
        client.close()
    assert stats["aggregates"] == 2
    assert samples[("fluxrate_aggregation_emitted_total", "default")] == stats["aggregates"]
    assert samples[("fluxrate_aggregation_folded_total", "default")] == stats["folded"] == 100
    assert samples[("fluxrate_aggregation_open", "default")] == stats["aggregates_open"] == 0
    assert samples[("fluxrate_client_reduction_ratio", "default")] == stats["reduction_ratio"] == 50
    for name, metric in COUNTERS.items():
        assert samples[(metric, "default")] == stats[name], name
    assert fluxrate_server.summary() == {"cust_0": {"api_calls": 50}, "cust_1": {"api_calls": 50}}


def test_no_aggregation_series_without_pre_aggregation(
    client: FluxrateClient, registry: CollectorRegistry
) -> None:
    register(client, registry=registry)
    assert not [key for key in scrape(registry) if key[0].startswith("fluxrate_aggregation")]


def test_numbers_a_newer_client_reports_are_exported_as_gauges(
    registry: CollectorRegistry,
) -> None:
    class Stats:
        def as_dict(self) -> dict[str, object]:
            return {"enqueued": 5, "delivered": 5, "future_gauge": 3, "mode": "strict"}

    register(SimpleNamespace(stats=Stats()), registry=registry)
    samples = scrape(registry)
    assert samples[("fluxrate_events_enqueued_total", "default")] == 5
    assert samples[("fluxrate_client_future_gauge", "default")] == 3
    assert not [key for key in samples if "mode" in key[0]]  # not a number: left out


def test_spool_counters_match_client_stats(
    fluxrate_server: DevServer, registry: CollectorRegistry, tmp_path: Path
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        durability="strict",
        spool_path=tmp_path / "spool",
        **FAST,  # type: ignore[arg-type]
    )
    try:
        register(client, registry=registry)
        for i in range(20):
            assert client.track(token, f"cust_{i % 2}", 1)
        assert client.flush(10)
        stats = client.stats.as_dict()
        samples = scrape(registry)
    finally:
        client.close()
    assert stats["delivered"] == 20
    assert samples[("fluxrate_events_spooled_total", "default")] == stats["spooled"]
    assert samples[("fluxrate_events_adopted_total", "default")] == stats["adopted"]
    assert samples[("fluxrate_spool_backlog", "default")] == stats["spool_backlog"] == 0
    for name, metric in COUNTERS.items():
        assert samples[(metric, "default")] == stats[name], name
