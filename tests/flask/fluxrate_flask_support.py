"""Shared by the Flask adapter tests: a recording usage client and the test meters.

The recording client is the seam's client interface (``track``/``enqueue``/``note_dropped``/
``flush``/``close``) keeping events in memory: nothing here mocks HTTP. Delivery over HTTP is
covered by the devserver tests (tests/flask/test_flask_warnings.py, tests/e2e/test_flask_*).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask

from fluxrate_web.core.events import UsageEvent
from fluxrate_web.flask import Fluxrate

API_CALLS = "11111111-1111-4111-8111-111111111111"
TOKENS = "22222222-2222-4222-8222-222222222222"
BYTES = "33333333-3333-4333-8333-333333333333"

METERS = {"api_calls": API_CALLS, "tokens": TOKENS, "bytes": BYTES}
NAMES = {token: name for name, token in METERS.items()}

AppFactory = Callable[..., Flask]


@dataclass
class Recorded:
    meter: str
    customer: str
    quantity: Any
    metadata: Any
    idempotency_key: str


@dataclass
class RecordingClient:
    """Validates every event like the real client (``UsageEvent.create``) and keeps it."""

    events: list[Recorded] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    closed: bool = False

    def track(
        self,
        meter_token: str,
        customer_external_id: str,
        quantity: Any = 1,
        *,
        timestamp: Any = None,
        idempotency_key: str | None = None,
        metadata: Any = None,
    ) -> UsageEvent:
        event = UsageEvent.create(
            meter_token,
            customer_external_id,
            quantity,
            timestamp=timestamp,
            idempotency_key=idempotency_key,
            metadata=metadata,
        )
        self.enqueue(event)
        return event

    def enqueue(self, event: UsageEvent) -> bool:
        self.events.append(
            Recorded(
                NAMES.get(event.meter_token, event.meter_token),
                event.customer_external_id,
                event.quantity,
                event.metadata,
                event.idempotency_key,
            )
        )
        return True

    def note_dropped(self, reason: str) -> None:
        self.dropped.append(reason)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    # -- assertions

    def billed(self) -> list[tuple[str, str, Any]]:
        return [(e.meter, e.customer, e.quantity) for e in self.events]

    def clear(self) -> None:
        self.events.clear()
        self.dropped.clear()


CUSTOMER = {"X-Customer-Id": "cus_1"}


def extension_of(app: Flask) -> Fluxrate:
    """The extension ``make_app`` built for ``app``."""
    extension = app.extensions["fluxrate_test_extension"]
    assert isinstance(extension, Fluxrate)
    return extension
