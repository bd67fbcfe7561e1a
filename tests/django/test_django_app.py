"""The Django app: settings.FLUXRATE, system checks, ``manage.py fluxrate``, ASGI capability."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import iscoroutinefunction
from django.core.checks import run_checks
from django.core.handlers.asgi import ASGIHandler
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.test.utils import override_settings
from djangotestproj.meters import API_CALLS, BASE_CONFIG, REPORTS

from fluxrate_web.django import _runtime, get_metering
from fluxrate_web.django.middleware import FluxrateMiddleware
from fluxrate_web.testing import CapturedEvents

ROOT = Path(__file__).resolve().parents[2]
CUSTOMER = {"HTTP_X_CUSTOMER_ID": "acme"}


@pytest.fixture
def fresh_runtime() -> Iterator[None]:
    """Settings overridden in the test rebuild the core (setting_changed), and again when the
    override ends; check that the process's own core is back."""
    yield
    assert _runtime.STATE.built
    assert (_runtime.STATE.runtime is None) == (_runtime.STATE.error is not None)


def ids(messages: list[Any]) -> list[str]:
    return sorted(m.id for m in messages if m.id.startswith("fluxrate."))


# -- settings.FLUXRATE ----------------------------------------------------------------------------


def test_settings_fluxrate_builds_the_core(
    fresh_runtime: None, fluxrate_events: CapturedEvents
) -> None:
    with override_settings(FLUXRATE=BASE_CONFIG):
        assert get_metering().config.source == "settings.FLUXRATE"
        assert Client().get("/plain/", **CUSTOMER).status_code == 200
    assert [(e.meter_token, e.customer_external_id) for e in fluxrate_events] == [
        (API_CALLS, "acme")
    ]


def test_settings_win_over_the_yaml_file(
    fresh_runtime: None, fluxrate_events: CapturedEvents, tmp_path: Path
) -> None:
    config = tmp_path / "fluxrate.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            meters:
              api_calls: {API_CALLS}
              reports: {REPORTS}
            customer: header:X-Customer-Id
            default_meter: api_calls
            """
        )
    )
    settings = {"CONFIG": config, "API_KEY": "org_live_test", "default_meter": "reports"}
    with override_settings(FLUXRATE=settings):
        metering = get_metering()
        assert metering.config.source == f"{config} + settings.FLUXRATE"
        Client().get("/plain/", **CUSTOMER)
    assert [e.meter_token for e in fluxrate_events] == [REPORTS]


def test_an_invalid_config_turns_metering_off_and_requests_pass(
    fresh_runtime: None, fluxrate_events: CapturedEvents
) -> None:
    with override_settings(FLUXRATE={**BASE_CONFIG, "DEFAULT_METER": "nope"}):
        assert _runtime.STATE.runtime is None
        assert Client().get("/plain/", **CUSTOMER).status_code == 200
    assert len(fluxrate_events) == 0


def test_disabled_config_adds_no_work(fresh_runtime: None) -> None:
    with override_settings(FLUXRATE={**BASE_CONFIG, "ENABLED": False}):
        assert _runtime.STATE.runtime is None
        assert _runtime.STATE.error is None
        assert ids(run_checks()) == []


# -- system checks --------------------------------------------------------------------------------


def test_checks_pass_for_a_good_config(fresh_runtime: None) -> None:
    with override_settings(FLUXRATE=BASE_CONFIG):
        assert ids(run_checks()) == []


def test_check_e001_names_the_key_and_what_to_change(fresh_runtime: None) -> None:
    with override_settings(FLUXRATE={**BASE_CONFIG, "DEFAULT_METER": "api_call"}):
        (message,) = [m for m in run_checks() if m.id == "fluxrate.E001"]
    assert "settings.FLUXRATE: DEFAULT_METER: unknown meter 'api_call'" in message.msg
    assert "did you mean 'api_calls'?" in message.msg
    assert "settings.FLUXRATE" in message.hint


def test_check_e001_for_a_yaml_error_names_file_and_line(
    fresh_runtime: None, tmp_path: Path
) -> None:
    config = tmp_path / "fluxrate.yaml"
    config.write_text(f"meters:\n  api_calls: {API_CALLS}\nbill_on: sometimes\n")
    with override_settings(FLUXRATE={"CONFIG": config, "API_KEY": "org_live_x"}):
        (message,) = [m for m in run_checks() if m.id == "fluxrate.E001"]
    assert f"{config}:3: bill_on:" in message.msg


def test_check_e002_settings_not_a_dict(fresh_runtime: None) -> None:
    with override_settings(FLUXRATE=["not", "a", "dict"]):
        assert ids(run_checks()) == ["fluxrate.E002"]


def test_check_w001_and_e003_middleware(fresh_runtime: None) -> None:
    with override_settings(FLUXRATE=BASE_CONFIG, MIDDLEWARE=[]):
        assert ids(run_checks()) == ["fluxrate.W001"]
    path = "fluxrate_web.django.FluxrateMiddleware"
    with override_settings(FLUXRATE=BASE_CONFIG, MIDDLEWARE=[path, path]):
        assert ids(run_checks()) == ["fluxrate.E003"]


def test_check_w002_no_api_key(fresh_runtime: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUXRATE_API_KEY", raising=False)
    with override_settings(FLUXRATE={**BASE_CONFIG, "API_KEY": None}):
        assert ids(run_checks()) == ["fluxrate.W002"]
    monkeypatch.setenv("FLUXRATE_API_KEY", "org_live_from_env")
    with override_settings(FLUXRATE={**BASE_CONFIG, "API_KEY": None}):
        assert ids(run_checks()) == []


def _project(tmp_path: Path, yaml_text: str) -> dict[str, str]:
    (tmp_path / "fluxrate.yaml").write_text(yaml_text)
    (tmp_path / "brokensite.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path
            SECRET_KEY = "x" * 50
            INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth",
                              "fluxrate_web.django"]
            MIDDLEWARE = ["fluxrate_web.django.FluxrateMiddleware"]
            ROOT_URLCONF = "brokensite"
            urlpatterns = []
            FLUXRATE = {"CONFIG": Path(__file__).parent / "fluxrate.yaml", "API_KEY": "org_live_x"}
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FLUXRATE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    env["DJANGO_SETTINGS_MODULE"] = "brokensite"
    return env


def test_manage_py_check_reports_a_bad_config(tmp_path: Path) -> None:
    env = _project(tmp_path, f"meters:\n  api_calls: {API_CALLS}\nendpoints:\n  - route: /x\n")
    result = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "(fluxrate.E001) Invalid fluxrate configuration:" in result.stderr
    assert "fluxrate.yaml:4: endpoints[0]: a rule needs 'meter:' or 'meters:'" in result.stderr
    assert "HINT:" in result.stderr
    assert "org_live_x" not in result.stderr + result.stdout


def test_manage_py_check_passes_a_good_config(tmp_path: Path) -> None:
    env = _project(tmp_path, f"meters:\n  api_calls: {API_CALLS}\ndefault_meter: api_calls\n")
    result = subprocess.run(
        [sys.executable, "-m", "django", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


# -- manage.py fluxrate ---------------------------------------------------------------------------


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("fluxrate", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_fluxrate_routes_lists_every_pattern_with_its_meters(fresh_runtime: None) -> None:
    config = {
        **BASE_CONFIG,
        "EXCLUDE": ["/exempt-*"],
        "ENDPOINTS": [
            {"route": "/download", "meter": "bytes_out", "quantity": "response_bytes"},
            {"name": "v1:item", "meter": "reports", "customer": "query:team"},
        ],
    }
    with override_settings(FLUXRATE=config):
        # DRF adds "head" to a viewset's actions on its first request; the listing is the same
        Client().get("/drf/things/", HTTP_X_CUSTOMER_ID="org_1")
        text = command("routes")
    lines = {line.split()[0] + " " + line.split()[2]: line for line in text.splitlines()[2:]}
    assert "ROUTE" in text.splitlines()[0]
    # routes as endpoint rules match them: a leading /, no trailing /, parameters as {}
    assert "api_calls" in lines["/plain *"]
    assert "bytes_out x response_bytes" in lines["/download *"]
    assert "query:team" in lines["/v1/items/{} *"]
    assert "api_calls" in lines["/legacy/{} *"]
    assert "(exempt)" in lines["/exempt *"]
    # class-based views: only the methods they implement, grouped by what they bill
    assert "api_calls" in lines["/cbv GET"]
    assert "reports" in lines["/cbv POST"]
    assert "reports x 7" in lines["/cbv-dispatch GET,DELETE"]
    assert "reports x 4" in lines["/drf/things POST"]
    assert "header:X-Customer-Id" in lines["/drf/things GET"]
    assert "api_calls" in lines["/drf/things/{} GET"]


def test_fluxrate_check_prints_the_config(fresh_runtime: None) -> None:
    with override_settings(FLUXRATE=BASE_CONFIG):
        text = command("check")
    assert "settings.FLUXRATE: OK" in text
    assert API_CALLS in text
    assert "org_live_test" not in text
    assert "fluxrate configuration OK" in text


def test_fluxrate_check_fails_on_a_bad_config(fresh_runtime: None) -> None:
    bad = override_settings(FLUXRATE={**BASE_CONFIG, "BILL_ON": "never"})
    with bad, pytest.raises(CommandError, match="1 error"):
        command("check")


def test_fluxrate_replay_delegates_to_core(tmp_path: Path, fresh_runtime: None) -> None:
    event = {
        "meter_token": API_CALLS,
        "customer_external_id": "acme",
        "quantity": 1,
        "timestamp": "2026-11-27T15:14:24.123Z",
        "idempotency_key": "k-1",
    }
    log = tmp_path / "failed.jsonl"
    log.write_text(json.dumps({"v": 1, "reason": "retries_exhausted", "event": event}) + "\n")
    text = command("replay", str(log), "--dry-run")
    assert f"read 1 event(s) from {log}" in text
    assert "dry run: nothing sent" in text


def test_fluxrate_replay_sends_to_the_settings_server(
    tmp_path: Path, fresh_runtime: None, fluxrate_server: Any
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    event = {
        "meter_token": token,
        "customer_external_id": "acme",
        "quantity": 3,
        "timestamp": "2026-11-27T15:14:24.123Z",
        "idempotency_key": "replayed-1",
    }
    log = tmp_path / "failed.jsonl"
    log.write_text(json.dumps({"v": 1, "reason": "retries_exhausted", "event": event}) + "\n")
    settings = {
        "API_KEY": fluxrate_server.api_key,
        "BASE_URL": fluxrate_server.url,
        "METERS": {"api_calls": token},
    }
    with override_settings(FLUXRATE=settings):
        command("replay", str(log), "--timeout", "20")
    assert fluxrate_server.summary() == {"acme": {"api_calls": 3.0}}


# -- sync and async capability ---------------------------------------------------------------------


def test_middleware_is_a_coroutine_under_asgi_and_adds_no_thread_hop(captured: Any) -> None:
    handler = ASGIHandler()
    # Our process_view is registered as a coroutine function (awaited in place, not wrapped in
    # sync_to_async), and the middleware itself is a coroutine function.
    view_middleware = [getattr(m, "__self__", None) for m in handler._view_middleware]
    (ours,) = [m for m in view_middleware if isinstance(m, FluxrateMiddleware)]
    assert ours.async_mode
    assert iscoroutinefunction(ours)
    (registered,) = [m for m in handler._view_middleware if getattr(m, "__self__", None) is ours]
    assert iscoroutinefunction(registered)


def test_middleware_is_plain_sync_under_wsgi(captured: Any) -> None:
    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()
    view_middleware = [getattr(m, "__self__", None) for m in handler._view_middleware]
    (ours,) = [m for m in view_middleware if isinstance(m, FluxrateMiddleware)]
    assert not ours.async_mode
    assert not iscoroutinefunction(ours)


def test_with_lifespan_closes_the_core_on_shutdown(captured: Any) -> None:
    import asyncio

    from fluxrate_web.django.asgi import with_lifespan

    http_scopes: list[str] = []

    async def django_app(scope: Any, receive: Any, send: Any) -> None:
        http_scopes.append(scope["type"])

    app = with_lifespan(django_app)
    sent: list[str] = []

    async def run() -> None:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, str]:
            return next(messages)

        async def send(message: dict[str, str]) -> None:
            sent.append(message["type"])

        await app({"type": "lifespan"}, receive, send)
        await app({"type": "http"}, receive, send)

    asyncio.run(run())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert http_scopes == ["http"]
    assert captured.closed
