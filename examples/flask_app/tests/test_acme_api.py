"""Tests of the Acme API example, billing included: what a customer's own test suite looks like.

The responses are never closed and streams are read with ``.data``: events are there anyway.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from fluxrate_web.testing import CapturedEvents

ALICE = {"Authorization": "Bearer tok_alice"}
BOB = {"Authorization": "Bearer tok_bob"}


def json_of(response: TestResponse) -> Any:
    body = response.get_json()
    assert body is not None
    return body


def test_items_are_billed_per_call(client: FlaskClient, fluxrate_events: CapturedEvents) -> None:
    created = client.post("/v1/items", json={"name": "lamp"}, headers=ALICE)
    assert created.status_code == 201
    item_id = json_of(created)["id"]
    assert json_of(client.get(f"/v1/items/{item_id}", headers=ALICE))["name"] == "lamp"
    assert client.get("/v1/items", headers=BOB).json == {"items": []}  # Bob's store is his own
    assert fluxrate_events.total("api_calls", customer="cus_alice") == 2
    assert fluxrate_events.total("api_calls", customer="cus_bob") == 1


def test_update_counts_five(client: FlaskClient, fluxrate_events: CapturedEvents) -> None:
    item_id = json_of(client.post("/v1/items", json={"name": "desk"}, headers=ALICE))["id"]
    fluxrate_events.clear()
    client.put(f"/v1/items/{item_id}", json={"name": "big desk"}, headers=ALICE)
    assert [e.quantity for e in fluxrate_events.for_meter("api_calls")] == [5]


def test_failures_are_not_billed(client: FlaskClient, fluxrate_events: CapturedEvents) -> None:
    assert client.get("/v1/items").status_code == 401  # no token
    assert client.get("/v1/items/999999", headers=ALICE).status_code == 404
    assert client.post("/v1/items", json={}, headers=ALICE).status_code == 422
    assert client.get("/healthz").status_code == 200  # excluded in fluxrate.yaml
    assert len(fluxrate_events) == 0


def test_chat_bills_the_call_and_its_tokens(
    client: FlaskClient, fluxrate_events: CapturedEvents
) -> None:
    reply = client.post("/v1/chat/completions", json={"prompt": "hi there"}, headers=ALICE)
    assert reply.json == {"text": "You said: hi there", "usage": {"tokens": 4}}
    assert fluxrate_events.total("api_calls", customer="cus_alice") == 1
    assert fluxrate_events.total("tokens", customer="cus_alice") == 4


def test_streamed_chat_bills_when_the_stream_is_read(
    client: FlaskClient, fluxrate_events: CapturedEvents
) -> None:
    reply = client.post(
        "/v1/chat/completions", json={"prompt": "one two three", "stream": True}, headers=BOB
    )
    assert reply.mimetype == "text/event-stream"
    assert len(fluxrate_events) == 0  # nothing sent yet: not billed yet
    body = reply.data.decode()  # the whole stream
    assert body.startswith("data: You\n\n")
    assert body.endswith("data: [DONE]\n\n")
    assert fluxrate_events.total("api_calls", customer="cus_bob") == 1
    assert fluxrate_events.total("tokens", customer="cus_bob") == 5


def test_stream_abandoned_by_the_client(
    client: FlaskClient, fluxrate_events: CapturedEvents
) -> None:
    reply = client.post(
        "/v1/chat/completions", json={"prompt": "a b c d e f", "stream": True}, headers=ALICE
    )
    reply.close()  # the client went away after the first token
    assert len(fluxrate_events) == 0  # a disconnect is not billed (bill_on_disconnect: false)


def test_cli_lists_the_metered_routes(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["fluxrate", "routes"])
    assert result.exit_code == 0
    assert "/v1/chat/completions" in result.output
    assert "state:customer_id" in result.output
    check = app.test_cli_runner().invoke(args=["fluxrate", "check"])
    assert check.exit_code == 0, check.output
