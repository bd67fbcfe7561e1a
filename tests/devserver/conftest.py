"""Helpers for the devserver's own tests: an httpx client and a ``track`` shortcut."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from fluxrate_web.devserver import DevServer

TRACK = "/api/v1/sdk/track"

Track = Callable[..., httpx.Response]


@pytest.fixture
def server(fluxrate_server: DevServer) -> DevServer:
    return fluxrate_server


@pytest.fixture(scope="session")
def session_client(devserver: DevServer) -> Iterator[httpx.Client]:
    # one client for the session: building an httpx.Client (its SSL context) costs ~30 ms
    with httpx.Client(
        base_url=devserver.url, headers={"X-API-Key": devserver.api_key}, timeout=10
    ) as http:
        yield http


@pytest.fixture
def client(server: DevServer, session_client: httpx.Client) -> httpx.Client:
    """A keep-alive client with the server's API key; the server was reset for this test."""
    return session_client


def event_body(
    server: DevServer,
    meter: str = "api_calls",
    customer: str = "acme",
    quantity: Any = 1,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "meter_token": server.meter_token(meter),
        "customer_external_id": customer,
        "quantity": quantity,
    }
    body.update(extra)
    return body


@pytest.fixture
def track(server: DevServer, client: httpx.Client) -> Track:
    """``track(meter="api_calls", customer="acme", quantity=1, **fields)`` -> response."""

    def send(
        meter: str = "api_calls", customer: str = "acme", quantity: Any = 1, **extra: Any
    ) -> httpx.Response:
        return client.post(TRACK, json=event_body(server, meter, customer, quantity, **extra))

    return send


@pytest.fixture
def make_body(server: DevServer) -> Callable[..., dict[str, Any]]:
    """``make_body(meter="api_calls", customer="acme", quantity=1, **fields)`` -> JSON dict."""

    def build(
        meter: str = "api_calls", customer: str = "acme", quantity: Any = 1, **extra: Any
    ) -> dict[str, Any]:
        return event_body(server, meter, customer, quantity, **extra)

    return build
