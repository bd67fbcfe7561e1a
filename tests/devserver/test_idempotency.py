"""Idempotency: a repeated key answers the original event (200, same id) and stores nothing.

Scope: the organisation (every API key of it, every meter and customer); retention: as long
as the event is stored (until ``POST /_dev/reset``, or forever in a ``--db`` file).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from fluxrate_web.devserver import DevServer

from .conftest import TRACK, Track

MakeBody = Callable[..., dict[str, Any]]
SECOND_KEY = "org_live_devserver_tests_second_writer"
OTHER_ORG_KEY = "org_live_devserver_tests_idem_other_org"


@pytest.fixture(scope="module")
def keys(devserver: DevServer) -> None:
    devserver.seed(
        {
            "api_keys": [SECOND_KEY],
            "organizations": [
                {
                    "name": "tests-idem-other",
                    "api_keys": [OTHER_ORG_KEY],
                    "meters": {"api_calls": "SUM"},
                }
            ],
        }
    )


def test_repeated_key_returns_the_original_event(server: DevServer, track: Track) -> None:
    first = track(quantity=5, idempotency_key="order_789_step_3")
    again = track(quantity=5, idempotency_key="order_789_step_3")
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotency-mismatch" not in again.headers
    assert "idempotent-replayed" not in first.headers
    assert len(server.events()) == 1
    assert server.summary() == {"acme": {"api_calls": 5}}
    assert server.track_requests() == 2
    assert server.stats()["track_responses"] == {"200": 1, "201": 1}


def test_replay_with_a_different_payload_still_answers_the_original(
    server: DevServer, track: Track
) -> None:
    first = track(quantity=5, idempotency_key="k-1")
    changed = track(quantity=7, customer="globex", idempotency_key="k-1")
    assert changed.status_code == 200
    assert changed.json() == first.json()
    assert changed.headers["idempotency-mismatch"] == "true"
    assert server.summary() == {"acme": {"api_calls": 5}}  # globex was not even created


def test_key_scope_is_the_organization(server: DevServer, track: Track) -> None:
    first = track(meter="api_calls", idempotency_key="shared")
    other_meter = track(meter="peak", customer="globex", idempotency_key="shared")
    assert other_meter.status_code == 200
    assert other_meter.json()["id"] == first.json()["id"]
    assert len(server.events()) == 1


@pytest.mark.usefixtures("keys")
def test_every_api_key_of_the_organization_shares_the_keys(
    server: DevServer, client: httpx.Client, make_body: MakeBody
) -> None:
    body = make_body(idempotency_key="cross-key")
    first = client.post(TRACK, json=body)
    second = client.post(TRACK, json=body, headers={"X-API-Key": SECOND_KEY})
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]


@pytest.mark.usefixtures("keys")
def test_another_organization_has_its_own_keys(
    server: DevServer, client: httpx.Client, make_body: MakeBody
) -> None:
    mine = client.post(TRACK, json=make_body(idempotency_key="same-key"))
    theirs_body = make_body(idempotency_key="same-key")
    theirs_body["meter_token"] = server.meter_token("api_calls", org="tests-idem-other")
    theirs = client.post(TRACK, json=theirs_body, headers={"X-API-Key": OTHER_ORG_KEY})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


def test_events_without_a_key_are_never_deduplicated(server: DevServer, track: Track) -> None:
    assert [track().status_code for _ in range(3)] == [201, 201, 201]
    assert server.summary() == {"acme": {"api_calls": 3}}


def test_a_failed_request_does_not_consume_the_key(server: DevServer, track: Track) -> None:
    assert track(quantity=0, idempotency_key="retry-me").status_code == 422
    assert track(quantity=2, idempotency_key="retry-me").status_code == 201


def test_reset_forgets_the_keys(server: DevServer, track: Track) -> None:
    assert track(idempotency_key="before-reset").status_code == 201
    server.reset()
    assert track(idempotency_key="before-reset").status_code == 201


def test_concurrent_duplicates_store_exactly_one_event(
    server: DevServer, make_body: MakeBody
) -> None:
    body = make_body(quantity=3, idempotency_key="racing")

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=25, max_keepalive_connections=25)
        headers = {"X-API-Key": server.api_key}
        async with httpx.AsyncClient(base_url=server.url, limits=limits, headers=headers) as c:
            return await asyncio.gather(*(c.post(TRACK, json=body) for _ in range(50)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(server.events()) == 1
    assert server.summary() == {"acme": {"api_calls": 3}}
