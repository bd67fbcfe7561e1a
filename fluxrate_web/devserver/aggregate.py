"""Each meter's aggregation over a customer's events.

``SUM`` adds quantities, ``MAX`` keeps the largest, ``UNIQUE_COUNT`` counts distinct
``metadata.user_id`` values (a string ``"7"`` and a number ``7`` are different users),
``LAST`` keeps the quantity of the event with the latest ``timestamp`` and, on equal
timestamps, the one that arrived last.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from fluxrate_web.devserver.models import Aggregation
from fluxrate_web.devserver.store import EventRow


class Accumulator:
    __slots__ = ("_last_key", "aggregation", "count", "users", "value")

    def __init__(self, aggregation: Aggregation) -> None:
        self.aggregation = aggregation
        self.value: Decimal | None = None
        self.users: set[str] = set()
        self.count = 0
        self._last_key = (-(2**63), -1)

    def add(self, row: EventRow) -> None:
        self.count += 1
        agg = self.aggregation
        if agg is Aggregation.UNIQUE_COUNT:
            if row.user_key is not None:
                self.users.add(row.user_key)
            return
        quantity = Decimal(row.quantity)
        if agg is Aggregation.SUM:
            self.value = quantity if self.value is None else self.value + quantity
        elif agg is Aggregation.MAX:
            self.value = quantity if self.value is None or quantity > self.value else self.value
        else:  # LAST: by event timestamp, ties by arrival
            key = (row.ts_us, row.seq)
            if key >= self._last_key:
                self._last_key = key
                self.value = quantity

    def result(self) -> Decimal:
        if self.aggregation is Aggregation.UNIQUE_COUNT:
            return Decimal(len(self.users))
        return self.value if self.value is not None else Decimal(0)


def aggregate(aggregation: Aggregation, rows: Iterable[EventRow]) -> Decimal:
    acc = Accumulator(aggregation)
    for row in rows:
        acc.add(row)
    return acc.result()
