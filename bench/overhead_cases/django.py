"""Django cases for ``bench/overhead.py``: a small API, bare, metered, and under each peer.

The project is ``django-admin startproject``'s default middleware stack with a few JSON routes;
every case requests ``GET /v1/items/42`` (a function view returning JSON) through Django's own
WSGI handler with a realistic header set. Each case configures Django in its own process.

Run alone (a quick loop, without the harness)::

    .venv/bin/python bench/overhead_cases/django.py [--number 20000]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

if __name__ == "__main__":  # run as a script: this file's folder must not shadow `django`
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

# django-admin startproject's MIDDLEWARE
DEFAULT_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
DEFAULT_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
]

NOTES = {
    "bare": "startproject's default middleware stack, a function view returning JSON",
    "fluxrate": (
        "+ fluxrate_web.django.FluxrateMiddleware (last); the route billed by a config rule "
        "(api_calls, customer from X-Customer-Id); events built by the real seam and client "
        "validation, kept by fluxrate_web.testing.CapturingClient (delivery runs off the request "
        "path and is measured by bench/transports.py)"
    ),
    "floor_middleware": (
        "the floor: a do-nothing middleware of our shape (last; __call__ reading the response "
        "status, a process_view returning None, a process_exception; no metering)"
    ),
    "floor_call_only": "floor_middleware without process_view (__call__ only)",
    "bare_track": (
        "the bare project whose view calls FluxrateClient.track() once (events captured), as "
        "an app metering by hand would"
    ),
    "fluxrate_delivering": (
        "fluxrate with a real FluxrateClient delivering every event to the local sink from its "
        "background thread (its CPU counts: it shares the process)"
    ),
    "fluxrate_strict": (
        "fluxrate_delivering with durability: strict (each event written to a SQLite spool in "
        "a temporary directory before the response is returned)"
    ),
}


# --------------------------------------------------------------------------- the project


def urlpatterns(in_view: Callable[[], object] | None = None) -> list[Any]:
    """The routes; ``in_view`` (if given) is called by the measured view on every request."""
    from django.http import HttpRequest, JsonResponse
    from django.urls import include, path

    def health(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"status": "ok"})

    def list_items(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"items": []})

    def get_item(request: HttpRequest, item_id: int) -> JsonResponse:
        if in_view is not None:
            in_view()
        return JsonResponse({"id": item_id, "name": "widget"})

    def me(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"user": "me"})

    v1 = [
        path("items", list_items, name="items"),
        path("items/<int:item_id>", get_item, name="item"),
        path("me", me, name="me"),
    ]
    return [path("health", health), path("v1/", include(v1))]


class _URLConf:
    """ROOT_URLCONF given as a module-like object."""

    def __init__(self, in_view: Callable[[], object] | None = None) -> None:
        self.urlpatterns = urlpatterns(in_view)


def setup(
    middleware: list[str] | None = None,
    apps: list[str] | None = None,
    in_view: Callable[[], object] | None = None,
    **extra: Any,
) -> None:
    """Configure Django for this process."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-secret-key-bench-secret-key-bench-secret-key",
        ALLOWED_HOSTS=["api.example.com", "127.0.0.1"],
        INSTALLED_APPS=[*DEFAULT_APPS, *(apps or [])],
        MIDDLEWARE=middleware if middleware is not None else DEFAULT_MIDDLEWARE,
        ROOT_URLCONF=_URLConf(in_view),
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
        LOGGING_CONFIG=None,
        **extra,
    )
    django.setup()


def configure(
    middleware: list[str] | None = None, apps: list[str] | None = None, **extra: Any
) -> Any:
    """Configure Django for this process and return its WSGI handler."""
    setup(middleware, apps, **extra)
    from django.core.handlers.wsgi import WSGIHandler

    return WSGIHandler()


def bare() -> Callable[[], None]:
    return wsgi_request(configure(), PATH)


def fluxrate() -> Callable[[], None]:
    from fluxrate_web.core.metering import Metering
    from fluxrate_web.testing import CapturingClient

    setup([*DEFAULT_MIDDLEWARE, "fluxrate_web.django.FluxrateMiddleware"])
    from django.core.handlers.wsgi import WSGIHandler

    from fluxrate_web.django import _runtime

    # What the app's ready() builds from settings.FLUXRATE, with a capturing client.
    client = CapturingClient()
    _runtime.install(Metering.from_config(overrides=fluxrate_settings(), client=client))
    return bounded(wsgi_request(WSGIHandler(), PATH), client.events)


def delivering(durability: str) -> Callable[[], None]:
    """Metered, with a client that really delivers, in ``durability`` mode."""
    from fluxrate_web.core.metering import Metering

    setup([*DEFAULT_MIDDLEWARE, "fluxrate_web.django.FluxrateMiddleware"])
    from django.core.handlers.wsgi import WSGIHandler

    from fluxrate_web.django import _runtime

    client = delivering_client(durability)
    _runtime.install(Metering.from_config(overrides=fluxrate_settings(), client=client))
    return checked_delivery(wsgi_request(WSGIHandler(), PATH), client)


def fluxrate_delivering() -> Callable[[], None]:
    return delivering("memory")


def fluxrate_strict() -> Callable[[], None]:
    return delivering("strict")


def bare_track() -> Callable[[], None]:
    call, captured = track_in_view()
    setup(in_view=call)
    from django.core.handlers.wsgi import WSGIHandler

    return bounded(wsgi_request(WSGIHandler(), PATH), captured)


# --------------------------------------------------------------------------- the floor


class FloorCallOnly:
    """The cheapest middleware doing nothing: ``__call__`` reading the response status."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        response = self.get_response(request)
        response.status_code  # noqa: B018
        return response


class FloorMiddleware(FloorCallOnly):
    """The cheapest middleware of the shape metering needs, doing nothing: also a
    ``process_view`` (where the route's plan is looked up and reject mode answers) and a
    ``process_exception`` (called only when a view raises)."""

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> Any:
        return None

    def process_exception(self, request: Any, exception: Exception) -> None:
        return None


def floor(name: str) -> Callable[[], None]:
    return wsgi_request(configure([*DEFAULT_MIDDLEWARE, f"{__name__}.{name}"]), PATH)


# --------------------------------------------------------------------------- peers

PEERS: dict[str, tuple[str, str]] = {
    "django_prometheus": (
        "django_prometheus",
        "django-prometheus Before/After middleware (in-process counters and histograms; "
        "scraped, nothing sent)",
    ),
    "moesif": ("moesifdjango", "moesifdjango's moesif_middleware, BASE_URI on the local sink"),
    "sentry": (
        "sentry_sdk",
        "sentry-sdk's Django integration, traces_sample_rate=1.0, DSN on the local sink",
    ),
}


def django_prometheus() -> Callable[[], None]:
    handler = configure(
        [
            "django_prometheus.middleware.PrometheusBeforeMiddleware",
            *DEFAULT_MIDDLEWARE,
            "django_prometheus.middleware.PrometheusAfterMiddleware",
        ],
        apps=["django_prometheus"],
    )
    return wsgi_request(handler, PATH)


def moesif() -> Callable[[], None]:
    handler = configure(
        [*DEFAULT_MIDDLEWARE, "moesifdjango.middleware.moesif_middleware"],
        MOESIF_MIDDLEWARE=moesif_settings("moesifdjango", CAPTURE_OUTGOING_REQUESTS=False),
    )
    return wsgi_request(handler, PATH)


def sentry() -> Callable[[], None]:
    from sentry_sdk.integrations.django import DjangoIntegration

    init_sentry(DjangoIntegration())
    return wsgi_request(configure(), PATH)


BUILDERS: dict[str, Callable[[], Callable[[], None]]] = {
    "django_prometheus": django_prometheus,
    "moesif": moesif,
    "sentry": sentry,
}

present, SKIPPED = available_peers(PEERS)
NOTES.update({name: PEERS[name][1] for name in present})


def cases() -> dict[str, Callable[[], Any]]:
    return {
        "bare": lazy(bare),
        "floor_middleware": lazy(lambda: floor("FloorMiddleware")),
        "floor_call_only": lazy(lambda: floor("FloorCallOnly")),
        "bare_track": lazy(bare_track),
        "fluxrate": lazy(fluxrate),
        "fluxrate_delivering": lazy(fluxrate_delivering),
        "fluxrate_strict": lazy(fluxrate_strict),
        **{name: lazy(BUILDERS[name]) for name in present},
    }


if __name__ == "__main__":  # a quick loop: one case per process, like the harness
    quick_loop(__file__, cases)
