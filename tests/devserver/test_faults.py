"""Fault injection over real HTTP: error share, 429 + Retry-After, latency, dropped
connections, lost responses, outage windows; set at start and at run time."""

from __future__ import annotations

import math
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fluxrate_web.devserver import DevServer

from .conftest import TRACK, Track

MakeBody = Callable[..., dict[str, Any]]


def statuses(track: Track, n: int) -> list[int]:
    return [track().status_code for _ in range(n)]


def test_error_rate_gives_that_share_of_5xx(server: DevServer, track: Track) -> None:
    """30% over 1,000 requests: the count of 503s is Binomial(1000, 0.3), mean 300 and
    standard deviation sqrt(1000 * 0.3 * 0.7) = 14.5. We accept 300 +/- 75 (5.2 sigma: an
    unseeded run fails with probability < 1e-6); the seed makes this run reproducible."""
    server.set_faults(error_rate=0.3, status=503, seed=20261127)
    counts = Counter(statuses(track, 1000))
    assert set(counts) <= {201, 503}
    sigma = math.sqrt(1000 * 0.3 * 0.7)
    assert abs(counts[503] - 300) <= 75, counts
    assert abs(counts[503] - 300) <= 5.2 * sigma
    assert len(server.events()) == counts[201]
    stats = server.stats()
    assert stats["track_requests"] == 1000
    assert stats["track_responses"] == {"201": counts[201], "503": counts[503]}


def test_same_seed_same_sequence(server: DevServer, track: Track) -> None:
    server.set_faults(error_rate=0.5, seed=7)
    first = statuses(track, 40)
    server.set_faults(error_rate=0.5, seed=7)
    assert statuses(track, 40) == first
    assert 0 < first.count(503) < 40


def test_error_status_and_body(server: DevServer, track: Track) -> None:
    server.set_faults(error_rate=1.0, status=500)
    response = track()
    assert response.status_code == 500
    assert "injected fault" in response.json()["detail"]
    assert server.events() == []


def test_rate_limit_answers_429_with_retry_after(server: DevServer, track: Track) -> None:
    server.set_faults(rate_limit_rate=1.0, retry_after=3)
    response = track()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json()["detail"].startswith("Too Many Requests")
    server.set_faults(rate_limit_rate=1.0, retry_after=0.2)
    assert track().headers["retry-after"] == "1"  # whole seconds, rounded up
    assert server.events() == []


def test_latency_delays_the_answer(server: DevServer, track: Track) -> None:
    server.set_faults(latency_ms=150)
    started = time.perf_counter()
    assert track().status_code == 201
    assert time.perf_counter() - started >= 0.15


def test_dropped_connection_gets_no_answer(server: DevServer, make_body: MakeBody) -> None:
    server.set_faults(drop_rate=1.0)
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        body = httpx.Request("POST", server.url + TRACK, json=make_body()).content
        head = (
            f"POST {TRACK} HTTP/1.1\r\nHost: x\r\nX-API-Key: {server.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        assert sock.recv(65536) == b""  # closed without a byte of response
    assert server.events() == []
    assert server.stats()["track_responses"] == {"dropped": 1}
    assert "Exception" not in server.log_text()


def test_dropped_connection_surfaces_as_a_transport_error(server: DevServer, track: Track) -> None:
    server.set_faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        track()
    server.clear_faults()
    assert track().status_code == 201  # the client reconnects


def test_lost_response_after_store_is_answered_on_retry(server: DevServer, track: Track) -> None:
    server.set_faults(stored_drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        track(idempotency_key="lost-1")
    [stored] = server.events()
    server.clear_faults()
    retry = track(idempotency_key="lost-1")
    assert retry.status_code == 200
    assert retry.json()["id"] == stored["id"]
    assert len(server.events()) == 1


def test_outage_window_fails_everything_then_recovers(
    server: DevServer, track: Track, client: httpx.Client
) -> None:
    server.set_faults(outage_seconds=0.6)
    assert statuses(track, 5) == [503] * 5
    assert "outage" in track().json()["detail"]
    rest = client.get(f"/api/v1/meters/{server.meter_id('api_calls')}/events")
    assert rest.status_code == 503
    # admin endpoints and the page are never faulted
    assert 0 < server.request("GET", "/_dev/faults")["outage_remaining"] <= 0.6
    assert client.get("/").status_code == 200
    time.sleep(0.7)
    assert track().status_code == 201
    assert server.request("GET", "/_dev/faults")["outage_remaining"] == 0


def test_faults_are_exclusive_shares_of_one_draw(server: DevServer, track: Track) -> None:
    server.set_faults(error_rate=0.25, rate_limit_rate=0.25, seed=3)
    counts = Counter(statuses(track, 400))
    assert set(counts) == {201, 429, 503}
    for status in (201, 429, 503):
        assert abs(counts[status] - (200 if status == 201 else 100)) <= 60, counts


def test_clear_and_reset_remove_faults(server: DevServer, track: Track) -> None:
    server.set_faults(error_rate=1.0)
    server.clear_faults()
    assert track().status_code == 201
    server.set_faults(error_rate=1.0)
    server.reset()
    assert track().status_code == 201
    assert server.request("GET", "/_dev/faults")["active"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"error_rate": 1.5},
        {"error_rate": -0.1},
        {"error_rate": 0.6, "drop_rate": 0.6},
        {"status": 404},
        {"status": "503"},
        {"latency_ms": True},
        {"seed": "x"},
        {"bogus": 1},
    ],
)
def test_invalid_fault_settings_are_422(
    server: DevServer, client: httpx.Client, body: dict[str, Any]
) -> None:
    response = client.post("/_dev/faults", json=body)
    assert response.status_code == 422, response.text
    assert server.request("GET", "/_dev/faults")["active"] is False


def test_faults_set_at_start() -> None:
    with (
        DevServer(meters={"api_calls": "SUM"}, faults={"error_rate": 1.0, "status": 500}) as srv,
        httpx.Client(base_url=srv.url, headers={"X-API-Key": srv.api_key}) as http,
    ):
        body = {
            "meter_token": srv.meter_token("api_calls"),
            "customer_external_id": "acme",
            "quantity": 1,
        }
        assert http.post(TRACK, json=body).status_code == 500
        srv.clear_faults()
        assert http.post(TRACK, json=body).status_code == 201
