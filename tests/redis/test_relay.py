"""``fluxrate-web relay`` against a real redis-server and the devserver: relays share the work,
survive SIGKILL (the survivor claims), a kill between delivery and ``XACK`` is deduplicated by
the service, refused events go to the dead-letter stream and ``replay`` reads it, the global
rate limit holds, SIGTERM finishes what is in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from _redishelpers import REPO, RelayThread, relay_command, wait_until, write_config

from fluxrate_web.cli import main as cli_main
from fluxrate_web.core.client import FluxrateClient
from fluxrate_web.core.config import load_config
from fluxrate_web.devserver import DevServer

STREAM = "fluxrate:events"
GROUP = "fluxrate-relays"
FAST = {"backoff_base": 0.005, "backoff_max": 0.05}


def ledger(server: DevServer) -> Counter[str]:
    return Counter(e["idempotency_key"] for e in server.events())


def fill(config_path: Path, server: DevServer, n: int, customer: str = "cust") -> list[str]:
    """``n`` events tracked by an app with ``transport: redis``, all in the stream."""
    client = FluxrateClient(**{**load_config(config_path).client_kwargs(), **FAST,
                               "max_in_flight": 128})  # fmt: skip
    token = server.meter_token("api_calls")
    keys = []
    for i in range(n):
        event = client.track(token, f"{customer}_{i % 10}", 1)
        assert event is not None
        keys.append(event.idempotency_key)
    assert client.flush(20)
    client.close()
    return keys


def start_relay(config_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        relay_command(config_path, *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def stop_relay(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 20) -> str:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    if proc.stderr is None or proc.stderr.closed:
        return ""
    err = proc.stderr.read()
    proc.stderr.close()
    return err


def pending(redis_client: Any) -> int:
    """Entries read by a relay and not acknowledged; -1 before the group exists."""
    try:
        return int(redis_client.xpending(STREAM, GROUP)["pending"])
    except redis.ResponseError:
        return -1


def test_two_relays_share_the_work_exactly_once(
    redis_url: str, redis_client: Any, tmp_path: Path, fluxrate_server: DevServer
) -> None:
    config_path = write_config(tmp_path / "fluxrate.yaml", fluxrate_server, redis_url)
    keys = fill(config_path, fluxrate_server, 2000)
    config = load_config(config_path)
    with RelayThread(config, consumer="a", window=64) as a, RelayThread(
        config, consumer="b", window=64
    ) as b:  # fmt: skip
        wait_until(lambda: a.relay.stats.acked + b.relay.stats.acked == 2000, timeout=30)
    assert a.relay.stats.read > 0
    assert b.relay.stats.read > 0
    counts = ledger(fluxrate_server)
    assert set(counts) == set(keys)
    assert max(counts.values()) == 1
    assert pending(redis_client) == 0


def test_relays_down_while_apps_track_then_everything_is_delivered(
    redis_url: str, redis_client: Any, tmp_path: Path, fluxrate_server: DevServer
) -> None:
    """No relay (and no consumer group) yet: events wait in the stream. The first relay
    creates the group at 0, so everything appended before is delivered."""
    config_path = write_config(tmp_path / "fluxrate.yaml", fluxrate_server, redis_url)
    keys = fill(config_path, fluxrate_server, 500)
    assert redis_client.xlen(STREAM) == 500
    assert fluxrate_server.events() == []
    with RelayThread(load_config(config_path), consumer="late") as relay:
        wait_until(lambda: relay.relay.stats.acked == 500)
        keys += fill(config_path, fluxrate_server, 100, customer="more")
        wait_until(lambda: relay.relay.stats.acked == 600)
    assert Counter(ledger(fluxrate_server)) == Counter(keys)


def test_a_relay_sigkilled_mid_load_loses_and_duplicates_nothing(
    redis_url: str, redis_client: Any, tmp_path: Path, fluxrate_server: DevServer
) -> None:
    """Relays A and B (subprocesses) share 3,000 events; A is SIGKILLed mid-load; B claims its
    pending entries after the idle time: every key once in the ledger, nothing pending."""
    config_path = write_config(tmp_path / "fluxrate.yaml", fluxrate_server, redis_url)
    keys = fill(config_path, fluxrate_server, 3000)
    fluxrate_server.set_faults(latency_ms=10)
    a = start_relay(config_path, "--consumer", "A", "--claim-idle", "1")
    b = start_relay(config_path, "--consumer", "B", "--claim-idle", "1")
    try:
        wait_until(lambda: len(fluxrate_server.events()) >= 600, timeout=30)
        os.kill(a.pid, signal.SIGKILL)
        a.wait(10)
        wait_until(lambda: len(fluxrate_server.events()) >= 3000, timeout=60)
        wait_until(lambda: pending(redis_client) == 0, timeout=30)
    finally:
        fluxrate_server.clear_faults()
        stop_relay(a)
        err = stop_relay(b)
    assert b.returncode == 0, err
    counts = ledger(fluxrate_server)
    assert set(counts) == set(keys)
    assert max(counts.values()) == 1
    assert sum(v["api_calls"] for v in fluxrate_server.summary().values()) == 3000
    # B took over A's entries: the consumer A holds nothing any more
    consumers = {c["name"]: c for c in redis_client.xinfo_consumers(STREAM, GROUP)}
    assert consumers.get("A", {"pending": 0})["pending"] == 0


def test_a_relay_killed_after_delivering_and_before_xack_is_deduplicated(
    redis_url: str, redis_client: Any, tmp_path: Path, fluxrate_server: DevServer
) -> None:
    """Relay A reads 200 entries; Redis then refuses writes (CLIENT PAUSE WRITE), so A
    delivers all 200 but cannot acknowledge; A is SIGKILLed. Relay B claims the 200 entries,
    delivers them again with the same keys, and the service answers each as a duplicate."""
    config_path = write_config(tmp_path / "fluxrate.yaml", fluxrate_server, redis_url)
    keys = fill(config_path, fluxrate_server, 200)
    fluxrate_server.set_faults(latency_ms=100)
    a = start_relay(config_path, "--consumer", "A", "--window", "1000", "--claim-idle", "60")
    try:
        wait_until(lambda: pending(redis_client) == 200, timeout=30)
        redis_client.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        try:
            wait_until(lambda: len(fluxrate_server.events()) == 200, timeout=30)
            os.kill(a.pid, signal.SIGKILL)
            a.wait(10)
        finally:
            redis_client.execute_command("CLIENT", "UNPAUSE")
    finally:
        fluxrate_server.clear_faults()
        stop_relay(a)
    assert pending(redis_client) == 200  # delivered, never acknowledged
    with RelayThread(load_config(config_path), consumer="B", claim_idle=0.5) as b:
        wait_until(lambda: b.relay.stats.acked == 200, timeout=30)
    assert b.relay.stats.claimed == 200
    assert b.relay.client_stats["deduplicated"] == 200
    assert b.relay.client_stats["delivered"] == 0
    counts = ledger(fluxrate_server)
    assert set(counts) == set(keys)
    assert max(counts.values()) == 1
    assert pending(redis_client) == 0


def test_refused_events_go_to_the_dead_letter_stream_and_replay_reads_it(
    redis_url: str,
    redis_client: Any,
    tmp_path: Path,
    fluxrate_server: DevServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A relay with a revoked key: every event is refused (401), moved to ``<stream>:dead``
    and acknowledged. ``fluxrate-web replay 'redis://...#fluxrate:events:dead'`` with the right
    key delivers them (original keys) and removes them from the dead-letter stream."""
    config_path = write_config(tmp_path / "fluxrate.yaml", fluxrate_server, redis_url)
    keys = fill(config_path, fluxrate_server, 50)
    bad = write_config(tmp_path / "bad.yaml", fluxrate_server, redis_url,
                       api_key="org_live_revoked_key")  # fmt: skip
    with RelayThread(load_config(bad), consumer="bad") as relay:
        wait_until(lambda: relay.relay.stats.dead == 50)
    assert pending(redis_client) == 0
    dead = redis_client.xrange(f"{STREAM}:dead")
    assert len(dead) == 50
    assert {fields["reason"] for _, fields in dead} == {"rejected"}
    assert {fields["status"] for _, fields in dead} == {"401"}
    assert "org_live_revoked_key" not in str(dead)
    assert fluxrate_server.events() == []

    monkeypatch.setenv("FLUXRATE_API_KEY", fluxrate_server.api_key)
    source = f"{redis_url}#{STREAM}:dead"
    assert cli_main(["replay", source, "--dry-run"]) == 0
    assert "read 50 event(s)" in capsys.readouterr().out
    assert len(redis_client.xrange(f"{STREAM}:dead")) == 50  # a dry run removes nothing
    code = cli_main(["replay", source, "--base-url", fluxrate_server.url,
                     "--output", str(tmp_path / "out.jsonl")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "delivered 50" in out
    assert Counter(ledger(fluxrate_server)) == Counter(keys)
    assert redis_client.xlen(f"{STREAM}:dead") == 0


def test_the_global_rate_limit_is_shared_by_all_relays(
    redis_url: str, redis_client: Any, tmp_path: Path, fluxrate_server: DevServer
) -> None:
    config_path = write_config(tmp_path / "fluxrate.yaml", fluxrate_server, redis_url,
                               relay_rate_limit=40)  # fmt: skip
    keys = fill(config_path, fluxrate_server, 160)
    config = load_config(config_path)
    started = time.monotonic()
    with RelayThread(config, consumer="a") as a, RelayThread(config, consumer="b") as b:
        wait_until(lambda: a.relay.stats.acked + b.relay.stats.acked == 160, timeout=30)
    elapsed = time.monotonic() - started
    # 40 per second for both relays together: 160 events need four one-second buckets
    assert elapsed >= 2.0
    # which relay wins each second's tokens is a race (both wake at the same boundary), so
    # only the total is fixed; each relay was held back by the one counter they share
    assert a.relay.stats.read + b.relay.stats.read == 160
    assert a.relay.stats.rate_waits > 0
    assert b.relay.stats.rate_waits > 0
    per_second = Counter(e["created_at"][:19] for e in fluxrate_server.events())
    assert max(per_second.values()) <= 40 + 16  # + deliveries still in flight at a boundary
    assert Counter(ledger(fluxrate_server)) == Counter(keys)


def test_sigterm_finishes_the_deliveries_in_flight_and_exits_0(
    redis_url: str, redis_client: Any, tmp_path: Path, fluxrate_server: DevServer
) -> None:
    config_path = write_config(tmp_path / "fluxrate.yaml", fluxrate_server, redis_url)
    keys = fill(config_path, fluxrate_server, 100)
    fluxrate_server.set_faults(latency_ms=300)
    relay = start_relay(config_path, "--consumer", "T")
    try:
        wait_until(lambda: len(fluxrate_server.events()) >= 10, timeout=30)
        started = time.monotonic()
        err = stop_relay(relay, signal.SIGTERM)
        assert time.monotonic() - started < 15
    finally:
        fluxrate_server.clear_faults()
        stop_relay(relay)
    assert relay.returncode == 0, err
    # what it had read was delivered and acknowledged before it exited
    assert pending(redis_client) == 0
    delivered = ledger(fluxrate_server)
    assert max(delivered.values()) == 1
    assert set(delivered) <= set(keys)
    entries_left = redis_client.xlen(STREAM)
    with RelayThread(load_config(config_path), consumer="next") as nxt:
        wait_until(lambda: len(fluxrate_server.events()) == 100, timeout=30)
    assert nxt.relay.stats.read <= entries_left
    assert Counter(ledger(fluxrate_server)) == Counter(keys)


def test_relay_refuses_to_start_without_a_key_or_with_a_bad_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FLUXRATE_API_KEY", raising=False)
    monkeypatch.delenv("FLUXRATE_CONFIG", raising=False)
    path = tmp_path / "fluxrate.yaml"
    path.write_text("transport: redis\n")
    assert cli_main(["relay", "--config", str(path)]) == 2
    assert "no API key" in capsys.readouterr().err
    path.write_text("api_key: k\nbase_url: http://billing.example.com\n")
    assert cli_main(["relay", "--config", str(path)]) == 2
    assert "allow_insecure" in capsys.readouterr().err
    assert cli_main(["relay", "--config", str(tmp_path / "missing.yaml")]) == 2
