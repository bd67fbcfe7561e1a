"""The example project, end to end through Django's test clients, events captured in memory
with the ``fluxrate_events`` fixture (fluxrate-web's pytest plugin)."""

import io
import json
import os
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.checks import run_checks
from django.core.management import call_command
from django.test import AsyncClient, Client
from fluxdemo.accounts.models import ApiToken, Organisation, Profile

from fluxrate_web.testing import CapturedEvents

API_CALLS = os.environ["FLUXRATE_METER_API_CALLS"]
REPORTS = os.environ["FLUXRATE_METER_REPORTS"]
EXPORT_BYTES = os.environ["FLUXRATE_METER_EXPORT_BYTES"]


@pytest.fixture
def token(db: Any) -> str:
    """An API token of alice, member of the organisation "acme"."""
    org = Organisation.objects.create(name="Acme", external_id="acme")
    user = get_user_model().objects.create(username="alice")
    Profile.objects.create(user=user, organisation=org)
    return ApiToken.objects.create(user=user).key


def auth(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def billed(events: CapturedEvents) -> list[tuple[str, str, Any]]:
    return [(e.meter_token, e.customer_external_id, e.quantity) for e in events]


def test_json_view_is_billed_to_the_organisation(
    token: str, fluxrate_events: CapturedEvents
) -> None:
    response = Client().get("/api/forecast?city=paris", **auth(token))
    assert response.status_code == 200
    assert response.json()["city"] == "paris"
    assert billed(fluxrate_events) == [(API_CALLS, "acme", 1)]


def test_errors_and_anonymous_calls_are_not_billed(
    token: str, fluxrate_events: CapturedEvents
) -> None:
    client = Client()
    assert client.get("/api/forecast?city=atlantis", **auth(token)).status_code == 404
    assert client.get("/api/forecast?city=paris").status_code == 401
    assert client.get("/api/forecast?city=paris", **auth("wrong")).status_code == 401
    assert client.get("/health").status_code == 200
    assert billed(fluxrate_events) == []


def test_class_based_view(token: str, fluxrate_events: CapturedEvents) -> None:
    client = Client()
    assert client.get("/api/reports/", **auth(token)).json()["organisation"] == "acme"
    created = client.post(
        "/api/reports/",
        data=json.dumps({"kind": "monthly"}),
        content_type="application/json",
        **auth(token),
    )
    assert created.status_code == 202
    rejected = client.post("/api/reports/", data="x", content_type="text/plain", **auth(token))
    assert rejected.status_code == 415
    # GET is an API call (fluxrate.yaml); POST is a report (@meter on the method)
    assert billed(fluxrate_events) == [(API_CALLS, "acme", 1), (REPORTS, "acme", 1)]


@pytest.mark.django_db(transaction=True)
def test_async_view(fluxrate_events: CapturedEvents) -> None:
    org = Organisation.objects.create(name="Globex", external_id="globex")
    user = get_user_model().objects.create(username="hank")
    Profile.objects.create(user=user, organisation=org)
    key = ApiToken.objects.create(user=user).key
    response = async_to_sync(AsyncClient().get)(
        "/api/search", {"q": "li"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.json() == {"results": ["lima"]}
    assert billed(fluxrate_events) == [(API_CALLS, "globex", 1)]


def test_streamed_download_is_billed_once_it_was_sent(
    token: str, fluxrate_events: CapturedEvents
) -> None:
    response = Client().get("/api/exports/2024.csv", **auth(token))
    assert response.status_code == 200
    assert billed(fluxrate_events) == []  # the view returned; nothing was sent yet
    body = b"".join(response.streaming_content)
    assert body.startswith(b"day,city,celsius\n")
    assert body.count(b"\n") == 1 + 366 * 3
    assert billed(fluxrate_events) == [(API_CALLS, "acme", 1), (EXPORT_BYTES, "acme", len(body))]


def test_configuration_checks_pass() -> None:
    assert [m.id for m in run_checks() if m.id.startswith("fluxrate.E")] == []


def test_manage_py_fluxrate_routes() -> None:
    out = io.StringIO()
    call_command("fluxrate", "routes", stdout=out)
    text = out.getvalue()
    rows = {tuple(line.split()[:3]) for line in text.splitlines()[2:]}
    assert ("/health", "health", "*") in rows
    assert any(
        line.startswith("/api/exports/{}.csv") and "export_bytes x response_bytes" in line
        for line in text.splitlines()
    )
    assert any(
        line.startswith("/api/reports") and " POST " in line and "reports" in line
        for line in text.splitlines()
    )
