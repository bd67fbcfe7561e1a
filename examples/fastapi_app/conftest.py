"""Fixtures of the example's tests. Runnable from the repository root:
``.venv/bin/pytest examples/fastapi_app``."""

from __future__ import annotations

import warnings

import pytest

with warnings.catch_warnings():  # starlette.testclient prefers httpx2; httpx works
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    import starlette.testclient  # noqa: F401

TOKENS = {
    "FLUXRATE_METER_API_CALLS": "11111111-1111-4111-8111-111111111111",
    "FLUXRATE_METER_TOKENS": "22222222-2222-4222-8222-222222222222",
    "FLUXRATE_METER_STREAM_BYTES": "33333333-3333-4333-8333-333333333333",
}


@pytest.fixture
def example_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment fluxrate.yaml reads (fixed meter tokens, a dummy API key)."""
    monkeypatch.setenv("FLUXRATE_API_KEY", "org_live_example_tests")
    monkeypatch.setenv("FLUXRATE_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FLUXRATE_ALLOW_INSECURE", "true")
    for name, value in TOKENS.items():
        monkeypatch.setenv(name, value)
    return dict(TOKENS)
