"""fluxrate_web.testing: the fluxrate_events fixture and CapturingClient."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fluxrate_web.core.config import load_config
from fluxrate_web.core.events import UsageEvent
from fluxrate_web.core.metering import Metering
from fluxrate_web.testing import CapturedEvents, CapturingClient

A = "550e8400-e29b-41d4-a716-446655440000"
B = "650e8400-e29b-41d4-a716-446655440001"


class View:
    native = None

    def __init__(self, customer: str | None) -> None:
        self.customer = customer

    def header(self, name: str) -> str | None:
        return self.customer if name == "x-customer-id" else None

    def query(self, name: str) -> str | None:
        return None

    def state(self, name: str) -> object | None:
        return None

    def user(self) -> object | None:
        return None


def test_capturing_client_interface() -> None:
    client = CapturingClient()
    event = client.track(A, "c1", 3, metadata={"k": "v"})
    assert isinstance(event, UsageEvent)
    assert client.events == [event]
    assert client.track(A, "c1", -1) is None  # invalid: dropped, never raises
    assert client.track("", "c1") is None
    assert client.stats.dropped == 2
    assert len(client.dropped) == 2
    built = UsageEvent.create(B, "c2", 2)
    assert client.enqueue(built) is True
    client.note_dropped("because")
    assert client.stats.as_dict()["enqueued"] == 2
    assert client.flush() is True
    client.start()
    client.close()
    assert client.closed
    client.clear()
    assert client.events == []
    assert client.stats.dropped == 0


def test_captured_events_helpers() -> None:
    client = CapturingClient()
    Metering(load_config(overrides={"meters": {"api_calls": A, "ai_tokens": B}}), client=client)
    client.track(A, "c1", 1)
    client.track(B, "c1", 10)
    client.track(B, "c2", 5)
    events = client.events
    assert isinstance(events, CapturedEvents)
    assert len(events) == 3
    assert events[0].quantity == 1
    assert len(events[1:]) == 2
    assert events.total() == 16
    assert events.total("ai_tokens") == 15  # by name (known to a Metering of this process)
    assert events.total(B, customer="c2") == 5  # by token
    assert [e.customer_external_id for e in events.for_meter("ai_tokens")] == ["c1", "c2"]
    assert len(events.for_customer("c1")) == 2
    assert events.customers() == {"c1", "c2"}
    assert events == list(events)
    assert "CapturedEvents" in repr(events)


def test_metering_with_capturing_client_is_synchronous() -> None:
    client = CapturingClient()
    metering = Metering(
        load_config(
            overrides={
                "meters": {"api_calls": A},
                "customer": "header:X-Customer-Id",
                "default_meter": "api_calls",
            }
        ),
        client=client,
    )
    scope = metering.open_scope()
    plan = metering.route("/x", "GET")
    assert metering.finish(plan, View("c9"), scope, status=200) == 1
    assert client.events[0].customer_external_id == "c9"
    scope = metering.open_scope()
    assert metering.finish(plan, View(None), scope, status=200) == 0
    assert client.stats.dropped == 1


def test_fluxrate_events_fixture(fluxrate_events: CapturedEvents) -> None:
    client_module = pytest.importorskip("fluxrate_web.core.client")
    # A real FluxrateClient pointing nowhere: nothing is sent while the fixture captures.
    client = client_module.FluxrateClient(api_key="org_live_x", base_url="http://127.0.0.1:9")
    try:
        metering = Metering(
            load_config(
                overrides={
                    "meters": {"api_calls": A},
                    "customer": "header:X-Customer-Id",
                    "default_meter": "api_calls",
                }
            ),
            client=client,
        )
        scope = metering.open_scope()
        plan = metering.route("/x", "GET")
        assert metering.finish(plan, View("c1"), scope, status=200) == 1
        assert len(fluxrate_events) == 1
        assert fluxrate_events[0].customer_external_id == "c1"
        assert fluxrate_events.total("api_calls") == 1
        fluxrate_events.clear()
        assert len(fluxrate_events) == 0
    finally:
        client.close(timeout=0)


def test_plugin_is_registered_and_imports_no_framework(tmp_path: Path) -> None:
    test_file = tmp_path / "test_user_app.py"
    test_file.write_text(
        textwrap.dedent(
            """
            import sys

            FRAMEWORKS = ("django", "flask", "starlette", "fastapi", "uvicorn", "httpx")

            def test_fixture_available(fluxrate_events):
                assert len(fluxrate_events) == 0
                loaded = [m for m in sys.modules if m.split(".")[0] in FRAMEWORKS]
                assert loaded == [], loaded
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:django",
            "-W",
            "error",
            str(test_file),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_import_is_cheap() -> None:
    code = (
        "import sys, fluxrate_web.testing, fluxrate_web;"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('django','flask','starlette','fastapi','yaml','wrapt','asyncio','ssl')];"
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
