"""The process-wide metering core of the Django adapter.

Built once from ``settings.FLUXRATE`` when the app is ready (or when the middleware is first
loaded, if the app is not installed), rebuilt when a test overrides ``FLUXRATE``. A bad config
never raises here: it is logged, metering is off, and ``manage.py check`` reports it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from fluxrate_web.core.config import Config, load_config
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.metering import Metering, RoutePlan

__all__ = [
    "SETTING",
    "Runtime",
    "current",
    "flush",
    "get_metering",
    "install",
    "load_metering",
    "load_settings_config",
    "on_setting_changed",
    "restore",
    "settings_overrides",
]

logger = logging.getLogger("fluxrate_web.django")

SETTING = "FLUXRATE"
OVERRIDES_NAME = "settings.FLUXRATE"
SETTING_EXPECTED = (
    "settings.FLUXRATE: expected a dict of fluxrate.yaml keys, such as "
    '{"CONFIG": BASE_DIR / "fluxrate.yaml", "API_KEY": os.environ["FLUXRATE_API_KEY"]}'
)


class Runtime:
    """One :class:`Metering` and the adapter's plan cache for it (keyed per view and method)."""

    __slots__ = ("metering", "plans")

    def __init__(self, metering: Metering) -> None:
        self.metering = metering
        self.plans: dict[tuple[Any, ...], RoutePlan] = {}


class _State:
    __slots__ = ("built", "error", "runtime")

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.error: Exception | None = None
        self.built = False


STATE = _State()
_lock = threading.Lock()


def settings_overrides() -> Mapping[str, Any] | None:
    """``settings.FLUXRATE`` (``None`` when unset). Raises :class:`ConfigError` if not a dict."""
    from django.conf import settings

    value = getattr(settings, SETTING, None)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{SETTING_EXPECTED}; got {type(value).__name__}")
    return value


def load_settings_config() -> Config:
    """The :class:`Config` of ``settings.FLUXRATE`` (+ the YAML file its ``CONFIG`` names, or
    ``$FLUXRATE_CONFIG``). Raises :class:`ConfigError` naming file, line and key."""
    return load_config(overrides=settings_overrides(), overrides_name=OVERRIDES_NAME)


def load_metering() -> Metering:
    """A new :class:`Metering` from the settings. Raises :class:`ConfigError`; starts nothing."""
    return Metering.from_config(load_settings_config())


def _build() -> None:
    STATE.built = True
    STATE.error = None
    try:
        metering = load_metering()
        if not metering.config.enabled:
            STATE.runtime = None
            return
        metering.start()
    except Exception as exc:
        STATE.error = exc
        STATE.runtime = None
        logger.error(
            "fluxrate: usage metering is OFF, the configuration is invalid: %s "
            "(run `python manage.py check` for details)",
            exc,
        )
        return
    STATE.runtime = Runtime(metering)


def current() -> Runtime | None:
    """The current runtime (``None`` when the config is invalid). Builds it on first use."""
    if not STATE.built:
        with _lock:
            if not STATE.built:
                _build()
    return STATE.runtime


def get_metering() -> Metering:
    """The :class:`Metering` the middleware uses. Raises ``ImproperlyConfigured`` when the
    configuration is invalid."""
    runtime = current()
    if runtime is None:
        raise ImproperlyConfigured(f"fluxrate: {STATE.error}")
    return runtime.metering


def flush(timeout: float | None = None) -> bool:
    """Send every queued event now (e.g. from gunicorn's ``worker_exit`` hook). Returns whether
    the queue drained within ``timeout``. Never raises."""
    runtime = STATE.runtime
    if runtime is None:
        return True
    try:
        return runtime.metering.flush(timeout)
    except Exception:  # pragma: no cover - flush is documented not to raise
        logger.exception("fluxrate: flush failed")
        return False


def reload() -> None:
    """Close the current core and build a new one from the settings."""
    with _lock:
        old = STATE.runtime
        STATE.runtime = None
        if old is not None:
            try:
                old.metering.close(timeout=1.0)
            except Exception:  # pragma: no cover - close is documented not to raise
                logger.exception("fluxrate: closing the previous metering core failed")
        _build()


def install(metering: Metering | None) -> Runtime | None:
    """Make ``metering`` the one the middleware uses (``None``: metering off) and return the
    previous runtime, e.g. to restore it. For tests and for apps that build their own
    :class:`Metering` (a custom client); the caller owns starting and closing it."""
    with _lock:
        previous = STATE.runtime
        STATE.built = True
        STATE.error = None
        STATE.runtime = Runtime(metering) if metering is not None else None
        return previous


def restore(runtime: Runtime | None) -> None:
    """Put back a runtime returned by :func:`install`."""
    with _lock:
        STATE.built = True
        STATE.error = None
        STATE.runtime = runtime


def on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver: ``override_settings(FLUXRATE=...)`` rebuilds the core."""
    if setting == SETTING:
        reload()
