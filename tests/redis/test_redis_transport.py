"""``transport: redis``: apps append to a real Redis stream; ``fluxrate-web relay`` delivers
to the devserver exactly once. Real redis-server, real devserver, real sockets."""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _redishelpers import RedisServer, RelayThread, free_port, wait_until, write_config

from fluxrate_web.core.client import FluxrateClient
from fluxrate_web.core.config import load_config
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.failures import read_failure_log
from fluxrate_web.core.redis_transport import connect, decode_entry
from fluxrate_web.devserver import DevServer
from fluxrate_web.relay import trim_stream

STREAM = "fluxrate:events"
FAST = {"backoff_base": 0.005, "backoff_max": 0.05}


def ledger(server: DevServer) -> Counter[str]:
    return Counter(e["idempotency_key"] for e in server.events())


def app_client(config_path: Path, **kwargs: Any) -> FluxrateClient:
    config = load_config(config_path)
    return FluxrateClient(**{**config.client_kwargs(), **FAST, **kwargs})


def test_config_keys_and_client_kwargs(tmp_path: Path) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(
        "transport: redis\nredis_url: redis://:s3cret@10.0.0.5:6380/2\n"
        "redis_stream: billing:usage\nrelay_rate_limit: 500\nrelay_claim_idle: 30s\n"
    )
    config = load_config(path)
    assert config.transport == "redis"
    assert config.relay_rate_limit == 500
    assert config.relay_claim_idle == 30.0
    kwargs = config.client_kwargs()
    assert kwargs["transport"] == "redis"
    assert kwargs["redis_url"] == "redis://:s3cret@10.0.0.5:6380/2"
    assert kwargs["redis_stream"] == "billing:usage"
    assert "s3cret" not in config.describe()["transport"]
    # the default transport adds nothing to the client's arguments
    assert "transport" not in load_config().client_kwargs()
    assert load_config().redis_stream == STREAM
    for bad, message in (
        ("transport: kafka\n", "expected 'direct' or 'redis'"),
        ("redis_url: http://x\n", "redis://"),
        ("relay_rate_limit: 0\n", ">= 1"),
        ("relay_claim_idle: -1\n", "duration"),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    client = FluxrateClient("org_live_secret", transport="redis", redis_url=kwargs["redis_url"])
    assert "s3cret" not in repr(client)
    assert "org_live_secret" not in repr(client)
    client.close()
    with pytest.raises(ConfigError, match="transport"):
        FluxrateClient("k", transport="carrier-pigeon")
    with pytest.raises(ConfigError, match="redis_url"):
        FluxrateClient("k", transport="redis", redis_url="http://127.0.0.1:6379")


def test_events_reach_the_stream_with_their_key_and_timestamp(
    redis_url: str, redis_client: Any, tmp_path: Path, devserver: DevServer
) -> None:
    config = write_config(tmp_path / "fluxrate.yaml", devserver, redis_url)
    client = app_client(config)
    tracked = [
        client.track(devserver.meter_token("api_calls"), "cust_1", 3),
        client.track(
            devserver.meter_token("api_calls"),
            "cust_2",
            Decimal("0.125"),
            metadata={"region": "eu", "n": [1, 2]},
        ),
        client.track(devserver.meter_token("level"), "cust_3", 2.5, idempotency_key="req-1"),
    ]
    assert client.flush(10)
    assert client.stats.delivered == 3
    client.close()
    entries = redis_client.xrange(STREAM)
    assert [fields["idempotency_key"] for _, fields in entries] == [
        e.idempotency_key for e in tracked if e is not None
    ]
    back = [decode_entry(fields) for _, fields in entries]
    assert back == tracked  # timestamp, key, quantity (Decimal kept exact), metadata


def test_app_redis_relay_devserver_exactly_once(
    redis_url: str, redis_client: Any, tmp_path: Path, fluxrate_server: DevServer
) -> None:
    config_path = write_config(tmp_path / "fluxrate.yaml", fluxrate_server, redis_url)
    client = app_client(config_path, max_in_flight=64)
    token = fluxrate_server.meter_token("api_calls")
    keys = []
    for i in range(600):
        event = client.track(token, f"cust_{i % 7}", 1 + i % 3)
        assert event is not None
        keys.append(event.idempotency_key)
    assert client.flush(10)
    with RelayThread(load_config(config_path), consumer="r1") as relay:
        wait_until(lambda: len(fluxrate_server.events()) >= 600)
        wait_until(lambda: relay.relay.stats.acked == 600)
        # events tracked while the relay runs go through too
        for _ in range(100):
            event = client.track(token, "cust_late", 1)
            assert event is not None
            keys.append(event.idempotency_key)
        assert client.flush(10)
        wait_until(lambda: relay.relay.stats.acked == 700)
        assert redis_client.xpending(STREAM, "fluxrate-relays")["pending"] == 0
        # every entry is acknowledged: trimming keeps only the last delivered one
        trim(redis_url)
        assert redis_client.xlen(STREAM) <= 1
    client.close()
    counts = ledger(fluxrate_server)
    assert set(counts) == set(keys)
    assert max(counts.values()) == 1
    assert relay.relay.stats.dead == 0
    summary = fluxrate_server.summary()
    assert summary["cust_late"]["api_calls"] == 100


def trim(redis_url: str) -> int:
    async def go() -> int:
        r = connect(redis_url, timeout=5)
        try:
            return await trim_stream(r, STREAM, approximate=False)
        finally:
            await r.aclose()

    return asyncio.run(go())


def test_redis_down_the_app_keeps_working_then_failure_log(
    tmp_path: Path, devserver: DevServer
) -> None:
    """Nothing listens on the Redis port: track() stays fast, events are retried, then land in
    the failure log (memory durability), never raising into the caller."""
    port = free_port()
    failed = tmp_path / "failed.jsonl"
    client = FluxrateClient(
        devserver.api_key, devserver.url, transport="redis",
        redis_url=f"redis://127.0.0.1:{port}/0", max_attempts=3, max_retry_age=0.5,
        failed_events_path=failed, **FAST,
    )  # fmt: skip
    token = devserver.meter_token("api_calls")
    started = time.perf_counter()
    events = [client.track(token, "cust_down", 1) for _ in range(200)]
    assert time.perf_counter() - started < 0.5
    assert all(e is not None for e in events)
    assert client.flush(10)
    client.close()
    assert client.stats.failed == 200
    records = [r for _, _, r, _ in read_failure_log(failed) if r is not None]
    assert {r.reason for r in records} == {"retries_exhausted"}
    assert {r.event.idempotency_key for r in records} == {e.idempotency_key for e in events if e}
    assert all("redis" in (r.error or "").lower() for r in records)


def test_redis_down_with_a_spool_then_delivered_when_it_returns(
    redis_binary: str, tmp_path: Path, devserver: DevServer
) -> None:
    """durability: spool: while Redis is down the events wait on disk; when it comes back
    (same port) they are appended, each once."""
    server = RedisServer(redis_binary, tmp_path / "redis")
    client = FluxrateClient(
        devserver.api_key, devserver.url, transport="redis", redis_url=server.url,
        durability="spool", spool_path=tmp_path / "spool", spool_grace=0.2, max_attempts=2,
        max_retry_age=0.3, **FAST,
    )  # fmt: skip
    token = devserver.meter_token("api_calls")
    try:
        events = [client.track(token, "cust_spool", 1) for _ in range(300)]
        assert all(e is not None for e in events)
        wait_until(lambda: client.stats.spooled >= 1, timeout=10)
        server.start()
        assert client.flush(20)
        with server.client() as r:
            entries = r.xrange(STREAM)
        keys = Counter(fields["idempotency_key"] for _, fields in entries)
        assert set(keys) == {e.idempotency_key for e in events if e}
        assert client.stats.failed == 0
    finally:
        client.close()
        server.stop()


def test_a_forked_child_appends_through_a_connection_of_its_own(
    redis_url: str, redis_client: Any, devserver: DevServer
) -> None:
    """gunicorn --preload: the parent's client (lane, sink, connection pool) is never used by
    a forked child, which gets its own; both sets of events reach the stream once."""
    client = FluxrateClient(transport="redis", redis_url=redis_url, **FAST)
    token = devserver.meter_token("api_calls")
    parent = client.track(token, "parent", 1)
    assert client.flush(10)
    with warnings.catch_warnings():  # 3.12+: fork() of a multi-threaded process warns
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: track, flush, report by exit status
        code = 1
        try:
            events = [client.track(token, "child", 1) for _ in range(20)]
            ok = client.flush(10) and all(events) and client.stats.delivered == 20
            client.close()
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.track(token, "parent", 1) is not None
    assert client.flush(10)
    client.close()
    entries = redis_client.xrange(STREAM)
    customers = Counter(decode_entry(fields).customer_external_id for _, fields in entries)
    assert customers == {"parent": 2, "child": 20}
    assert parent is not None
    assert len({fields["idempotency_key"] for _, fields in entries}) == 22
