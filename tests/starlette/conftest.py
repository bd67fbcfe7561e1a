"""Fixtures for the Starlette/FastAPI adapter tests.

``starlette.testclient`` warns (StarletteDeprecationWarning) when it finds ``httpx`` rather than
``httpx2``; the suite turns warnings into errors, so it is imported once here with that one
warning silenced.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    import starlette.testclient  # noqa: F401

from fluxrate_web.core.metering import Metering
from fluxrate_web.testing import CapturingClient

API_CALLS = "0b8f6d6e-2c1a-4f5e-9a53-3f3c8d9e7a10"
TOKENS = "5d2f1c3b-7e4a-4b6c-8d9e-1a2b3c4d5e6f"
BYTES = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"

METERS = {"api_calls": API_CALLS, "tokens": TOKENS, "bytes_out": BYTES}


@pytest.fixture
def client() -> CapturingClient:
    return CapturingClient()


@pytest.fixture
def make_metering(client: CapturingClient) -> Callable[..., Metering]:
    """``make_metering(**config keys)``: a Metering over a CapturingClient, the three meters
    above and ``customer: header:X-Customer-Id`` unless given."""

    def make(**overrides: Any) -> Metering:
        settings: dict[str, Any] = {"meters": dict(METERS), "customer": "header:X-Customer-Id"}
        settings.update(overrides)
        return Metering.from_config(overrides=settings, client=client)

    return make


@pytest.fixture(autouse=True)
def _fresh_log_limits() -> None:
    """Rate-limited warnings start afresh in every test (tests read them with caplog)."""
    from fluxrate_web.core._log import reset_limits

    reset_limits()
