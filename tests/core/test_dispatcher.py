"""The dispatcher end to end against the devserver: exactly once under threads, injected
faults and 429 bursts; retries, Retry-After, permanent failures, outage then replay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from _corehelpers import scripted_server

from fluxrate_web.core import FluxrateClient, UsageEvent
from fluxrate_web.core._log import reset_limits
from fluxrate_web.core.dispatcher import backoff_delay
from fluxrate_web.devserver import DevServer

FAST = {"backoff_base": 0.005, "backoff_max": 0.05}


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    reset_limits()


def _track_from_threads(client: FluxrateClient, token: str, total: int, threads: int) -> list[str]:
    keys: list[list[str]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        start.wait()
        for i in range(total // threads):
            event = client.track(token, f"cust{(t * 7 + i) % 50}", 1)
            assert event is not None
            keys[t].append(event.idempotency_key)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [k for ks in keys for k in ks]


def _assert_exactly_once(server: DevServer, keys: list[str]) -> None:
    stored = Counter(e["idempotency_key"] for e in server.events())
    assert len(stored) == len(keys), f"{len(keys) - len(stored)} missing"
    assert set(stored) == set(keys)
    assert max(stored.values()) == 1


def test_10k_events_from_8_threads_exactly_once(fluxrate_server: DevServer) -> None:
    token = fluxrate_server.meter_token("api_calls")
    with FluxrateClient(fluxrate_server.api_key, fluxrate_server.url, **FAST) as client:
        keys = _track_from_threads(client, token, 10_000, 8)
        assert client.flush(60)
        stats = client.stats
        assert (stats.enqueued, stats.delivered, stats.failed, stats.pending) == (
            10_000,
            10_000,
            0,
            0,
        )
    _assert_exactly_once(fluxrate_server, keys)
    assert sum(fluxrate_server.summary()[f"cust{i}"]["api_calls"] for i in range(50)) == 10_000


def test_exactly_once_with_5xx_429_bursts_and_dropped_connections(
    fluxrate_server: DevServer,
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(fluxrate_server.api_key, fluxrate_server.url, max_attempts=100, **FAST)
    try:
        # a burst of 429s first (Retry-After: 0 keeps the test quick), then 30% 5xx with some
        # connections dropped after the server stored the event
        fluxrate_server.set_faults(rate_limit_rate=0.9, retry_after=0, seed=1)
        keys = _track_from_threads(client, token, 2_000, 8)
        time.sleep(0.3)
        fluxrate_server.set_faults(error_rate=0.3, status=503, stored_drop_rate=0.05, seed=2)
        keys += _track_from_threads(client, token, 8_000, 8)
        time.sleep(0.3)
        fluxrate_server.set_faults(rate_limit_rate=0.5, retry_after=0, error_rate=0.2, seed=3)
        time.sleep(0.3)
        fluxrate_server.clear_faults()
        assert client.flush(60)
        stats = client.stats
        assert stats.failed == 0
        assert stats.retried > 1000
        assert stats.delivered + stats.deduplicated == 10_000
        assert stats.deduplicated > 0  # the stored-then-dropped ones came back as duplicates
    finally:
        client.close()
    _assert_exactly_once(fluxrate_server, keys)


def test_retry_after_holds_the_lane() -> None:
    script = [(429, {"retry-after": "1"}, b'{"detail":"slow down"}')]
    with scripted_server(script=script) as server:
        client = FluxrateClient("k", server.url, **FAST)
        started = time.monotonic()
        client.track("m", "c1")
        assert client.flush(10)
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 3, elapsed
        assert client.stats.retried == 1
        assert client.stats.delivered == 1
        client.close()


def test_permanent_4xx_goes_straight_to_the_failure_log(tmp_path: Path) -> None:
    path = tmp_path / "failed.jsonl"
    with scripted_server(script=[422, 401]) as server:
        client = FluxrateClient("k", server.url, failed_events_path=path, **FAST)
        client.track("m", "c1")
        client.track("m", "c2")
        assert client.flush(10)
        client.close()
        assert len(server.requests) == 2  # no retry
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(x["status"] for x in lines) == [401, 422]
    assert {x["reason"] for x in lines} == {"rejected"}
    assert all(x["attempts"] == 1 for x in lines)


def test_retries_exhausted_by_attempts_and_age(tmp_path: Path) -> None:
    path = tmp_path / "failed.jsonl"
    with scripted_server(script=lambda r: 503) as server:
        client = FluxrateClient("k", server.url, max_attempts=3, failed_events_path=path, **FAST)
        client.track("m", "c1")
        assert client.flush(10)
        client.close()
        assert len(server.requests) == 3
    line = json.loads(path.read_text())
    assert (line["reason"], line["status"], line["attempts"]) == ("retries_exhausted", 503, 3)
    assert "503" in line["error"]
    path.unlink()
    with scripted_server(script=lambda r: 503) as server:
        client = FluxrateClient(
            "k", server.url, max_attempts=1000, max_retry_age=0.3, failed_events_path=path, **FAST
        )
        started = time.monotonic()
        client.track("m", "c1")
        assert client.flush(10)
        client.close()
        assert time.monotonic() - started < 2
    assert json.loads(path.read_text())["reason"] == "retries_exhausted"


def test_backoff_is_jittered_and_capped() -> None:
    delays = [backoff_delay(a, 0.5, 30.0) for a in range(1, 12) for _ in range(50)]
    assert all(0 <= d <= 30.0 for d in delays)
    assert max(backoff_delay(1, 0.5, 30.0) for _ in range(200)) <= 0.5
    assert max(backoff_delay(10, 0.5, 30.0) for _ in range(200)) > 10
    assert backoff_delay(1, 0.5, 30.0, retry_after=4.0) >= 4.0
    assert backoff_delay(10_000, 0.5, 30.0) <= 30.0


def test_outage_then_replay_delivers_without_duplicates(
    fluxrate_server: DevServer, tmp_path: Path
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    path = tmp_path / "failed.jsonl"
    client = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        failed_events_path=path,
        max_attempts=4,
        max_retry_age=1.0,
        **FAST,
    )
    try:
        before = [client.track(token, f"o{i % 5}", 1) for i in range(100)]
        assert client.flush(10)
        # connections drop after the event is stored: the client cannot know, gives up
        fluxrate_server.set_faults(stored_drop_rate=1.0)
        dropped = [client.track(token, f"o{i % 5}", 1) for i in range(50)]
        assert client.flush(20)
        fluxrate_server.set_faults(outage_seconds=30)
        during = [client.track(token, f"o{i % 5}", 1) for i in range(400)]
        assert client.flush(20)
        assert client.stats.failed == 450
    finally:
        client.close()
    fluxrate_server.clear_faults()
    lines = path.read_text().splitlines()
    assert len(lines) == 450
    assert os.stat(path).st_mode & 0o777 == 0o600
    stored_before = len(fluxrate_server.events())
    assert 150 <= stored_before < 550
    output = tmp_path / "still.jsonl"
    env = {**os.environ, "FLUXRATE_API_KEY": fluxrate_server.api_key}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fluxrate_web",
            "replay",
            str(path),
            "--base-url",
            fluxrate_server.url,
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "read 450 event(s)" in result.stdout
    assert "deduplicated) 50" in result.stdout
    assert not output.exists()
    keys = [e.idempotency_key for e in before + dropped + during if e]
    _assert_exactly_once(fluxrate_server, keys)
    # a second replay of the same file changes nothing
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "fluxrate_web",
            "replay",
            str(path),
            "--base-url",
            fluxrate_server.url,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0
    assert "deduplicated) 450" in again.stdout
    assert len(fluxrate_server.events()) == 550


def test_unexpected_errors_still_reach_the_failure_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "failed.jsonl"
    with scripted_server() as server:
        client = FluxrateClient("k", server.url, failed_events_path=path)

        def broken(self: object, event: UsageEvent) -> bytes:
            raise RuntimeError("bug in build")

        monkeypatch.setattr("fluxrate_web.core.transport.Wire.build", broken)
        client.track("m", "c")
        assert client.flush(5)
        client.close()
    line = json.loads(path.read_text())
    assert line["reason"] == "internal_error"
    assert "bug in build" in line["error"]
