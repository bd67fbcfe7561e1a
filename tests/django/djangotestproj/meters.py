"""Meter tokens and the base configuration of the adapter tests."""

from __future__ import annotations

from typing import Any

API_CALLS = "0b8f6d6e-2c1a-4f5e-9a53-3f3c8d9e7a10"
REPORTS = "5d2f1c3b-7e4a-4b6c-8d9e-1a2b3c4d5e6f"
BYTES_OUT = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
METERS = {"api_calls": API_CALLS, "reports": REPORTS, "bytes_out": BYTES_OUT}

# The config most tests use: every route costs one api_call for the X-Customer-Id customer.
BASE_CONFIG: dict[str, Any] = {
    "API_KEY": "org_live_test",
    "METERS": METERS,
    "CUSTOMER": "header:X-Customer-Id",
    "DEFAULT_METER": "api_calls",
}
