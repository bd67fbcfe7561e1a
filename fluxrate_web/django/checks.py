"""System checks (``python manage.py check``): the configuration and the middleware setup.

=================  ==========================================================================
``fluxrate.E001``  the configuration is invalid (the message names file, line and key)
``fluxrate.E002``  ``settings.FLUXRATE`` is not a dict
``fluxrate.E003``  ``FluxrateMiddleware`` is listed more than once (requests would be billed
                   twice)
``fluxrate.W001``  ``FluxrateMiddleware`` is not in ``MIDDLEWARE``: nothing is metered
``fluxrate.W002``  no API key (settings, YAML or ``$FLUXRATE_API_KEY``): events cannot be
                   delivered
=================  ==========================================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks

from fluxrate_web.django import _runtime

__all__ = ["MIDDLEWARE_PATH", "check_config", "check_middleware", "register"]

MIDDLEWARE_PATH = "fluxrate_web.django.FluxrateMiddleware"
_MIDDLEWARE_ALIASES = (MIDDLEWARE_PATH, "fluxrate_web.django.middleware.FluxrateMiddleware")
TAG = "fluxrate"

_HINT_FILE = (
    "Fix the key named above. In settings.FLUXRATE keys may be upper or lower case "
    '(e.g. "API_KEY" or "api_key"), "CONFIG" names the YAML file, and a key set in '
    "settings.FLUXRATE wins over the same key in the file. Every key is documented in "
    "docs/configuration.md."
)


def register() -> None:
    checks.register(check_config, TAG)
    checks.register(check_middleware, TAG)


def check_config(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """fluxrate.E001 / E002 / W002: reads the configuration exactly as the middleware does."""
    value = getattr(settings, _runtime.SETTING, None)
    if value is not None and not isinstance(value, Mapping):
        return [
            checks.Error(
                f"settings.FLUXRATE must be a dict, not {type(value).__name__}.",
                hint='Use e.g. FLUXRATE = {"CONFIG": BASE_DIR / "fluxrate.yaml"}.',
                obj="settings.FLUXRATE",
                id="fluxrate.E002",
            )
        ]
    try:
        config = _runtime.load_settings_config()
        error = None
        if config.enabled and _runtime.current() is None:
            # Parsing passed but building the core failed (e.g. a `callable:` that does not
            # import): the runtime kept the error.
            error = _runtime.STATE.error
    except Exception as exc:
        error = exc
    if error is not None:
        return [
            checks.Error(
                f"Invalid fluxrate configuration: {error}",
                hint=_HINT_FILE,
                obj="settings.FLUXRATE",
                id="fluxrate.E001",
            )
        ]
    messages: list[checks.CheckMessage] = []
    if (
        config.enabled
        and not config.api_key
        and not config.access_token
        and not os.environ.get("FLUXRATE_API_KEY", "").strip()
    ):
        messages.append(
            checks.Warning(
                "No Fluxrate API key is configured: usage events cannot be delivered.",
                hint=(
                    'Set FLUXRATE["API_KEY"] (e.g. from os.environ["FLUXRATE_API_KEY"]) or '
                    "api_key: ${FLUXRATE_API_KEY} in the YAML file; for local work run "
                    "`fluxrate-web devserver` and use the key it prints."
                ),
                obj="settings.FLUXRATE",
                id="fluxrate.W002",
            )
        )
    return messages


def check_middleware(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """fluxrate.W001 / E003: the middleware is installed once."""
    middleware = list(getattr(settings, "MIDDLEWARE", None) or ())
    count = sum(1 for path in middleware if path in _MIDDLEWARE_ALIASES)
    if count == 0:
        return [
            checks.Warning(
                f"{MIDDLEWARE_PATH} is not in MIDDLEWARE: no request is metered.",
                hint=f'Add "{MIDDLEWARE_PATH}" at the end of MIDDLEWARE.',
                obj="settings.MIDDLEWARE",
                id="fluxrate.W001",
            )
        ]
    if count > 1:
        return [
            checks.Error(
                f"{MIDDLEWARE_PATH} is listed {count} times in MIDDLEWARE: every request "
                "would be billed more than once.",
                hint="Keep a single entry, at the end of MIDDLEWARE.",
                obj="settings.MIDDLEWARE",
                id="fluxrate.E003",
            )
        ]
    return []
