"""Flask cases for ``bench/overhead.py``: a small API, bare, metered, and under each peer.

The app is an app factory with a ``/v1`` blueprint of JSON routes; every case requests
``GET /v1/items/42`` (a function view returning a dict) through Flask's own WSGI app with a
realistic header set, iterating and closing the body like a WSGI server.

Run alone (a quick loop, without the harness)::

    .venv/bin/python bench/overhead_cases/flask.py [CASE] [--number 20000]
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

if __name__ == "__main__":  # run as a script: this file's folder must not shadow `flask`
    import sys
    from pathlib import Path

    _here = Path(__file__).resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here.parent]
    sys.path[:0] = [str(_here.parents[1]), str(_here.parents[2])]

from overhead_cases import lazy, sink_url, wsgi_request
from overhead_cases._common import (
    PATH,
    available_peers,
    bounded,
    capturing_client,
    fluxrate_settings,
    init_sentry,
    moesif_settings,
    quick_loop,
    teardown,
)

__all__ = ["NOTES", "SKIPPED", "cases", "teardown"]

NOTES = {
    "bare": "an app factory, a /v1 blueprint, a function view returning a dict (JSON)",
    "fluxrate": (
        "+ fluxrate_web.flask.Fluxrate; the route billed by a config rule (api_calls, customer "
        "from X-Customer-Id); a real FluxrateClient whose events are captured "
        "(capture_events(): validated and built by the real client code, kept in a list "
        "instead of the delivery queue)"
    ),
    "fluxrate_delivering": (
        "+ fluxrate_web.flask.Fluxrate with the real FluxrateClient delivering every event to "
        "the local sink from its background thread (which shares the GIL with the app)"
    ),
}


# --------------------------------------------------------------------------- the app


def create_app(configure: Callable[[Any], None] | None = None) -> Any:
    from flask import Blueprint, Flask, jsonify

    app = Flask("bench_app")
    if configure is not None:
        configure(app)
    v1 = Blueprint("v1", __name__, url_prefix="/v1")

    @v1.get("/items")
    def list_items() -> Any:
        return jsonify(items=[])

    @v1.get("/items/<int:item_id>")
    def get_item(item_id: int) -> dict[str, Any]:
        return {"id": item_id, "name": "widget"}

    @v1.get("/me")
    def me() -> dict[str, str]:
        return {"user": "me"}

    app.register_blueprint(v1)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def fluxrate_config() -> dict[str, Any]:
    """:func:`fluxrate_settings` as ``app.config`` keys (``FLUXRATE_METERS``, ...)."""
    return {f"FLUXRATE_{key.upper()}": value for key, value in fluxrate_settings().items()}


def bare() -> Callable[[], None]:
    return wsgi_request(create_app(), PATH)


def fluxrate() -> Callable[[], None]:
    from fluxrate_web.flask import Fluxrate

    client, captured = capturing_client()
    extension = Fluxrate(client=client)

    def configure(app: Any) -> None:
        app.config.update(fluxrate_config())
        extension.init_app(app)

    return bounded(wsgi_request(create_app(configure), PATH), captured)


def fluxrate_delivering() -> Callable[[], None]:
    from fluxrate_web.flask import Fluxrate

    extension = Fluxrate()

    def configure(app: Any) -> None:
        app.config.update(fluxrate_config())
        app.config.update(
            FLUXRATE_API_KEY="org_live_bench",
            FLUXRATE_BASE_URL=sink_url(),
            FLUXRATE_ALLOW_INSECURE=True,
            # what the sink cannot take before exit goes here, not to the terminal
            FLUXRATE_FAILED_EVENTS_PATH=os.path.join(
                tempfile.gettempdir(), f"fluxrate-bench-flask-{os.getpid()}.jsonl"
            ),
        )
        extension.init_app(app)

    app = create_app(configure)
    one = wsgi_request(app, PATH)
    client: Any = extension.state(app).metering.client
    count = [0]

    def call() -> None:
        one()
        count[0] += 1
        if count[0] % 10_000 == 0 and client.stats.dropped:
            raise AssertionError(f"events dropped: {client.stats.as_dict()}")

    return call


# --------------------------------------------------------------------------- peers

PEERS: dict[str, tuple[str, str]] = {
    "prometheus_flask_exporter": (
        "prometheus_flask_exporter",
        "prometheus-flask-exporter's PrometheusMetrics(app) default request metrics "
        "(in-process counters and histograms; scraped, nothing sent)",
    ),
    "moesif": (
        "moesifwsgi",
        "moesifwsgi's MoesifMiddleware around app.wsgi_app, BASE_URI on the local sink",
    ),
    "sentry": (
        "sentry_sdk",
        "sentry-sdk's Flask integration, traces_sample_rate=1.0, DSN on the local sink",
    ),
}


def prometheus_flask_exporter() -> Callable[[], None]:
    from prometheus_flask_exporter import PrometheusMetrics

    return wsgi_request(create_app(PrometheusMetrics), PATH)


def moesif() -> Callable[[], None]:
    from moesifwsgi import MoesifMiddleware

    app = create_app()
    app.wsgi_app = MoesifMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, moesif_settings("moesifwsgi", CAPTURE_OUTGOING_REQUESTS=False)
    )
    return wsgi_request(app, PATH)


def sentry() -> Callable[[], None]:
    from sentry_sdk.integrations.flask import FlaskIntegration

    init_sentry(FlaskIntegration())
    return wsgi_request(create_app(), PATH)


BUILDERS: dict[str, Callable[[], Callable[[], None]]] = {
    "prometheus_flask_exporter": prometheus_flask_exporter,
    "moesif": moesif,
    "sentry": sentry,
}

present, SKIPPED = available_peers(PEERS)
NOTES.update({name: PEERS[name][1] for name in present})


def cases() -> dict[str, Callable[[], Any]]:
    return {
        "bare": lazy(bare),
        "fluxrate": lazy(fluxrate),
        "fluxrate_delivering": lazy(fluxrate_delivering),
        **{name: lazy(BUILDERS[name]) for name in present},
    }


if __name__ == "__main__":  # a quick loop: one case per process, like the harness
    quick_loop(__file__, cases)
