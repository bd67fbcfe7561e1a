"""``flask fluxrate routes`` and ``flask fluxrate check``."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from flask import Blueprint, Flask
from flask.cli import ScriptInfo
from flask.views import MethodView
from fluxrate_flask_support import AppFactory, extension_of

from fluxrate_web.flask import Fluxrate, fluxrate_cli, meter


def build(make_app: AppFactory) -> Flask:
    app = make_app(
        endpoints=[{"route": "/v1/reports/*", "meter": "tokens", "quantity": "response_bytes"}],
        exclude=["/healthz"],
    )
    fluxrate = extension_of(app)
    api = Blueprint("api", __name__, url_prefix="/v1")
    fluxrate.meter_blueprint(api, "api_calls")

    class Items(MethodView):
        def get(self) -> str:
            return "ok"

        @meter("api_calls", quantity=5, customer="state:team_id")
        def post(self) -> str:
            return "ok"

    api.add_url_rule("/items", view_func=Items.as_view("items"))
    app.register_blueprint(api)

    @app.get("/v1/reports/<int:year>")
    def report(year: int) -> str:
        return "ok"

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    return app


def test_routes_lists_meters_quantity_and_customer(make_app: AppFactory) -> None:
    app = build(make_app)
    result = app.test_cli_runner().invoke(args=["fluxrate", "routes"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "Method",
        "Rule",
        "Endpoint",
        "Meter",
        "Quantity",
        "Customer",
        "Rule",
        "source",
    ]
    rows = [line.split() for line in lines[2:]]
    assert rows[0][:6] == [
        "GET",
        "/v1/items",
        "api.items",
        "api_calls",
        "1",
        "header:X-Customer-Id",
    ]
    assert "meter_blueprint('api')" in lines[2]
    assert rows[1][:6] == ["POST", "/v1/items", "api.items", "api_calls", "5", "state:team_id"]
    assert rows[2][:6] == [
        "GET",
        "/v1/reports/<int:year>",
        "report",
        "tokens",
        "response_bytes",
        "header:X-Customer-Id",
    ]
    assert len(rows) == 3  # healthz (excluded) and static are not listed without --all


def test_routes_all_lists_unmetered_routes(make_app: AppFactory) -> None:
    app = build(make_app)
    result = app.test_cli_runner().invoke(args=["fluxrate", "routes", "--all"])
    assert result.exit_code == 0, result.output
    assert any(
        line.split()[:4] == ["GET", "/healthz", "healthz", "(exempt)"]
        for line in result.output.splitlines()
    )


def test_routes_reports_a_bad_decorator(make_app: AppFactory) -> None:
    app = make_app()

    @app.get("/typo")
    @meter("api_cals")
    def typo() -> str:
        return "ok"

    result = app.test_cli_runner().invoke(args=["fluxrate", "routes"])
    assert result.exit_code == 1
    assert "did you mean 'api_calls'" in result.output


def test_check_ok(make_app: AppFactory) -> None:
    app = build(make_app)
    result = app.test_cli_runner().invoke(args=["fluxrate", "check"])
    assert result.exit_code == 0, result.output
    assert "Configuration OK: app.config" in result.output
    assert "meters: api_calls, bytes, tokens" in result.output
    assert "metered routes: 3" in result.output
    assert "no api_key" in result.output  # a warning, not an error


def test_check_fails_on_a_bad_decorator(make_app: AppFactory) -> None:
    app = make_app()

    @app.get("/typo")
    @meter("nope")
    def typo() -> str:
        return "ok"

    result = app.test_cli_runner().invoke(args=["fluxrate", "check"])
    assert result.exit_code == 1
    assert "unknown meter 'nope'" in result.output


def test_check_reports_an_app_config_changed_after_init(make_app: AppFactory) -> None:
    app = make_app()
    app.config["FLUXRATE_BILL_ON"] = "sometimes"
    result = app.test_cli_runner().invoke(args=["fluxrate", "check"])
    assert result.exit_code == 1
    assert "app.config: bill_on" in result.output


def test_check_reports_a_config_that_prevents_loading_the_app(tmp_path: Path) -> None:
    """Found through the ``flask.commands`` entry point, the group loads the app itself and
    turns the ConfigError into one line."""
    bad = tmp_path / "fluxrate.yaml"
    bad.write_text("meters:\n  api_calls: not a token\n")

    def create_app() -> Flask:
        app = Flask("broken")
        app.config["FLUXRATE_CONFIG"] = str(bad)
        Fluxrate(app)
        return app

    result = CliRunner().invoke(fluxrate_cli, ["check"], obj=ScriptInfo(create_app=create_app))
    assert result.exit_code == 1
    assert f"invalid Fluxrate configuration: {bad}:2: meters.api_calls" in result.output
    assert "Traceback" not in result.output


def test_commands_on_an_app_without_the_extension() -> None:
    app = Flask("plain")
    result = CliRunner().invoke(fluxrate_cli, ["routes"], obj=ScriptInfo(create_app=lambda: app))
    assert result.exit_code == 1
    assert "init_app" in result.output
