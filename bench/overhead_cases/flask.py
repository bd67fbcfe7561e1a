"""Flask cases for ``bench/overhead.py``: a small API, bare, metered, and under each peer.

The app is an app factory with a ``/v1`` blueprint of JSON routes; every case requests
``GET /v1/items/42`` (a function view returning a dict) through Flask's own WSGI app with a
realistic header set, iterating and closing the body like a WSGI server.

Run alone (a quick loop, without the harness)::

    .venv/bin/python bench/overhead_cases/flask.py [CASE] [--number 20000]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

if __name__ == "__main__":  # run as a script: this file's folder must not shadow `flask`
    import sys
    from pathlib import Path

    _here = Path(__file__).resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here.parent]
    sys.path[:0] = [str(_here.parents[1]), str(_here.parents[2])]

from overhead_cases import lazy, wsgi_request
from overhead_cases._common import (
    PATH,
    available_peers,
    bounded,
    capturing_client,
    checked_delivery,
    delivering_client,
    fluxrate_settings,
    init_sentry,
    moesif_settings,
    quick_loop,
    teardown,
    track_in_view,
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
    "fluxrate_strict": (
        "fluxrate_delivering with durability: strict (each event written to a SQLite spool "
        "in a temporary directory before the response is finished)"
    ),
    "floor_dispatch": (
        "the floor: app.full_dispatch_request wrapped by a do-nothing function of our shape "
        "(reads the request object and the response status; no metering)"
    ),
    "floor_hooks": (
        "a floor alternative: a no-op before_request and an after_request reading the status"
    ),
    "floor_wsgi": (
        "a floor alternative: a WSGI middleware around app.wsgi_app reading the status and "
        "counting the body bytes as the server iterates them"
    ),
    "bare_track": (
        "the bare app whose view calls FluxrateClient.track() once (events captured), as an "
        "app metering by hand would"
    ),
}


# --------------------------------------------------------------------------- the app


def create_app(
    configure: Callable[[Any], None] | None = None, in_view: Callable[[], object] | None = None
) -> Any:
    """The app; ``configure(app)`` runs before the routes are added, ``in_view`` (if given) is
    called by the measured view on every request."""
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
        if in_view is not None:
            in_view()
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


def delivering(durability: str) -> Callable[[], None]:
    """Metered, with a client that really delivers, in ``durability`` mode."""
    from fluxrate_web.flask import Fluxrate

    client = delivering_client(durability)
    extension = Fluxrate(client=client)

    def configure(app: Any) -> None:
        app.config.update(fluxrate_config())
        extension.init_app(app)

    return checked_delivery(wsgi_request(create_app(configure), PATH), client)


def fluxrate_delivering() -> Callable[[], None]:
    return delivering("memory")


def fluxrate_strict() -> Callable[[], None]:
    return delivering("strict")


def bare_track() -> Callable[[], None]:
    call, captured = track_in_view()
    return bounded(wsgi_request(create_app(in_view=call), PATH), captured)


# --------------------------------------------------------------------------- the floor


def floor_dispatch() -> Callable[[], None]:
    from flask import request

    app = create_app()
    dispatch = app.full_dispatch_request

    def full_dispatch_request() -> Any:
        req: Any = request._get_current_object()  # type: ignore[attr-defined]
        req.url_rule  # noqa: B018 - what a route lookup reads
        response = dispatch()
        response.status_code  # noqa: B018
        return response

    app.full_dispatch_request = full_dispatch_request
    return wsgi_request(app, PATH)


def floor_hooks() -> Callable[[], None]:
    def before() -> None:
        return None

    def after(response: Any) -> Any:
        response.status_code  # noqa: B018
        return response

    def configure(app: Any) -> None:
        app.before_request(before)
        app.after_request(after)

    return wsgi_request(create_app(configure), PATH)


class _CountedBody:
    """A WSGI body passed through, counting its bytes; ``close`` forwarded."""

    __slots__ = ("inner", "sent")

    def __init__(self, inner: Iterable[bytes]) -> None:
        self.inner = inner
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def floor_wsgi() -> Callable[[], None]:
    app = create_app()
    inner = app.wsgi_app

    def wsgi_app(environ: Any, start_response: Any) -> Any:
        seen: list[str] = []

        def counting_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen.append(status)
            return start_response(status, headers, exc_info)

        return _CountedBody(inner(environ, counting_start_response))

    app.wsgi_app = wsgi_app
    return wsgi_request(app, PATH)


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
        "floor_dispatch": lazy(floor_dispatch),
        "floor_hooks": lazy(floor_hooks),
        "floor_wsgi": lazy(floor_wsgi),
        "bare_track": lazy(bare_track),
        "fluxrate": lazy(fluxrate),
        "fluxrate_delivering": lazy(fluxrate_delivering),
        "fluxrate_strict": lazy(fluxrate_strict),
        **{name: lazy(BUILDERS[name]) for name in present},
    }


if __name__ == "__main__":  # a quick loop: one case per process, like the harness
    quick_loop(__file__, cases)
