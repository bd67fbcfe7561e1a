"""FluxrateClient against the real devserver (and a scripted loopback server for edge cases)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

import pytest
from _corehelpers import scripted_server, wait_until

from fluxrate_web.core import (
    AuthenticationError,
    ConfigError,
    FluxrateClient,
    InvalidUsageError,
    NotFoundError,
    TransportError,
    UsageEvent,
    ValidationError,
    capture_events,
)
from fluxrate_web.core._log import reset_limits
from fluxrate_web.devserver import DevServer

FAST = {"backoff_base": 0.01, "backoff_max": 0.05}


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    reset_limits()


@pytest.fixture
def client(fluxrate_server: DevServer) -> FluxrateClient:
    c = FluxrateClient(fluxrate_server.api_key, fluxrate_server.url, **FAST)  # type: ignore[arg-type]
    yield c  # type: ignore[misc]
    c.close()


# --------------------------------------------------------------------------- configuration


def test_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXRATE_API_KEY", "org_live_from_env_123456")
    monkeypatch.setenv("FLUXRATE_BASE_URL", "http://127.0.0.1:9")
    client = FluxrateClient()
    assert client.api_key_configured
    assert client.base_url == "http://127.0.0.1:9"
    monkeypatch.delenv("FLUXRATE_BASE_URL")
    assert FluxrateClient().base_url == "https://api.fluxrate.co"
    assert FluxrateClient(base_url="https://eu.example.com").base_url == "https://eu.example.com"


def test_insecure_urls_and_bad_settings() -> None:
    with pytest.raises(ConfigError, match="allow_insecure"):
        FluxrateClient("k", "http://api.fluxrate.co")
    FluxrateClient("k", "http://api.fluxrate.co", allow_insecure=True)
    for kwargs in (
        {"max_in_flight": 0},
        {"max_queue_size": -1},
        {"request_timeout": 0},
        {"max_attempts": 1.5},
        {"max_in_flight": True},
    ):
        with pytest.raises(ConfigError):
            FluxrateClient("k", "http://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]


def test_repr_masks_the_key() -> None:
    key = "org_live_abcdefghijklmnopqrstuvwxyz"
    client = FluxrateClient(key, "http://127.0.0.1:1", access_token="jwt-secret-token")
    text = repr(client)
    assert key not in text
    assert "jwt-secret-token" not in text
    assert "org_live_***" in text
    assert "127.0.0.1:1" in text


# --------------------------------------------------------------------------- track()


def test_track_never_raises_and_counts_drops(caplog: pytest.LogCaptureFixture) -> None:
    client = FluxrateClient("k", "http://127.0.0.1:1")
    with caplog.at_level(logging.WARNING, logger="fluxrate_web"):
        assert client.track("", "c") is None
        assert client.track("m", "c", 0) is None
        assert client.track("m", "c", "3") is None  # type: ignore[arg-type]
        assert client.track("m", "c", metadata={"x": object()}) is None
        assert client.track("m", "c", True) is None
    assert client.stats.dropped == 5
    assert client.stats.enqueued == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("meter_token" in m for m in messages)
    assert any("quantity" in m for m in messages)
    client.close()


def test_capture_events() -> None:
    client = FluxrateClient(None, "http://127.0.0.1:1")
    with capture_events() as outer:
        client.track("m", "c1")
        with capture_events() as inner:
            client.enqueue(UsageEvent.create("m", "c2"))
        client.track("m", "c3")
    assert [e.customer_external_id for e in outer] == ["c1", "c3"]
    assert [e.customer_external_id for e in inner] == ["c2"]
    assert client.stats.enqueued == 0
    assert client.stats.pending == 0
    client.close()


def test_delivery_and_stats(client: FluxrateClient, fluxrate_server: DevServer) -> None:
    token = fluxrate_server.meter_token("api_calls")
    events = [client.track(token, f"cust{i % 3}", i + 1) for i in range(30)]
    assert all(events)
    assert client.flush(10)
    stats = client.stats
    assert (stats.enqueued, stats.delivered, stats.failed, stats.pending) == (30, 30, 0, 0)
    stored = fluxrate_server.events()
    assert sorted(e["idempotency_key"] for e in stored) == sorted(
        e.idempotency_key for e in events if e
    )
    # the same keys again: the server answers with the original events
    for event in events[:5]:
        assert event is not None
        assert client.enqueue(event)
    assert client.flush(10)
    assert client.stats.deduplicated == 5
    assert client.stats.delivered == 30
    assert len(fluxrate_server.events()) == 30


def test_send_returns_the_record_and_raises(
    client: FluxrateClient, fluxrate_server: DevServer
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    event = UsageEvent.create(token, "cust-send", 4, metadata={"region": "eu"})
    record = client.send(event)
    assert record["id"]
    assert record["meta_data"] == {"region": "eu"}
    assert client.send(event)["id"] == record["id"]  # duplicate: the original
    with pytest.raises(NotFoundError):
        client.send(UsageEvent.create("no-such-meter-token", "c"))
    with pytest.raises(ValidationError):  # UNIQUE_COUNT needs metadata.user_id
        client.send(UsageEvent.create(fluxrate_server.meter_token("seats"), "c"))
    bad = FluxrateClient("org_live_wrong_key_000000", fluxrate_server.url)
    try:
        with pytest.raises(AuthenticationError) as info:
            bad.send(UsageEvent.create(token, "c"))
        assert "org_live_wrong_key_000000" not in str(info.value)
    finally:
        bad.close()
    with pytest.raises(InvalidUsageError):
        client.send({"meter_token": token})  # type: ignore[arg-type]


def test_send_async(client: FluxrateClient, fluxrate_server: DevServer) -> None:
    token = fluxrate_server.meter_token("api_calls")

    async def go() -> list[dict[str, object]]:
        return await asyncio.gather(
            *(client.send_async(UsageEvent.create(token, f"a{i}")) for i in range(10))
        )

    records = asyncio.run(go())
    assert len({r["id"] for r in records}) == 10


def test_send_to_nowhere_raises_transport_error() -> None:
    with scripted_server() as server:
        port = server.port
    client = FluxrateClient("k", f"http://127.0.0.1:{port}", request_timeout=2)
    try:
        with pytest.raises(TransportError):
            client.send(UsageEvent.create("m", "c"))
    finally:
        client.close()


def test_rest_mode(fluxrate_server: DevServer, tmp_path: Path) -> None:
    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        access_token=fluxrate_server.access_token(),
        failed_events_path=tmp_path / "f.jsonl",
    )
    try:
        customer_id = client.send(UsageEvent.create(token, "rest-cust"))["customer_id"]
        event = UsageEvent.rest(fluxrate_server.meter_id("api_calls"), str(customer_id), 5)
        assert client.enqueue(event)
        assert client.flush(10)
        assert client.stats.delivered == 1
        assert client.stats.failed == 0
        assert fluxrate_server.summary()["rest-cust"]["api_calls"] == 6
    finally:
        client.close()
    no_token = FluxrateClient(
        fluxrate_server.api_key, fluxrate_server.url, failed_events_path=tmp_path / "g.jsonl"
    )
    no_token.enqueue(UsageEvent.rest("m", "c"))
    no_token.close()
    line = json.loads((tmp_path / "g.jsonl").read_text())
    assert line["reason"] == "no_access_token"


def test_no_api_key_goes_to_the_failure_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLUXRATE_API_KEY", raising=False)
    path = tmp_path / "failed.jsonl"
    with caplog.at_level(logging.WARNING, logger="fluxrate_web"):
        client = FluxrateClient(base_url="http://127.0.0.1:1", failed_events_path=path)
        for i in range(3):
            assert client.track("m", f"c{i}") is not None
        assert client.flush(5)
        client.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["reason"] for x in lines] == ["no_api_key"] * 3
    assert client.stats.failed == 3
    assert len([r for r in caplog.records if "no API key" in r.getMessage()]) == 1


def test_queue_full_never_blocks(tmp_path: Path) -> None:
    path = tmp_path / "failed.jsonl"
    with scripted_server(delay=0.5) as server:
        client = FluxrateClient(
            "k", server.url, max_queue_size=5, max_in_flight=1, failed_events_path=path
        )
        results = [client.track("m", f"c{i}") for i in range(20)]
        assert sum(r is None for r in results) >= 10
        client.close(0.01)
    reasons = [json.loads(x)["reason"] for x in path.read_text().splitlines()]
    assert reasons.count("queue_full") >= 10
    assert len(reasons) + client.stats.delivered == 20


def test_close_flush_and_context_managers(fluxrate_server: DevServer, tmp_path: Path) -> None:
    token = fluxrate_server.meter_token("api_calls")
    with FluxrateClient(fluxrate_server.api_key, fluxrate_server.url) as client:
        client.track(token, "ctx", 1)
    assert client.closed
    assert client.stats.delivered == 1
    path = tmp_path / "late.jsonl"

    async def go() -> FluxrateClient:
        async with FluxrateClient(
            fluxrate_server.api_key, fluxrate_server.url, failed_events_path=path
        ) as aclient:
            aclient.track(token, "actx", 2)
            assert await aclient.flush_async(5)
        return aclient

    aclient = asyncio.run(go())
    assert aclient.stats.delivered == 1
    assert aclient.track(token, "after-close") is None  # closed: to the failure log
    assert json.loads(path.read_text())["reason"] == "client_closed"
    aclient.close()  # idempotent
    assert fluxrate_server.summary()["actx"]["api_calls"] == 2


def test_close_deadline_writes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "failed.jsonl"
    with scripted_server(delay=5) as server:
        client = FluxrateClient("k", server.url, max_in_flight=2, failed_events_path=path)
        for i in range(6):
            client.track("m", f"c{i}")
        assert wait_until(lambda: len(server.requests) >= 2, 5)
        client.close(0.2)
    reasons = [json.loads(x)["reason"] for x in path.read_text().splitlines()]
    assert reasons == ["shutdown_deadline"] * 6
    assert client.stats.failed == 6


def test_many_clients_share_one_thread(fluxrate_server: DevServer) -> None:
    token = fluxrate_server.meter_token("api_calls")
    clients = [FluxrateClient(fluxrate_server.api_key, fluxrate_server.url) for _ in range(3)]
    for i, c in enumerate(clients):
        c.track(token, f"multi{i}")
    names = [t.name for t in threading.enumerate() if t.name == "fluxrate-dispatcher"]
    assert len(names) == 1
    lanes = [c._lane for c in clients]
    runtime = lanes[0].runtime if lanes[0] else None
    assert runtime is not None
    assert all(lane is not None and lane.runtime is runtime for lane in lanes)
    for c in clients:
        assert c.flush(5)
        c.close()
    assert all(lane is not None and lane.closed for lane in lanes)
    assert not set(lanes) & runtime.lanes
    if not runtime.lanes:  # no other client of this process is alive: the thread stops
        assert wait_until(lambda: not runtime.thread.is_alive(), 5)


def test_a_dropped_client_drains_and_closes_its_connections() -> None:
    import gc

    with scripted_server() as server:
        client = FluxrateClient("k", server.url)
        for i in range(20):
            client.track("m", f"gc{i}")
        lane = client._lane
        assert lane is not None
        del client
        gc.collect()
        assert wait_until(lambda: lane.closed, 15), (lane.pending, lane.counters.delivered)
        assert (lane.counters.delivered, lane.counters.failed) == (20, 0)
        assert lane._transport is None  # connections closed
