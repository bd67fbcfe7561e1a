"""Test helpers for apps that use fluxrate-web; also a pytest plugin (``pytest11`` entry point).

* the ``fluxrate_events`` fixture: every usage event any fluxrate-web client in the process
  tracks during the test is captured (not sent) and listed, synchronously;
* :class:`CapturingClient`: a client that keeps events in memory, for
  ``Metering(config, client=CapturingClient())``.

This module imports no web framework and nothing heavy: pytest loads it in every session.
See ``docs/testing.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from fluxrate_web.core.events import UsageEvent

__all__ = ["CapturedEvents", "CapturingClient", "CapturingStats", "fluxrate_events"]


def _token_of(meter: str) -> str:
    from fluxrate_web.core.metering import known_meter_token

    return known_meter_token(meter) or meter


class CapturedEvents(Sequence["UsageEvent"]):
    """A live, read-only list of :class:`~fluxrate_web.core.events.UsageEvent`, with a few
    questions on top. ``meter`` arguments accept a meter name (known to a ``Metering`` of this
    process) or a token."""

    __slots__ = ("_items",)

    def __init__(self, items: list[UsageEvent] | None = None) -> None:
        self._items: list[UsageEvent] = [] if items is None else items

    @overload
    def __getitem__(self, index: int) -> UsageEvent: ...

    @overload
    def __getitem__(self, index: slice) -> list[UsageEvent]: ...

    def __getitem__(self, index: int | slice) -> UsageEvent | list[UsageEvent]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[UsageEvent]:
        return iter(list(self._items))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CapturedEvents):
            return self._items == other._items
        if isinstance(other, list | tuple):
            return self._items == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CapturedEvents({self._items!r})"

    def clear(self) -> None:
        """Forget the events captured so far."""
        self._items.clear()

    def for_meter(self, meter: str) -> list[UsageEvent]:
        token = _token_of(meter)
        return [event for event in self if event.meter_token == token]

    def for_customer(self, customer: str) -> list[UsageEvent]:
        return [event for event in self if event.customer_external_id == customer]

    def total(self, meter: str | None = None, customer: str | None = None) -> int | float | Decimal:
        """The sum of the quantities, optionally of one meter and/or customer."""
        token = _token_of(meter) if meter is not None else None
        total: Any = 0
        for event in self:
            if token is not None and event.meter_token != token:
                continue
            if customer is not None and event.customer_external_id != customer:
                continue
            total = total + event.quantity
        return total  # type: ignore[no-any-return]

    def customers(self) -> set[str]:
        return {event.customer_external_id for event in self}


class CapturingStats:
    """The counters of :class:`CapturingClient` (the names of ``ClientStats``)."""

    __slots__ = ("deduplicated", "delivered", "dropped", "enqueued", "failed", "pending", "retried")

    def __init__(self) -> None:
        self.enqueued = 0
        self.delivered = 0
        self.deduplicated = 0
        self.retried = 0
        self.failed = 0
        self.dropped = 0
        self.pending = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"CapturingStats({fields})"


class CapturingClient:
    """A client that keeps every event in :attr:`events` instead of sending it.

    Same interface as ``FluxrateClient`` for what the request path uses (``track``, ``enqueue``,
    ``note_dropped``, ``start``, ``flush``, ``close``, ``stats``); ``track`` validates like the
    real client and never raises. ``dropped`` lists the reasons of dropped events.
    """

    def __init__(self) -> None:
        self._events: list[UsageEvent] = []
        self.events = CapturedEvents(self._events)
        self.dropped: list[str] = []
        self.stats = CapturingStats()
        self.closed = False
        self._lock = threading.Lock()

    def track(
        self,
        meter_token: str,
        customer_external_id: str,
        quantity: int | float | Decimal = 1,
        *,
        timestamp: Any = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> UsageEvent | None:
        from fluxrate_web.core.events import UsageEvent

        try:
            event = UsageEvent.create(
                meter_token,
                customer_external_id,
                quantity,
                timestamp=timestamp,
                idempotency_key=idempotency_key,
                metadata=metadata,
            )
        except Exception as exc:
            self.note_dropped(f"invalid usage: {exc}")
            return None
        return event if self.enqueue(event) else None

    def enqueue(self, event: UsageEvent) -> bool:
        with self._lock:
            self._events.append(event)
            self.stats.enqueued += 1
            self.stats.delivered += 1
        return True

    def note_dropped(self, reason: str) -> None:
        with self._lock:
            self.dropped.append(reason)
            self.stats.dropped += 1

    def start(self) -> None:
        return None

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self.dropped.clear()
            self.stats = CapturingStats()

    def __enter__(self) -> CapturingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CapturingClient(events={len(self.events)}, dropped={len(self.dropped)})"


def _capture() -> Iterable[CapturedEvents]:
    from fluxrate_web.core.client import capture_events

    with capture_events() as captured:
        yield CapturedEvents(captured)


try:
    import pytest
except ImportError:  # pragma: no cover - the module also works without pytest
    pass
else:

    @pytest.fixture
    def fluxrate_events() -> Iterator[CapturedEvents]:
        """Every usage event tracked during the test, captured instead of sent."""
        yield from _capture()
