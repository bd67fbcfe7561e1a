"""The devserver's ledger and the failure logs, against the load generator's record.

Per ``(customer, meter)`` the record says how many events the app had to bill and their total
quantity; the devserver says how many it stored and their total. With ``e`` expected and ``s``
stored events: ``min(e, s)`` are *delivered*, ``s - e`` (if positive) *duplicated* (billed
twice, or billed without a 2xx answer) except as many as there were requests of that customer
and meter whose answer was cut (the server killed while sending it: served, so billed, but the
generator saw no status), ``e - s`` (if positive) *lost* unless they sit in a
failure log or a spool, where they are *kept* (accounted for; ``fluxrate-web replay`` / the
spool delivers them). The totals must match too (a quantity billed wrong is a failure even when
the counts agree), and no idempotency key may be stored twice.

Limitation: the examples give events no request id, so a lost event and a duplicated one of the
same customer and meter cancel out in the counts; the totals and the key check still see most
such cases.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from _chaos.billing import Billing
from _chaos.load import Record

Totals = dict[tuple[str, str], tuple[int, Decimal]]


@dataclass(frozen=True, slots=True)
class Kept:
    """An event in a failure log."""

    key: str
    customer: str
    meter: str
    quantity: Decimal
    reason: str
    status: int | None


def failure_log(paths: list[Path], meter_of_token: dict[str, str]) -> list[Kept]:
    """The events of failure logs (each key once, first line wins)."""
    kept: dict[str, Kept] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record: dict[str, Any] = json.loads(line)
            event = record.get("event") or {}
            key = str(event.get("idempotency_key"))
            if key in kept:
                continue
            kept[key] = Kept(
                key=key,
                customer=str(event.get("customer_external_id")),
                meter=meter_of_token.get(str(event.get("meter_token")), "?"),
                quantity=Decimal(str(event.get("quantity"))),
                reason=str(record.get("reason")),
                status=record.get("status"),
            )
    return list(kept.values())


@dataclass
class Tally:
    sent: int = 0  # events the record says were billable
    stored: int = 0  # events in the ledger
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0  # neither stored nor kept
    kept: int = 0  # expected, not stored, in a failure log (before any replay)
    duplicate_keys: int = 0
    unanswered: int = 0  # stored beyond the record, by requests whose answer was cut
    totals_match: bool = True
    mismatches: list[str] = field(default_factory=list)
    kept_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def clean(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.totals_match

    def describe(self) -> str:
        parts = [f"sent {self.sent}", f"stored {self.stored}", f"delivered {self.delivered}"]
        parts += [f"dup {self.duplicated}", f"lost {self.lost}", f"kept {self.kept}"]
        if self.unanswered:
            parts.append(f"billed for requests whose answer was cut {self.unanswered}")
        if self.kept_reasons:
            parts.append("reasons " + ",".join(f"{k}={v}" for k, v in self.kept_reasons.items()))
        if self.mismatches:
            parts.append("mismatches: " + "; ".join(self.mismatches[:6]))
        return ", ".join(parts)


def compare(
    record: Record,
    billing: Billing,
    *,
    customers: set[str] | None = None,
    failure_logs: list[Path] = (),  # type: ignore[assignment]
) -> Tally:
    """The ledger (only ``customers``' events when given) against the record."""
    expected = record.expected()
    events = billing.events()
    if customers is not None:
        events = [e for e in events if e["customer_external_id"] in customers]
    stored: Totals = {}
    keys: Counter[str] = Counter()
    for event in events:
        key = (event["customer_external_id"], event["meter"])
        count, total = stored.get(key, (0, Decimal(0)))
        stored[key] = (count + 1, total + Decimal(str(event["quantity"])))
        if event.get("idempotency_key"):
            keys[event["idempotency_key"]] += 1
    stored_keys = set(keys)
    kept_events = [
        k
        for k in failure_log(list(failure_logs), billing.meter_of_token())
        if k.key not in stored_keys
    ]
    kept_by: dict[tuple[str, str], int] = Counter((k.customer, k.meter) for k in kept_events)

    allowance = record.unanswered()
    tally = Tally()
    tally.stored = len(events)
    tally.duplicate_keys = sum(n - 1 for n in keys.values() if n > 1)
    for where in sorted(set(expected) | set(stored)):
        e_count, e_total = expected.get(where, (0, Decimal(0)))
        s_count, s_total = stored.get(where, (0, Decimal(0)))
        tally.sent += e_count
        tally.delivered += min(e_count, s_count)
        extra = max(0, s_count - e_count)
        if extra:
            # a request cut while its answer was being sent was served, hence billed
            excused = min(extra, allowance.get(where, 0))
            tally.unanswered += excused
            tally.duplicated += extra - excused
            if excused == extra:
                continue  # its quantity is unknown: the total cannot be compared
        missing = max(0, e_count - s_count)
        kept = min(missing, kept_by.get(where, 0))
        tally.kept += kept
        tally.lost += missing - kept
        if e_total != s_total:
            tally.totals_match = False
            tally.mismatches.append(f"{where[0]}/{where[1]}: expected {e_total}, stored {s_total}")
    tally.duplicated += tally.duplicate_keys
    tally.kept_reasons = Counter(k.reason for k in kept_events)
    return tally
