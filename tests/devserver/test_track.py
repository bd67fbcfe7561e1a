"""POST /api/v1/sdk/track over real HTTP: auth, validation, meters, customers, the 201 body."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from fluxrate_web.devserver import DevServer

from .conftest import TRACK, Track

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MakeBody = Callable[..., dict[str, Any]]
READ_ONLY_KEY = "org_live_devserver_tests_read_only"
NO_SCOPE_KEY = "org_live_devserver_tests_no_scope"
OTHER_ORG_KEY = "org_live_devserver_tests_other_org"


@pytest.fixture(scope="module")
def extra_keys(devserver: DevServer) -> None:
    devserver.seed(
        {
            "api_keys": [
                {"key": READ_ONLY_KEY, "scopes": ["usage.read"]},
                {"key": NO_SCOPE_KEY, "scopes": []},
            ],
            "organizations": [
                {"name": "tests-other", "api_keys": [OTHER_ORG_KEY], "meters": {"calls": "SUM"}}
            ],
        }
    )


# -- 201 ----------------------------------------------------------------------------------------


def test_created_event_has_the_documented_body(server: DevServer, track: Track) -> None:
    response = track(quantity=100, timestamp="2025-01-15T10:30:00Z", metadata={"region": "eu"})
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {
        "id",
        "customer_id",
        "meter_id",
        "quantity",
        "timestamp",
        "created_at",
        "meta_data",
    }
    assert UUID.match(body["id"])
    assert UUID.match(body["customer_id"])
    assert body["meter_id"] == server.meter_id("api_calls")
    assert body["quantity"] == "100"
    assert body["timestamp"] == "2025-01-15T10:30:00Z"
    assert body["meta_data"] == {"region": "eu"}
    created = datetime.fromisoformat(body["created_at"])
    assert abs(created - datetime.now(UTC)) < timedelta(seconds=30)
    [stored] = server.events()
    assert stored["id"] == body["id"]
    assert stored["customer_external_id"] == "acme"
    assert stored["metadata"] == {"region": "eu"}


@pytest.mark.parametrize(
    ("sent", "answered"),
    [
        (1, "1"),
        (0.5, "0.5"),
        (1.50, "1.5"),
        (2.0, "2"),
        (12345678901234567, "12345678901234567"),
        (0.000001, "0.000001"),
    ],
)
def test_quantity_is_answered_as_a_plain_decimal_string(
    track: Track, sent: float, answered: str
) -> None:
    response = track(quantity=sent)
    assert response.status_code == 201, response.text
    assert response.json()["quantity"] == answered


def test_exponent_quantities_are_written_out(client: httpx.Client, make_body: MakeBody) -> None:
    raw = make_body(quantity=0)
    text = (
        httpx.Request("POST", "/", json=raw)
        .content.decode()
        .replace('"quantity":0', '"quantity":1e3')
    )
    response = client.post(TRACK, content=text, headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text
    assert response.json()["quantity"] == "1000"


@pytest.mark.parametrize(
    ("sent", "answered"),
    [
        ("2025-01-15T10:30:00Z", "2025-01-15T10:30:00Z"),
        ("2025-01-15T10:30:00.123Z", "2025-01-15T10:30:00.123Z"),
        ("2025-01-15T10:30:00.123456+00:00", "2025-01-15T10:30:00.123456Z"),
        ("2025-01-15T12:30:00+02:00", "2025-01-15T10:30:00Z"),
        ("2025-01-15T10:30:00", "2025-01-15T10:30:00Z"),  # no offset: UTC
        ("2025-01-15", "2025-01-15T00:00:00Z"),
    ],
)
def test_timestamps_are_normalised_to_utc(track: Track, sent: str, answered: str) -> None:
    response = track(timestamp=sent)
    assert response.status_code == 201, response.text
    assert response.json()["timestamp"] == answered


def test_timestamp_defaults_to_now(track: Track) -> None:
    for response in (track(), track(timestamp=None)):
        assert response.status_code == 201
        moment = datetime.fromisoformat(response.json()["timestamp"])
        assert abs(moment - datetime.now(UTC)) < timedelta(seconds=30)


def test_optional_fields_may_be_null_and_unknown_fields_are_ignored(track: Track) -> None:
    response = track(idempotency_key=None, metadata=None, properties={"x": 1})
    assert response.status_code == 201, response.text
    assert response.json()["meta_data"] is None


def test_unique_count_meter_takes_an_event_with_user_id(track: Track) -> None:
    response = track(meter="seats", metadata={"user_id": "u-1"})
    assert response.status_code == 201
    assert response.json()["meta_data"] == {"user_id": "u-1"}


# -- customers ----------------------------------------------------------------------------------


def test_unknown_customers_are_created_once(server: DevServer, track: Track) -> None:
    first = track(customer="new-co").json()
    second = track(customer="new-co").json()
    other = track(customer="other-co").json()
    assert first["customer_id"] == second["customer_id"] != other["customer_id"]
    assert server.summary() == {"new-co": {"api_calls": 2}, "other-co": {"api_calls": 1}}


# -- 401 / 403 ----------------------------------------------------------------------------------


def test_missing_api_key_is_401(server: DevServer, make_body: MakeBody) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        response = anonymous.post(TRACK, json=make_body())
    assert response.status_code == 401
    assert response.json() == {"detail": "Missing API key"}


def test_unknown_api_key_is_401(client: httpx.Client, make_body: MakeBody) -> None:
    response = client.post(TRACK, json=make_body(), headers={"X-API-Key": "org_live_nope"})
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid API key"}


@pytest.mark.usefixtures("extra_keys")
@pytest.mark.parametrize("key", [READ_ONLY_KEY, NO_SCOPE_KEY])
def test_key_without_usage_write_is_403(
    server: DevServer, client: httpx.Client, make_body: MakeBody, key: str
) -> None:
    response = client.post(TRACK, json=make_body(), headers={"X-API-Key": key})
    assert response.status_code == 403
    assert "usage.write" in response.json()["detail"]
    assert server.events() == []


def test_auth_is_checked_before_the_body(server: DevServer) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        response = anonymous.post(TRACK, content=b"not json")
    assert response.status_code == 401


# -- 404 ----------------------------------------------------------------------------------------


def test_unknown_meter_token_is_404(
    track: Track, client: httpx.Client, make_body: MakeBody
) -> None:
    body = make_body()
    body["meter_token"] = "550e8400-e29b-41d4-a716-446655440000"
    response = client.post(TRACK, json=body)
    assert response.status_code == 404
    assert response.json() == {"detail": "Meter not found"}


@pytest.mark.usefixtures("extra_keys")
def test_meter_of_another_organization_is_404(
    server: DevServer, client: httpx.Client, make_body: MakeBody
) -> None:
    response = client.post(TRACK, json=make_body(), headers={"X-API-Key": OTHER_ORG_KEY})
    assert response.status_code == 404
    other = make_body()
    other["meter_token"] = server.meter_token("calls", org="tests-other")
    assert client.post(TRACK, json=other).status_code == 404


# -- 422 / 400 ----------------------------------------------------------------------------------

MISSING = object()


@pytest.mark.parametrize(
    ("field", "value", "detail"),
    [
        ("meter_token", MISSING, "meter_token: field required"),
        ("meter_token", "", "meter_token: expected a non-empty string"),
        ("customer_external_id", MISSING, "customer_external_id: field required"),
        ("customer_external_id", None, "customer_external_id: field required"),
        ("customer_external_id", 42, "customer_external_id: expected a non-empty string"),
        ("customer_external_id", "x" * 256, "customer_external_id: at most 255 characters"),
        ("quantity", MISSING, "quantity: field required"),
        ("quantity", None, "quantity: field required"),
        ("quantity", 0, "quantity: must be greater than 0"),
        ("quantity", -3, "quantity: must be greater than 0"),
        ("quantity", -0.5, "quantity: must be greater than 0"),
        ("quantity", "5", "quantity: must be a number"),
        ("quantity", True, "quantity: must be a number"),
        ("quantity", [1], "quantity: must be a number"),
        ("quantity", 10**19, "quantity: must be at most 1e18"),
        ("timestamp", "yesterday", "timestamp: must be an ISO-8601 date-time string"),
        ("timestamp", 1736937000, "timestamp: must be an ISO-8601 date-time string"),
        ("timestamp", "2025-13-01T00:00:00Z", "timestamp: must be an ISO-8601"),
        ("timestamp", "9999-12-31T23:30:00-01:00", "timestamp: must be an ISO-8601"),
        ("idempotency_key", "", "idempotency_key: expected a non-empty string"),
        ("idempotency_key", 7, "idempotency_key: expected a non-empty string"),
        ("metadata", ["a"], "metadata: expected a JSON object"),
        ("metadata", "region=eu", "metadata: expected a JSON object"),
    ],
)
def test_invalid_fields_are_422(
    server: DevServer,
    client: httpx.Client,
    make_body: MakeBody,
    field: str,
    value: object,
    detail: str,
) -> None:
    body = make_body()
    if value is MISSING:
        del body[field]
    else:
        body[field] = value
    response = client.post(TRACK, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(detail)
    assert server.events() == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b'"a string"',
        b'{"meter_token": "t", "customer_external_id": "c", "quantity": NaN}',
        b'{"meter_token": "t", "customer_external_id": "c", "quantity": Infinity}',
        b"\xff\xfe",
    ],
)
def test_malformed_bodies_are_422(client: httpx.Client, raw: bytes) -> None:
    response = client.post(TRACK, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("body: ")


@pytest.mark.parametrize(
    "metadata",
    [None, {}, {"user_id": None}, {"user_id": ""}, {"user_id": True}, {"user_id": {"a": 1}}],
)
def test_unique_count_without_user_id_is_400(
    server: DevServer, track: Track, metadata: dict[str, Any] | None
) -> None:
    response = track(meter="seats", metadata=metadata)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("metadata.user_id: required")
    assert server.events() == []


def test_oversized_body_is_413(client: httpx.Client, make_body: MakeBody) -> None:
    response = client.post(TRACK, json=make_body(metadata={"blob": "x" * (1 << 20)}))
    assert response.status_code == 413


def test_wrong_method_and_path_answer_json(client: httpx.Client) -> None:
    assert client.get(TRACK).status_code == 405
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}


# -- a second server: strict customers, one validation status ----------------------------------


@pytest.fixture(scope="module")
def strict_server() -> Iterator[DevServer]:
    with DevServer(
        meters={"api_calls": "SUM"},
        customers=["acme"],
        strict_customers=True,
        extra_args=["--validation-status", "400"],
    ) as running:
        yield running


def test_strict_customers_answers_404_for_unknown_customers(strict_server: DevServer) -> None:
    with httpx.Client(base_url=strict_server.url) as http:
        headers = {"X-API-Key": strict_server.api_key}
        body = event_for(strict_server, "zed")
        response = http.post(TRACK, json=body, headers=headers)
        assert response.status_code == 404
        assert response.json() == {"detail": "Customer not found"}
        known = http.post(TRACK, json=event_for(strict_server, "acme"), headers=headers)
        assert known.status_code == 201
        seeded_id = strict_server.info["organizations"][0]["customers"]["acme"]
        assert known.json()["customer_id"] == seeded_id


def test_validation_status_flag_makes_every_validation_error_400(
    strict_server: DevServer,
) -> None:
    with httpx.Client(base_url=strict_server.url) as http:
        body = event_for(strict_server, "acme")
        body["quantity"] = 0
        response = http.post(TRACK, json=body, headers={"X-API-Key": strict_server.api_key})
    assert response.status_code == 400
    assert response.json() == {"detail": "quantity: must be greater than 0"}


def event_for(server: DevServer, customer: str) -> dict[str, Any]:
    return {
        "meter_token": server.meter_token("api_calls"),
        "customer_external_id": customer,
        "quantity": 1,
    }
