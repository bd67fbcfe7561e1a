"""POST /api/v1/usage with the dashboard's JWT cookie, and `fluxrate-web token`."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import pytest

from fluxrate_web.cli import main
from fluxrate_web.devserver import DevServer, jwt

from .conftest import Track

USAGE = "/api/v1/usage"


def customer_id(server: DevServer, external_id: str) -> str:
    state = server.request("GET", "/_dev/state")
    [org] = [o for o in state["organizations"] if o["name"] == "default"]
    found: str = org["customers"][external_id]
    return found


def post_usage(server: DevServer, body: dict[str, Any], token: str | None) -> httpx.Response:
    headers = {} if token is None else {"Cookie": f"access_token={token}"}
    with httpx.Client(base_url=server.url) as http:
        return http.post(USAGE, json=body, headers=headers)


@pytest.fixture
def acme(server: DevServer, track: Track) -> str:
    assert track(customer="acme").status_code == 201
    return customer_id(server, "acme")


def test_usage_with_a_valid_token_is_201(server: DevServer, acme: str) -> None:
    body = {
        "meter_id": server.meter_id("api_calls"),
        "customer_id": acme,
        "quantity": 100,
        "timestamp": "2025-01-15T10:30:00Z",
    }
    response = post_usage(server, body, server.access_token())
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["quantity"] == "100"
    assert created["customer_id"] == acme
    assert created["meter_id"] == server.meter_id("api_calls")
    assert created["timestamp"] == "2025-01-15T10:30:00Z"
    assert server.summary() == {"acme": {"api_calls": 101}}
    assert [e["source"] for e in server.events()] == ["sdk", "rest"]


def test_usage_takes_an_idempotency_key_too(server: DevServer, acme: str) -> None:
    body = {
        "meter_id": server.meter_id("peak"),
        "customer_id": acme,
        "quantity": 4,
        "idempotency_key": "rest-1",
    }
    token = server.access_token()
    first, again = post_usage(server, body, token), post_usage(server, body, token)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]


def forged(claims: dict[str, Any], alg: str = "HS256") -> str:
    def b64(data: dict[str, Any]) -> str:
        raw = json.dumps(data).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}."


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "not-a-jwt",
        "a.b.c",
        "expired",
        "wrong-secret",
        "alg-none",
        "refresh",
        "unknown-org",
    ],
)
def test_usage_without_a_valid_token_is_401(
    server: DevServer, acme: str, token: str | None
) -> None:
    org_id = server.info["organizations"][0]["id"]
    tokens = {
        "expired": jwt.mint(server.jwt_secret, org_id=org_id, ttl=-10),
        "wrong-secret": jwt.mint("another-secret", org_id=org_id),
        "alg-none": forged({"org_id": org_id, "exp": time.time() + 60}, alg="none"),
        "refresh": jwt.encode(
            {"org_id": org_id, "type": "refresh", "exp": time.time() + 60}, server.jwt_secret
        ),
        "unknown-org": jwt.mint(server.jwt_secret, org_id="00000000-0000-0000-0000-000000000000"),
    }
    body = {"meter_id": server.meter_id("api_calls"), "customer_id": acme, "quantity": 1}
    response = post_usage(server, body, tokens.get(token or "", token))
    assert response.status_code == 401
    assert response.json()["detail"]
    assert server.summary() == {"acme": {"api_calls": 1}}


def test_api_key_does_not_authenticate_usage(server: DevServer, acme: str) -> None:
    body = {"meter_id": server.meter_id("api_calls"), "customer_id": acme, "quantity": 1}
    with httpx.Client(base_url=server.url) as http:
        response = http.post(USAGE, json=body, headers={"X-API-Key": server.api_key})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("change", "status", "detail"),
    [
        ({"meter_id": "00000000-0000-0000-0000-000000000000"}, 404, "Meter not found"),
        ({"customer_id": "00000000-0000-0000-0000-000000000000"}, 404, "Customer not found"),
        ({"meter_id": None}, 422, "meter_id: field required"),
        ({"customer_id": None}, 422, "customer_id: field required"),
        ({"quantity": 0}, 422, "quantity: must be greater than 0"),
        ({"timestamp": "soon"}, 422, "timestamp: must be an ISO-8601"),
    ],
)
def test_usage_errors(
    server: DevServer, acme: str, change: dict[str, Any], status: int, detail: str
) -> None:
    body = {"meter_id": server.meter_id("api_calls"), "customer_id": acme, "quantity": 1}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    response = post_usage(server, body, server.access_token())
    assert response.status_code == status
    assert response.json()["detail"].startswith(detail)


def test_token_cli_mints_a_working_cookie(
    server: DevServer, acme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--cookie", "--secret", server.jwt_secret, "--ttl", "60"]) == 0
    cookie = capsys.readouterr().out.strip()
    assert cookie.startswith("access_token=")
    claims = jwt.decode(cookie.split("=", 1)[1], server.jwt_secret)
    assert claims["exp"] - claims["iat"] == 60
    body = {"meter_id": server.meter_id("level"), "customer_id": acme, "quantity": 9}
    with httpx.Client(base_url=server.url) as http:
        response = http.post(USAGE, json=body, headers={"Cookie": f"theme=dark; {cookie}"})
    assert response.status_code == 201, response.text


def test_admin_endpoint_mints_tokens(server: DevServer, acme: str) -> None:
    minted = server.request("POST", "/_dev/token", {"ttl": 30})
    assert minted["expires_in"] == 30
    body = {"meter_id": server.meter_id("api_calls"), "customer_id": acme, "quantity": 2}
    assert post_usage(server, body, minted["access_token"]).status_code == 201
