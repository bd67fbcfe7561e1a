"""Django for the adapter tests.

Django's settings are process-wide, and ``pytest tests examples/django_app`` runs this suite and
the example project's in one process, so both use the example's settings module
(``fluxdemo.settings``, from ``examples/django_app``). These tests then swap what they need per
test: ``ROOT_URLCONF`` (``djangotestproj.urls``, beside this file), ``MIDDLEWARE`` and the
metering core (a :class:`Metering` over a :class:`CapturingClient`, or ``settings.FLUXRATE``).
Other test directories never see a Django setting.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test.utils import override_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = ROOT / "examples" / "django_app"
HERE = Path(__file__).resolve().parent

if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# The example's conftest is the one place Django gets configured: its meter tokens in the
# environment, settings.configure() from fluxdemo.settings (it puts examples/django_app on
# sys.path), django.setup(). Idempotent, so it does not matter which of the two runs first.
runpy.run_path(str(EXAMPLE_DIR / "conftest.py"), run_name="fluxdemo_conftest")

from djangotestproj.meters import BASE_CONFIG  # noqa: E402

from fluxrate_web.core.config import load_config  # noqa: E402
from fluxrate_web.core.metering import Metering  # noqa: E402
from fluxrate_web.django import _runtime  # noqa: E402
from fluxrate_web.testing import CapturingClient  # noqa: E402

TEST_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "fluxrate_web.django.FluxrateMiddleware",
]


@pytest.fixture(autouse=True)
def django_test_project() -> Iterator[None]:
    """This suite's URLconf and middleware stack (sessions are signed cookies: no tables)."""
    with override_settings(
        ROOT_URLCONF="djangotestproj.urls",
        MIDDLEWARE=TEST_MIDDLEWARE,
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        REST_FRAMEWORK={
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "DEFAULT_AUTHENTICATION_CLASSES": [],
            "DEFAULT_PERMISSION_CLASSES": [],
            "UNAUTHENTICATED_USER": None,
        },
    ):
        yield


Use = Callable[..., CapturingClient]


@pytest.fixture
def use_config() -> Iterator[Use]:
    """``use_config(**keys)``: meter with ``BASE_CONFIG`` updated by ``keys`` (as in
    settings.FLUXRATE) and return the capturing client holding the events."""
    previous = _runtime.STATE.runtime
    installed: list[Metering] = []

    def use(**keys: Any) -> CapturingClient:
        client = CapturingClient()
        config = load_config(overrides={**BASE_CONFIG, **keys}, overrides_name="test")
        metering = Metering(config, client=client)
        installed.append(metering)
        _runtime.install(metering)
        return client

    yield use
    _runtime.restore(previous)


@pytest.fixture
def captured(use_config: Use) -> CapturingClient:
    """Metering with ``BASE_CONFIG``."""
    return use_config()
