"""The fixtures work: a reset server, reachable over loopback HTTP."""

from __future__ import annotations

import httpx

from fluxrate_web.devserver import DevServer


def test_fixture_server_tracks_an_event(fluxrate_server: DevServer) -> None:
    body = {
        "meter_token": fluxrate_server.meter_token("api_calls"),
        "customer_external_id": "acme",
        "quantity": 3,
    }
    with httpx.Client(base_url=fluxrate_server.url) as client:
        response = client.post(
            "/api/v1/sdk/track", json=body, headers={"X-API-Key": fluxrate_server.api_key}
        )
    assert response.status_code == 201
    assert fluxrate_server.summary() == {"acme": {"api_calls": 3}}
    assert fluxrate_server.track_requests() == 1


def test_fixture_resets_between_tests(fluxrate_server: DevServer) -> None:
    assert fluxrate_server.events() == []
    assert fluxrate_server.track_requests() == 0
