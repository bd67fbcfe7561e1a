"""The read side: aggregations, the summary, per-meter usage and events, customers, the page."""

from __future__ import annotations

import httpx
import pytest

from fluxrate_web.devserver import DevServer

from .conftest import Track

T = "2025-03-{:02d}T{:02d}:00:00Z"


def test_sum_adds_quantities(server: DevServer, track: Track) -> None:
    for quantity in (1, 2.5, 3):
        assert track(meter="api_calls", quantity=quantity).status_code == 201
    track(meter="api_calls", customer="globex", quantity=10)
    assert server.summary() == {"acme": {"api_calls": 6.5}, "globex": {"api_calls": 10}}


def test_max_keeps_the_largest(server: DevServer, track: Track) -> None:
    for quantity in (3, 9, 4):
        track(meter="peak", quantity=quantity)
    assert server.summary() == {"acme": {"peak": 9}}


def test_unique_count_counts_distinct_user_ids(server: DevServer, track: Track) -> None:
    for user in ("u1", "u2", "u1", 7, "7", 7):
        assert track(meter="seats", metadata={"user_id": user}).status_code == 201
    track(meter="seats", customer="globex", metadata={"user_id": "u1"})
    # "7" and 7 are different users; quantities do not matter
    assert server.summary() == {"acme": {"seats": 4}, "globex": {"seats": 1}}


def test_last_follows_the_event_timestamp_not_the_arrival(server: DevServer, track: Track) -> None:
    track(meter="level", quantity=5, timestamp=T.format(2, 10))
    track(meter="level", quantity=8, timestamp=T.format(3, 10))  # the latest timestamp
    track(meter="level", quantity=1, timestamp=T.format(1, 10))  # arrives last, is older
    assert server.summary() == {"acme": {"level": 8}}


def test_last_breaks_timestamp_ties_by_arrival(server: DevServer, track: Track) -> None:
    for quantity in (4, 6, 2):
        track(meter="level", quantity=quantity, timestamp=T.format(5, 12))
    assert server.summary() == {"acme": {"level": 2}}


def test_summary_has_every_customer_and_only_metered_meters(
    server: DevServer, track: Track
) -> None:
    track(meter="api_calls", quantity=2)
    track(meter="peak", customer="globex", quantity=3)
    assert server.summary() == {"acme": {"api_calls": 2}, "globex": {"peak": 3}}


def test_summary_period_is_start_inclusive_end_exclusive(server: DevServer, track: Track) -> None:
    for day, quantity in ((1, 1), (2, 10), (3, 100)):
        track(quantity=quantity, timestamp=T.format(day, 0))
    window = server.request(
        "GET", "/_dev/summary?start=2025-03-02T00:00:00Z&end=2025-03-03T00:00:00Z"
    )
    assert window == {"acme": {"api_calls": 10}}
    whole_days = server.request("GET", "/_dev/summary?start=2025-03-02&end=2025-03-03")
    assert whole_days == {"acme": {"api_calls": 110}}  # a plain end date includes that day


def test_dev_events_filters(server: DevServer, track: Track) -> None:
    track(meter="api_calls", customer="acme", quantity=1)
    track(meter="peak", customer="acme", quantity=2)
    track(meter="api_calls", customer="globex", quantity=3)
    assert [e["quantity"] for e in server.events()] == ["1", "2", "3"]
    assert [e["quantity"] for e in server.events("api_calls")] == ["1", "3"]
    assert [e["quantity"] for e in server.events(customer="globex")] == ["3"]
    assert server.events(customer="nobody") == []
    assert {e["meter"] for e in server.events()} == {"api_calls", "peak"}


# -- /api/v1/meters/{id}/events and /usage ------------------------------------------------------


def test_meter_events_are_paginated_newest_first(
    server: DevServer, client: httpx.Client, track: Track
) -> None:
    for n in range(1, 26):
        track(quantity=n, idempotency_key=f"e{n}")
    url = f"/api/v1/meters/{server.meter_id('api_calls')}/events"
    first = client.get(url, params={"page_size": 10}).json()
    assert first["meta"] == {"page": 1, "page_size": 10, "total": 25, "total_pages": 3}
    assert [row["quantity"] for row in first["data"]] == [str(n) for n in range(25, 15, -1)]
    row = first["data"][0]
    assert set(row) >= {
        "id",
        "customer_id",
        "meter_id",
        "quantity",
        "ingested_at",
        "idempotency_key",
        "meta_data",
    }
    assert row["idempotency_key"] == "e25"
    last = client.get(url, params={"page": 3, "page_size": 10}).json()
    assert [row["quantity"] for row in last["data"]] == ["5", "4", "3", "2", "1"]
    default = client.get(url).json()
    assert default["meta"]["page_size"] == 20
    assert client.get(url, params={"page": 4, "page_size": 10}).json()["data"] == []


@pytest.mark.parametrize(
    "params", [{"page_size": 101}, {"page_size": 0}, {"page": 0}, {"page": "x"}]
)
def test_meter_events_bad_paging_is_422(
    server: DevServer, client: httpx.Client, params: dict[str, int | str]
) -> None:
    url = f"/api/v1/meters/{server.meter_id('api_calls')}/events"
    assert client.get(url, params=params).status_code == 422


def test_meter_usage_applies_the_aggregation_per_customer_and_period(
    server: DevServer, client: httpx.Client, track: Track
) -> None:
    track(meter="peak", quantity=3, timestamp=T.format(1, 9))
    track(meter="peak", quantity=7, timestamp=T.format(1, 15))
    track(meter="peak", quantity=5, timestamp=T.format(2, 9))
    track(meter="peak", customer="globex", quantity=4, timestamp=T.format(2, 10))
    url = f"/api/v1/meters/{server.meter_id('peak')}/usage"
    params = {"start_date": "2025-03-01", "end_date": "2025-03-31", "group_by": "day"}
    usage = client.get(url, params=params).json()
    assert usage["meter_id"] == server.meter_id("peak")
    assert usage["event_count"] == 4
    assert usage["unique_customers"] == 2
    assert usage["total_usage"] == 7 + 4  # acme's max + globex's max
    assert usage["period_start"] == "2025-03-01T00:00:00Z"
    assert usage["period_end"] == "2025-04-01T00:00:00Z"
    assert usage["grouped_data"] == [
        {"period": "2025-03-01T00:00:00Z", "usage": 7, "event_count": 2},
        {"period": "2025-03-02T00:00:00Z", "usage": 9, "event_count": 2},
    ]
    acme_id = server.events()[0]["customer_id"]
    only_acme = client.get(url, params={**params, "customer_id": acme_id}).json()
    assert only_acme["total_usage"] == 7
    hourly = client.get(url, params={**params, "group_by": "hour"}).json()
    assert len(hourly["grouped_data"]) == 4
    assert client.get(url, params={**params, "group_by": "year"}).status_code == 422


def test_read_endpoints_need_credentials(server: DevServer, client: httpx.Client) -> None:
    url = f"/api/v1/meters/{server.meter_id('api_calls')}/usage"
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get(url).status_code == 401
        cookie = {"Cookie": f"access_token={server.access_token()}"}
        assert anonymous.get(url, headers=cookie).status_code == 200
    server.seed({"api_keys": [{"key": "org_live_tests_write_only", "scopes": ["usage.write"]}]})
    assert client.get(url, headers={"X-API-Key": "org_live_tests_write_only"}).status_code == 403
    unknown = "/api/v1/meters/00000000-0000-0000-0000-000000000000/events"
    assert client.get(unknown).status_code == 404


# -- customers ----------------------------------------------------------------------------------


def test_customers_list_and_create(server: DevServer, client: httpx.Client, track: Track) -> None:
    track(customer="acme")
    listed = client.get("/api/v1/customers").json()
    assert [c["external_id"] for c in listed["data"]] == ["acme"]
    assert listed["meta"]["total"] == 1
    cookie = {"Cookie": f"access_token={server.access_token()}"}
    new = {"name": "Globex", "email": "billing@globex.test", "external_id": "globex"}
    created = client.post("/api/v1/customers", json=new, headers=cookie)
    assert created.status_code == 201
    assert created.json()["external_id"] == "globex"
    assert client.post("/api/v1/customers", json=new, headers=cookie).status_code == 409
    by_ext = client.get("/api/v1/customers", params={"external_id": "globex"}).json()
    assert [c["id"] for c in by_ext["data"]] == [created.json()["id"]]
    # the SDK finds the customer created through the dashboard API
    assert track(customer="globex").json()["customer_id"] == created.json()["id"]


# -- the page -----------------------------------------------------------------------------------


def test_dashboard_shows_customers_by_meters(
    server: DevServer, client: httpx.Client, track: Track
) -> None:
    track(meter="api_calls", customer="acme<script>", quantity=2.5)
    track(meter="seats", customer="acme<script>", metadata={"user_id": "u"})
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<meta http-equiv="refresh"' in html
    assert "acme&lt;script&gt;" in html
    assert "<script>" not in html
    assert "<td>2.5</td>" in html
    assert server.meter_token("api_calls") in html
    assert client.get("/", params={"org": "nope"}).status_code == 404


def test_health(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "ok"
