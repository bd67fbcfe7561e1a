"""The dashboard's page (``/``), the JSON it polls (``/_dev/dashboard``) and its script.

What a browser makes of them is in ``test_dashboard_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx
import pytest

from fluxrate_web.devserver import DevServer, dashboard, seed
from fluxrate_web.devserver.models import DEFAULT_METERS
from fluxrate_web.devserver.service import Service
from fluxrate_web.devserver.store import Store
from fluxrate_web.devserver.values import format_decimal
from fluxrate_web.devserver.web import DevState

from .conftest import Track

FEED = "/_dev/dashboard"
EVIL = '"><img id=pwned src=x onerror=alert(1)><script>alert(2)</script>'


def feed(client: httpx.Client, **params: str) -> dict[str, Any]:
    response = client.get(FEED, params=params)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def totals(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["external_id"]: c["totals"] for c in data["customers"]}


def test_feed_applies_each_meters_aggregation(client: httpx.Client, track: Track) -> None:
    for q in (1, 2, 3.5):
        track(meter="api_calls", customer="acme", quantity=q)
    track(meter="api_calls", customer="globex", quantity=10)
    for q in (3, 9, 4):
        track(meter="peak", customer="acme", quantity=q)
    for user in ("u1", "u2", "u1", 7, "7"):  # "7" and 7 are different users
        track(meter="seats", customer="acme", metadata={"user_id": user})
    track(meter="level", customer="acme", quantity=5, timestamp="2026-01-01T00:00:01Z")
    track(meter="level", customer="acme", quantity=8, timestamp="2026-01-01T00:00:02Z")
    track(meter="level", customer="acme", quantity=100, timestamp="2026-01-01T00:00:00Z")
    data = feed(client)
    assert totals(data) == {
        "acme": {"api_calls": "6.5", "peak": "9", "seats": "4", "level": "8"},
        "globex": {"api_calls": "10"},
    }
    assert data["billable_totals"] == {"api_calls": "16.5", "peak": "9", "seats": "4", "level": "8"}
    assert data["events_stored"] == 15
    assert data["customers_total"] == 2
    assert [m["name"] for m in data["meters"]] == ["api_calls", "level", "peak", "seats"]
    assert data["track_requests"] == 15
    assert data["track_responses"] == {"201": 15}
    assert data["faults"] == {
        "active": False,
        "outage_remaining": 0,
        "items": [],
        "settings": data["faults"]["settings"],
    }


def test_feed_matches_the_summary_endpoint(server: DevServer, track: Track) -> None:
    for i in range(30):
        track(meter=("api_calls", "peak", "level")[i % 3], customer=f"c{i % 4}", quantity=i + 1)
    data = server.request("GET", FEED)
    summary = server.summary()
    assert {c: {m: float(v) for m, v in t.items()} for c, t in totals(data).items()} == summary


def test_recent_events_newest_first_with_key_and_time(client: httpx.Client, track: Track) -> None:
    for i in range(25):
        track(customer=f"cust{i}", quantity=i + 1, idempotency_key=f"key-{i}")
    track(meter="peak", customer="zed", quantity=2.25, timestamp="2025-01-15T10:30:00.123Z")
    recent = feed(client)["recent_events"]
    assert len(recent) == 20
    newest = recent[0]
    assert newest["customer"] == "zed"
    assert newest["meter"] == "peak"
    assert newest["quantity"] == "2.25"
    assert newest["timestamp"] == "2025-01-15T10:30:00.123Z"
    assert newest["idempotency_key"] is None
    assert newest["received_at"].endswith("Z")
    assert [e["idempotency_key"] for e in recent[1:4]] == ["key-24", "key-23", "key-22"]
    assert recent[-1]["customer"] == "cust6"


def test_feed_describes_the_faults_that_are_on(server: DevServer, client: httpx.Client) -> None:
    server.set_faults(
        error_rate=0.25, status=500, rate_limit_rate=0.1, retry_after=2, latency_ms=15
    )
    faults = feed(client)["faults"]
    assert faults["active"] is True
    assert faults["items"] == [
        "error_rate=0.25: 25% answered 500",
        "rate_limit_rate=0.1: 10% answered 429 with Retry-After 2 s",
        "latency_ms=15: every /api/ request delayed 15 ms",
    ]
    server.set_faults(outage_seconds=30, drop_rate=0.05, stored_drop_rate=0.01)
    faults = feed(client)["faults"]
    assert 29 < faults["outage_remaining"] <= 30
    assert faults["items"][0].startswith("outage_seconds=30: every /api/ request answered 503, ")
    assert faults["items"][0].endswith(" s remaining")
    assert faults["items"][1:] == [
        "drop_rate=0.05: 5% dropped (connection closed, no answer)",
        "stored_drop_rate=0.01: 1% stored, then the connection is closed unanswered",
    ]
    server.set_faults(outage_seconds=0.05)
    time.sleep(0.1)
    assert feed(client)["faults"]["items"] == ["outage_seconds=0.05: the outage window is over"]
    server.clear_faults()
    assert feed(client)["faults"]["active"] is False


def test_track_responses_count_injected_failures(server: DevServer, track: Track) -> None:
    server.set_faults(error_rate=1.0, status=502)
    assert track().status_code == 502
    server.clear_faults()
    track()
    data = server.request("GET", FEED)
    assert data["track_responses"] == {"201": 1, "502": 1}
    assert data["track_requests"] == 2
    assert data["events_stored"] == 1


def test_totals_start_over_after_a_reset(server: DevServer, track: Track) -> None:
    # the page folds in new events incrementally; a reset must not leave stale totals
    track(customer="acme", quantity=5)
    assert totals(server.request("GET", FEED)) == {"acme": {"api_calls": "5"}}
    server.reset()
    assert server.request("GET", FEED)["customers"] == []
    track(customer="acme", quantity=2)
    track(customer="acme", quantity=1)
    data = server.request("GET", FEED)
    assert totals(data) == {"acme": {"api_calls": "3"}}
    assert data["events_stored"] == 2
    server.reset()
    track(customer="globex", quantity=7)
    assert totals(server.request("GET", FEED)) == {"globex": {"api_calls": "7"}}


def test_totals_follow_a_reseeded_aggregation(server: DevServer, track: Track) -> None:
    for q in (2, 5, 3):
        track(meter="api_calls", customer="acme", quantity=q)
    assert totals(server.request("GET", FEED))["acme"]["api_calls"] == "10"
    server.seed({"meters": {"api_calls": "MAX"}})
    try:
        assert totals(server.request("GET", FEED))["acme"]["api_calls"] == "5"
    finally:
        server.seed({"meters": {"api_calls": "SUM"}})


def test_feed_per_organization(server: DevServer, client: httpx.Client) -> None:
    server.seed({"organizations": [{"name": "initech", "meters": {"calls": "SUM"}}]})
    data = feed(client, org="initech")
    assert data["org"] == "initech"
    assert "initech" in data["orgs"]
    assert "default" in data["orgs"]
    missing = client.get(FEED, params={"org": "nope"})
    assert missing.status_code == 404
    assert missing.json() == {"detail": "unknown organization 'nope'"}


def test_page_is_server_rendered_escaped_and_locked_down(
    server: DevServer, client: httpx.Client, track: Track
) -> None:
    track(customer=EVIL, quantity=2.5, idempotency_key="<b>key</b>")
    server.set_faults(error_rate=0.5)
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    html = page.text
    # the untrusted id and key only ever appear escaped
    assert "&quot;&gt;&lt;img id=pwned src=x onerror=alert(1)&gt;&lt;script&gt;" in html
    assert "<img" not in html
    assert "alert(2)</script>" not in html
    assert "&lt;b&gt;key&lt;/b&gt;" in html
    assert "<b>key" not in html
    # totals, the fault state and the live script
    assert "<td>2.5</td>" in html
    assert "error_rate=0.5: 50% answered 503" in html
    assert '<script src="/_dev/dashboard.js" defer></script>' in html
    assert '<noscript><meta http-equiv="refresh"' in html
    assert 'data-feed="/_dev/dashboard?org=default"' in html
    assert server.meter_token("api_calls") in html


def test_page_for_an_org_with_an_unsafe_name(server: DevServer, client: httpx.Client) -> None:
    server.seed({"organizations": [{"name": "a&b <i>"}]})
    page = client.get("/", params={"org": "a&b <i>"})
    assert page.status_code == 200
    assert 'data-feed="/_dev/dashboard?org=a%26b%20%3Ci%3E"' in page.text
    assert "<i>" not in page.text
    unknown = client.get("/", params={"org": "<i>nope"})
    assert unknown.status_code == 404
    assert "<i>" not in unknown.text


def test_many_customers_are_capped_on_the_page(client: httpx.Client, track: Track) -> None:
    for i in range(205):
        track(customer=f"c{i:03d}")
    data = feed(client)
    assert len(data["customers"]) == 200
    assert data["customers_total"] == 205
    assert "showing 200 of 205 customers" in client.get("/").text


def test_script_builds_the_dom_without_parsing_html(client: httpx.Client) -> None:
    script = client.get("/_dev/dashboard.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    body = script.text
    assert "fetch(feed" in body
    assert "setTimeout(poll" in body
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in body


def test_the_page_is_never_faulted(server: DevServer, client: httpx.Client) -> None:
    server.set_faults(outage_seconds=30)
    assert client.get("/").status_code == 200
    assert client.get(FEED).status_code == 200
    assert client.get("/_dev/dashboard.js").status_code == 200


def test_incremental_totals_equal_a_full_recount(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, tiny fold chunks: whatever happens between two polls (events in several
    organisations, resets, an aggregation re-seeded), the page's totals are a full recount's."""
    monkeypatch.setattr(dashboard, "FOLD_CHUNK", 3)
    store = Store()
    base = seed.from_mapping(
        {
            "organizations": [
                {"name": "default", "meters": dict(DEFAULT_METERS)},
                {
                    "name": "other",
                    "api_keys": ["other_key"],
                    "meters": {"calls": "SUM", "top": "LAST"},
                },
            ]
        }
    )
    base.apply_defaults()
    store.apply_seed(base)
    service = Service(store)
    state = DevState(store, service)
    feed = dashboard.DashboardFeed(state)
    orgs = {o.name: o for o in store.orgs.values()}
    keys = {store.orgs[k.org_id].name: k.key for k in store.api_keys.values()}
    rng = random.Random(7)

    def send(org: str) -> None:
        meter = rng.choice(store.meters(orgs[org].id))
        body: dict[str, Any] = {
            "meter_token": meter.token,
            "customer_external_id": rng.choice(["acme", "globex", "initech"]),
            "quantity": rng.choice([1, 2, 0.5, 7]),
            "timestamp": f"2026-01-01T00:00:{rng.randrange(60):02d}Z",
            "metadata": {"user_id": rng.choice(["u1", "u2", 3])},
        }
        service.track(keys[org], json.dumps(body).encode())

    def check() -> None:
        for org in orgs.values():
            data = asyncio.run(feed.snapshot(org))
            expected = {
                c: {m: format_decimal(v) for m, v in t.items()}
                for c, t in service.summary(org).items()
            }
            assert totals(data) == expected
            assert data["events_stored"] == store.count_events(org_id=org.id)
            newest = list(store.events(org_id=org.id, newest_first=True, limit=20))
            assert [e["quantity"] for e in data["recent_events"]] == [r.quantity for r in newest]

    for step in range(60):
        for _ in range(rng.randrange(12)):
            send(rng.choice(["default", "other"]))
        if step % 17 == 16:
            state.reset()
        if step == 30:
            store.apply_seed(seed.from_mapping({"meters": {"api_calls": "MAX"}}))
        check()
    store.close()
