"""Delivery metrics of ``FluxrateClient``: the latency histogram (``stats.latency``), the queue
depth (``stats.queue_depth``) and the periodic INFO line (``stats_log_interval``), against the
devserver over loopback HTTP."""

from __future__ import annotations

import itertools
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxrate_web import Metering, load_config
from fluxrate_web.core import FluxrateClient
from fluxrate_web.core.dispatcher import LATENCY_BUCKETS, LatencySnapshot
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.devserver import DevServer

FAST = {"backoff_base": 0.005, "backoff_max": 0.05}
UNKNOWN_METER = "00000000-0000-4000-8000-000000000000"
TOKEN = "550e8400-e29b-41d4-a716-446655440000"


def bucket_of(seconds: float) -> int:
    return next(i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound)


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


# --------------------------------------------------------------------------- latency


def test_latency_counts_every_answered_event_and_no_failed_one(
    fluxrate_server: DevServer, client: FluxrateClient
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    assert client.stats.latency.count == 0
    for i in range(120):
        assert client.track(token, f"cust_{i % 3}", 1)
    for i in range(5):  # a 201, then a duplicate (200) each
        client.track(token, "cust_dup", 1, idempotency_key=f"lat-dup-{i}")
        client.track(token, "cust_dup", 1, idempotency_key=f"lat-dup-{i}")
    for _ in range(2):  # 404 for good: failed, no latency
        client.track(UNKNOWN_METER, "cust_0", 1)
    assert client.flush(10)

    stats = client.stats
    latency = stats.latency
    assert (stats.delivered, stats.deduplicated, stats.failed) == (125, 5, 2)
    assert latency.count == stats.delivered + stats.deduplicated == 130
    assert sum(latency.counts) == latency.count
    assert len(latency.counts) == len(latency.buckets) == len(LATENCY_BUCKETS)
    assert list(latency.buckets) == sorted(latency.buckets)
    assert len(set(latency.buckets)) == len(latency.buckets)
    assert math.isinf(latency.buckets[-1])
    assert latency.sum > 0
    # every event landed in the bucket its share of the sum allows: no negative, none beyond
    # what the whole burst took
    assert 0 < latency.sum / latency.count < 5.0
    assert sum(latency.counts[bucket_of(10.0) :]) == 0
    quantile = latency.quantile(0.5)
    assert quantile is not None
    assert 0 < quantile <= latency.quantile(0.99)  # type: ignore[operator]


def test_server_latency_and_queue_wait_move_events_to_higher_buckets(
    fluxrate_server: DevServer,
) -> None:
    """One delivery at a time: the second event waits in the queue while the first takes
    400 ms, so it takes about 800 ms in all, not 400 (the queue wait counts)."""
    token = fluxrate_server.meter_token("api_calls")
    with FluxrateClient(fluxrate_server.api_key, fluxrate_server.url, max_in_flight=1) as client:
        for i in range(5):
            client.track(token, f"cust_{i}", 1)
        assert client.flush(10)
        before = client.stats.latency
        assert before.count == 5
        assert sum(before.counts[: bucket_of(0.1) + 1]) == 5  # loopback: fast

        fluxrate_server.set_faults(latency_ms=400)
        client.track(token, "cust_slow", 1)
        client.track(token, "cust_slow", 1)
        assert client.flush(10)
        fluxrate_server.clear_faults()
        added = client.stats.latency.minus(before)
    assert added.count == 2
    assert added.counts[bucket_of(0.45)] == 1  # (0.25, 0.5]: the first, ~0.4 s
    assert added.counts[bucket_of(0.85)] == 1  # (0.5, 1]: the second, ~0.8 s
    assert 1.1 < added.sum < 1.8


def test_latency_includes_the_retries(fluxrate_server: DevServer) -> None:
    """A 429 with ``Retry-After: 1`` first: the event's latency covers the wait and the retry."""
    token = fluxrate_server.meter_token("api_calls")
    fluxrate_server.set_faults(rate_limit_rate=1.0, retry_after=1)
    with FluxrateClient(fluxrate_server.api_key, fluxrate_server.url, **FAST) as client:  # type: ignore[arg-type]
        client.track(token, "cust_retry", 1)
        deadline = time.monotonic() + 5
        while fluxrate_server.track_requests() < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        fluxrate_server.clear_faults()
        assert client.flush(10)
        stats = client.stats
        latency = stats.latency
    assert stats.retried >= 1
    assert stats.delivered == 1
    assert latency.count == 1
    assert latency.counts[bucket_of(1.5)] == 1  # (1, 2.5]
    assert 1.0 <= latency.sum < 2.5


def test_snapshot_quantiles_and_difference() -> None:
    bounds = (0.1, 1.0, math.inf)
    snap = LatencySnapshot(bounds, (2, 2, 0), 1.5, 4)
    assert snap.quantile(0.5) == pytest.approx(0.1)
    assert snap.quantile(0.75) == pytest.approx(0.55)  # halfway through (0.1, 1]
    assert LatencySnapshot(bounds, (0, 0, 3), 30.0, 3).quantile(0.99) == 1.0  # the +Inf bucket
    assert LatencySnapshot(bounds, (0, 0, 0), 0.0, 0).quantile(0.5) is None
    later = LatencySnapshot(bounds, (5, 2, 1), 9.0, 8)
    assert later.minus(snap) == LatencySnapshot(bounds, (3, 0, 1), 7.5, 4)


def test_reading_stats_while_the_worker_records_never_raises(
    fluxrate_server: DevServer, client: FluxrateClient
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    errors: list[BaseException] = []
    seen: list[LatencySnapshot] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                snap = client.stats.latency
                assert snap.count == sum(snap.counts)
                seen.append(snap)
                client.stats.as_dict()
                repr(client.stats)
        except BaseException as exc:  # reported below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            client.track(token, f"cust_{i % 5}", 1)
        assert client.flush(10)
    finally:
        stop.set()
        reader.join(5)
    assert not errors
    assert len(seen) > 1
    for earlier, later in itertools.pairwise(seen):
        assert all(b >= a for a, b in zip(earlier.counts, later.counts, strict=True))
    assert client.stats.latency.count == 300


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_with_an_empty_histogram(
    fluxrate_server: DevServer, client: FluxrateClient
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    for _ in range(3):
        client.track(token, "parent")
    assert client.flush(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: multi-threaded fork
        pid = os.fork()
    if pid == 0:
        code = 10
        try:
            stats = client.stats
            code = 11 if (stats.latency.count, stats.queue_depth) != (0, 0) else 12
            if code == 12:
                client.track(token, "child")
                client.track(token, "child")
                if client.flush(10) and client.stats.latency.count == 2:
                    code = 0
            client.close()
        except BaseException as exc:
            sys.stderr.write(f"child failed: {exc!r}\n")
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.stats.latency.count == 3


# --------------------------------------------------------------------------- queue depth


def test_queue_depth_counts_what_waits_for_a_worker(
    fluxrate_server: DevServer, client: FluxrateClient
) -> None:
    """The dispatcher's loop is held (a callback blocking it), so no worker can take anything:
    every event tracked meanwhile waits in the queue."""
    token = fluxrate_server.meter_token("api_calls")
    client.start()
    lane = client._lane
    assert lane is not None
    blocked, release = threading.Event(), threading.Event()

    def hold() -> None:
        blocked.set()
        release.wait(5)

    lane.loop.call_soon_threadsafe(hold)
    assert blocked.wait(5)
    try:
        for i in range(25):
            client.track(token, f"cust_{i}", 1)
        stats = client.stats
        assert stats.queue_depth == 25
        assert stats.pending == 25
        assert stats.as_dict()["queue_depth"] == 25
        assert "queue_depth=25" in repr(stats)
    finally:
        release.set()
    assert client.flush(10)
    assert client.stats.queue_depth == 0
    assert client.stats.delivered == 25
    client.close()
    assert client.stats.queue_depth == 0


# --------------------------------------------------------------------------- the log line


def stats_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("fluxrate delivery:")]


def test_the_stats_line_is_logged_every_interval_and_stops_at_close(
    fluxrate_server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        stats_log_interval=0.05,
        **FAST,  # type: ignore[arg-type]
    )
    with caplog.at_level(logging.INFO, logger="fluxrate_web"):
        try:
            for i in range(7):
                client.track(token, f"cust_{i}", 1)
            client.track(token, "cust_0", -1)  # dropped
            assert client.flush(10)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and not any(
                "delivered=7 " in r.getMessage() for r in stats_lines(caplog)
            ):
                time.sleep(0.01)
        finally:
            client.close()
        logged = len(stats_lines(caplog))
        time.sleep(0.2)  # four intervals after close(): nothing more
        assert len(stats_lines(caplog)) == logged
    records = stats_lines(caplog)
    assert records, "no stats line"
    last = records[-1]
    assert last.levelno == logging.INFO
    assert last.name == "fluxrate_web"
    text = last.getMessage()
    for part in ("enqueued=7 ", "delivered=7 ", "deduplicated=0 ", "retried=0 ", "failed=0 ",
                 "dropped=1 ", "pending=0 ", "queue_depth=0 ", " p50~", " p99~"):  # fmt: skip
        assert part in text, (part, text)
    assert fluxrate_server.api_key not in caplog.text
    # the line of the interval in which the last delivery was answered has a latency
    first = next(r.getMessage() for r in records if "delivered=7 " in r.getMessage())
    assert "p50~-" not in first
    assert " p50~0." in first


def test_no_stats_line_by_default(
    fluxrate_server: DevServer, client: FluxrateClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    assert client.stats_log_interval == 0
    with caplog.at_level(logging.DEBUG, logger="fluxrate_web"):
        for i in range(5):
            client.track(token, f"cust_{i}", 1)
        assert client.flush(10)
        time.sleep(0.2)
    assert stats_lines(caplog) == []


# --------------------------------------------------------------------------- configuration


def test_stats_log_interval_from_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(
        f"api_key: org_live_x\nmeters:\n  api_calls: {TOKEN}\nstats_log_interval: 50ms\n"
    )
    config = load_config(path)
    assert config.stats_log_interval == 0.05
    assert config.client_kwargs()["stats_log_interval"] == 0.05
    metering = Metering(config)
    try:
        assert metering.client.stats_log_interval == 0.05  # type: ignore[attr-defined]
    finally:
        metering.close()
    settings = load_config(overrides={"STATS_LOG_INTERVAL": "2m"}, overrides_name="settings.X")
    assert settings.stats_log_interval == 120.0
    for off in ("0", "null"):
        path.write_text(f"stats_log_interval: {off}\n")
        assert load_config(path).stats_log_interval is None
        assert "stats_log_interval" not in load_config(path).client_kwargs()
    assert "stats_log_interval" not in load_config().client_kwargs()  # off by default


@pytest.mark.parametrize("value", ["-5", "-1s", "soon", "true", "[60]", ".inf"])
def test_a_bad_stats_log_interval_names_file_line_and_key(tmp_path: Path, value: str) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(f"api_key: org_live_x\n\nstats_log_interval: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:3: stats_log_interval: "), str(info.value)


@pytest.mark.parametrize("value", [-1, "60", True, float("nan"), float("inf")])
def test_the_client_refuses_a_bad_stats_log_interval(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^stats_log_interval: "):
        FluxrateClient("org_live_x", "http://127.0.0.1:9", stats_log_interval=value)  # type: ignore[arg-type]
