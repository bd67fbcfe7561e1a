"""Tests of the example API: what is billed, to whom, and how much."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from fastapi_app.main import create_app
from fluxrate_web.devserver import DevServer
from fluxrate_web.testing import CapturingClient

ACME = {"X-API-Key": "key-acme-123"}
GLOBEX = {"X-API-Key": "key-globex-456"}


def totals(client: CapturingClient, env: dict[str, str]) -> dict[tuple[str, str], Any]:
    names = {
        env["FLUXRATE_METER_API_CALLS"]: "api_calls",
        env["FLUXRATE_METER_TOKENS"]: "tokens",
        env["FLUXRATE_METER_STREAM_BYTES"]: "stream_bytes",
    }
    out: dict[tuple[str, str], Any] = {}
    for event in client.events:
        key = (event.customer_external_id, names[event.meter_token])
        out[key] = out.get(key, 0) + event.quantity
    return out


def test_chat_bills_a_call_and_its_tokens(example_env: dict[str, str]) -> None:
    events = CapturingClient()
    with TestClient(create_app(client=events)) as http:
        response = http.post(
            "/v1/chat", json={"prompt": "hello there", "max_tokens": 5}, headers=ACME
        )
    assert response.status_code == 200
    assert response.json()["tokens"] == 7
    assert totals(events, example_env) == {("acme", "api_calls"): 1, ("acme", "tokens"): 7}


def test_free_and_failed_requests_are_not_billed(example_env: dict[str, str]) -> None:
    events = CapturingClient()
    with TestClient(create_app(client=events, admin_token="admin")) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/v1/search", params={"q": "x"}).status_code == 401  # no API key
        assert http.post("/v1/chat", json={"prompt": ""}, headers=ACME).status_code == 422
        assert http.get("/admin/stats").status_code == 403
        stats = http.get("/admin/stats", headers={"X-Admin-Token": "admin"})
        assert stats.status_code == 200
        assert set(stats.json()) >= {"enqueued", "delivered", "failed", "dropped", "pending"}
    assert events.events == []
    assert events.stats.dropped == 0


def test_stream_bills_its_bytes_when_it_ends(example_env: dict[str, str]) -> None:
    events = CapturingClient()
    with TestClient(create_app(client=events)) as http:
        body = http.get("/v1/stream", params={"words": 12}, headers=GLOBEX).content
        http.get("/v1/search", params={"q": "fluxrate"}, headers=GLOBEX)
    assert body.count(b"\n") == 12
    assert totals(events, example_env) == {
        ("globex", "api_calls"): 2,
        ("globex", "stream_bytes"): len(body),
    }


def test_openapi_lists_the_api(example_env: dict[str, str]) -> None:
    schema = create_app(client=CapturingClient()).openapi()
    assert {"/health", "/v1/chat", "/v1/stream", "/v1/search"} <= set(schema["paths"])


def test_delivered_to_a_devserver(example_env: dict[str, str], monkeypatch: Any) -> None:
    meters = {
        "api_calls": "SUM:" + example_env["FLUXRATE_METER_API_CALLS"],
        "tokens": "SUM:" + example_env["FLUXRATE_METER_TOKENS"],
        "stream_bytes": "SUM:" + example_env["FLUXRATE_METER_STREAM_BYTES"],
    }
    with DevServer(meters=meters) as server:
        monkeypatch.setenv("FLUXRATE_API_KEY", server.api_key)
        monkeypatch.setenv("FLUXRATE_BASE_URL", server.url)
        app = create_app()
        with TestClient(app) as http:  # the lifespan shutdown flushes the client
            for _ in range(3):
                http.post("/v1/chat", json={"prompt": "one two", "max_tokens": 3}, headers=ACME)
            http.get("/v1/search", params={"q": "x"}, headers=GLOBEX)
        assert app.state.metering.client.stats.delivered == 7
        assert server.summary() == {
            "acme": {"api_calls": 3, "tokens": 15},
            "globex": {"api_calls": 1},
        }
