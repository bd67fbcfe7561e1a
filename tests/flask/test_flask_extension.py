"""Setting the extension up: app factories, configuration sources and their precedence, errors
at ``init_app``, no network before the first event."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from fluxrate_flask_support import API_CALLS, CUSTOMER, METERS, TOKENS, RecordingClient

from fluxrate_web.core.client import FluxrateClient
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.flask import Fluxrate, FluxrateState, meter

YAML = f"""\
api_key: org_live_from_file
base_url: http://127.0.0.1:9
meters:
  api_calls: {API_CALLS}
  tokens: {TOKENS}
customer: header:X-From-File
bill_on: 2xx
"""


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(YAML)
    return path


def metered_app(name: str = "app") -> Flask:
    app = Flask(name)

    @app.get("/x")
    @meter("api_calls")
    def x() -> str:
        return "ok"

    return app


def test_constructor_with_app(recorder: RecordingClient) -> None:
    app = metered_app()
    fluxrate = Fluxrate(app, client=recorder, meters=METERS, customer="header:X-Customer-Id")
    state = app.extensions["fluxrate"]
    assert isinstance(state, FluxrateState)
    assert state.extension is fluxrate
    assert state.metering.client is recorder
    app.test_client().get("/x", headers=CUSTOMER)
    assert recorder.billed() == [("api_calls", "cus_1", 1)]


def test_app_factory(recorder: RecordingClient) -> None:
    fluxrate = Fluxrate(client=recorder)

    def create_app(customer_header: str) -> Flask:
        app = metered_app()
        app.config.update(FLUXRATE_METERS=METERS, FLUXRATE_CUSTOMER=f"header:{customer_header}")
        fluxrate.init_app(app)
        return app

    first, second = create_app("X-A"), create_app("X-B")
    first.test_client().get("/x", headers={"X-A": "a", "X-B": "wrong"})
    second.test_client().get("/x", headers={"X-A": "wrong", "X-B": "b"})
    assert [e.customer for e in recorder.events] == ["a", "b"]
    assert fluxrate.state(first).metering is not fluxrate.state(second).metering


def test_config_file_from_app_config(yaml_file: Path, recorder: RecordingClient) -> None:
    app = metered_app()
    app.config["FLUXRATE_CONFIG"] = str(yaml_file)
    Fluxrate(app, client=recorder)
    config = app.extensions["fluxrate"].metering.config
    assert config.api_key == "org_live_from_file"
    assert config.source.startswith(str(yaml_file))
    app.test_client().get("/x", headers={"X-From-File": "f"})
    assert recorder.billed() == [("api_calls", "f", 1)]


def test_app_config_wins_over_file_and_constructor(
    yaml_file: Path, recorder: RecordingClient
) -> None:
    app = metered_app()
    app.config.update(FLUXRATE_CUSTOMER="header:X-From-App-Config", FLUXRATE_BILL_ON="any")
    Fluxrate(
        app,
        config=yaml_file,
        client=recorder,
        customer="header:X-From-Constructor",
        api_key="org_live_from_constructor",
    )
    config = app.extensions["fluxrate"].metering.config
    assert config.api_key == "org_live_from_constructor"  # constructor beats the file
    assert config.bill_on == "any"
    app.test_client().get(
        "/x",
        headers={"X-From-File": "f", "X-From-Constructor": "c", "X-From-App-Config": "a"},
    )
    assert [e.customer for e in recorder.events] == ["a"]  # app.config beats both


def test_config_file_from_environment(
    yaml_file: Path, recorder: RecordingClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUXRATE_CONFIG", str(yaml_file))
    app = metered_app()
    Fluxrate(app, client=recorder)
    assert app.extensions["fluxrate"].metering.config.api_key == "org_live_from_file"


def test_app_config_key_errors_fail_at_init_app() -> None:
    app = metered_app()
    app.config.update(FLUXRATE_METERS=METERS, FLUXRATE_BILL_ON="sometimes")
    with pytest.raises(ConfigError, match=r"app\.config: bill_on: expected"):
        Fluxrate(app)
    assert "fluxrate" not in app.extensions


def test_unknown_app_config_key_fails_with_a_suggestion() -> None:
    app = metered_app()
    app.config["FLUXRATE_CUSTOMR"] = "header:X"
    with pytest.raises(ConfigError, match="did you mean 'customer'"):
        Fluxrate(app)


def test_file_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(YAML.replace("bill_on: 2xx", "bill_on: sometimes"))
    app = metered_app()
    app.config["FLUXRATE_CONFIG"] = str(path)
    with pytest.raises(ConfigError, match=rf"{path}:7: bill_on"):
        Fluxrate(app)


def test_init_app_twice_is_an_error(recorder: RecordingClient) -> None:
    app = metered_app()
    fluxrate = Fluxrate(app, client=recorder, meters=METERS)
    with pytest.raises(RuntimeError, match="already"):
        fluxrate.init_app(app)


def test_bad_decorator_on_a_registered_view_fails_at_init_app() -> None:
    from flask.views import MethodView

    app = metered_app()

    class Items(MethodView):
        @meter("api_cals")
        def post(self) -> str:
            return "ok"

    app.add_url_rule("/items", view_func=Items.as_view("items"))
    with pytest.raises(ConfigError, match=r"unknown meter 'api_cals' \(did you mean 'api_calls'"):
        Fluxrate(app, meters=METERS)
    assert "fluxrate" not in app.extensions


def test_bad_blueprint_meter_fails_at_init_app() -> None:
    from flask import Blueprint

    fluxrate = Fluxrate(meters=METERS)
    fluxrate.meter_blueprint(Blueprint("api", __name__), "api_cals")
    with pytest.raises(ConfigError, match=r"meter_blueprint\('api'\).*unknown meter 'api_cals'"):
        fluxrate.init_app(Flask("app"))


def test_state_outside_an_app() -> None:
    fluxrate = Fluxrate()
    with pytest.raises(RuntimeError, match="init_app"):
        fluxrate.state(Flask("bare"))


def test_no_network_and_no_thread_at_init(monkeypatch: pytest.MonkeyPatch, yaml_file: Path) -> None:
    """init_app builds a real client but connects nowhere and starts nothing."""
    import threading

    connects: list[Any] = []
    real_connect = socket.socket.connect

    def spy(self: socket.socket, address: Any) -> Any:
        connects.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", spy)
    threads_before = set(threading.enumerate())
    app = metered_app()
    app.config["FLUXRATE_CONFIG"] = str(yaml_file)
    fluxrate = Fluxrate(app)
    client = fluxrate.state(app).metering.client
    assert isinstance(client, FluxrateClient)
    app.test_client().get("/healthz-does-not-exist")
    assert connects == []
    assert set(threading.enumerate()) == threads_before
    client.close(timeout=0)


def test_disabled_config_bills_nothing(recorder: RecordingClient) -> None:
    app = metered_app()
    app.config.update(FLUXRATE_METERS=METERS, FLUXRATE_ENABLED=False)
    Fluxrate(app, client=recorder)
    assert app.test_client().get("/x", headers=CUSTOMER).data == b"ok"
    assert recorder.events == []


def test_flush_delegates_to_the_client(recorder: RecordingClient) -> None:
    app = metered_app()
    fluxrate = Fluxrate(app, client=recorder, meters=METERS)
    assert fluxrate.flush(1.0, app=app) is True
    with app.app_context():
        assert fluxrate.flush() is True


def test_meter_and_record_reexported() -> None:
    import fluxrate_web
    import fluxrate_web.flask as adapter

    assert adapter.meter is fluxrate_web.meter
    assert adapter.record is fluxrate_web.record
    assert Fluxrate.meter is adapter.meter
