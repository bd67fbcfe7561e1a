"""Fault injection: errors, 429s, latency, dropped connections and outage windows.

Every request under ``/api/`` draws one uniform number ``r`` from a seeded RNG, so the
shares are exclusive and a seeded run is reproducible::

    r < drop_rate                                    -> close the socket without answering
    r < drop_rate + error_rate                       -> answer ``status`` (500/503...)
    r < ... + rate_limit_rate                        -> answer 429 with Retry-After
    r < ... + stored_drop_rate                       -> store the event, then close the socket

``latency_ms`` delays every such request first; during an outage window every request is
answered ``status`` without a draw.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from typing import Any

RATE_FIELDS = ("drop_rate", "error_rate", "rate_limit_rate", "stored_drop_rate")


class Action(enum.Enum):
    NONE = "none"
    DROP = "drop"
    ERROR = "error"
    RATE_LIMIT = "rate_limit"
    STORED_DROP = "stored_drop"
    OUTAGE = "outage"


@dataclass(frozen=True, slots=True)
class FaultSettings:
    error_rate: float = 0.0
    status: int = 503
    rate_limit_rate: float = 0.0
    retry_after: float = 1.0
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    stored_drop_rate: float = 0.0
    outage_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in (*RATE_FIELDS, "latency_ms", "outage_seconds", "retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name}: expected a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0")
        for name in RATE_FIELDS:
            if getattr(self, name) > 1:
                raise ValueError(f"{name}: expected a share between 0 and 1")
        if sum(getattr(self, name) for name in RATE_FIELDS) > 1 + 1e-9:
            raise ValueError(f"the rates ({', '.join(RATE_FIELDS)}) add up to more than 1")
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise ValueError("status: expected an integer")
        if not 500 <= self.status <= 599:
            raise ValueError("status: expected a 5xx status")

    @property
    def active(self) -> bool:
        return any(
            getattr(self, name) > 0 for name in (*RATE_FIELDS, "latency_ms", "outage_seconds")
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FaultSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"seed"})
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {
            k: float(v) if isinstance(v, Decimal) else v for k, v in data.items() if k in known
        }
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_fault_args(specs: Iterable[str]) -> dict[str, Any]:
    """``["error_rate=0.3,status=500", "latency_ms=20"]`` -> a settings mapping."""
    result: dict[str, Any] = {}
    for spec in specs:
        for item in spec.split(","):
            if not item.strip():
                continue
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"--fault {item!r}: expected KEY=VALUE")
            key = key.strip()
            text = raw.strip()
            try:
                value: float | int = int(text) if key in ("status", "seed") else float(text)
            except ValueError:
                raise ValueError(f"--fault {item!r}: {text!r} is not a number") from None
            result[key] = value
    return result


class FaultInjector:
    """Current settings plus the RNG and the outage deadline. Used from the event loop only."""

    def __init__(self, settings: FaultSettings | None = None, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self.settings = FaultSettings()
        self._outage_until = 0.0
        self.configure(settings or FaultSettings())

    def configure(self, settings: FaultSettings, seed: int | None = None) -> None:
        if seed is not None:
            self._rng.seed(seed)
        self.settings = settings
        self._outage_until = (
            time.monotonic() + settings.outage_seconds if settings.outage_seconds > 0 else 0.0
        )

    def clear(self) -> None:
        self.configure(FaultSettings())

    @property
    def active(self) -> bool:
        return self.settings.active

    def outage_remaining(self) -> float:
        return max(0.0, self._outage_until - time.monotonic())

    def decide(self) -> Action:
        s = self.settings
        if self._outage_until and time.monotonic() < self._outage_until:
            return Action.OUTAGE
        r = self._rng.random()
        threshold = s.drop_rate
        if r < threshold:
            return Action.DROP
        threshold += s.error_rate
        if r < threshold:
            return Action.ERROR
        threshold += s.rate_limit_rate
        if r < threshold:
            return Action.RATE_LIMIT
        threshold += s.stored_drop_rate
        if r < threshold:
            return Action.STORED_DROP
        return Action.NONE

    def describe(self) -> dict[str, Any]:
        data = self.settings.to_dict()
        data["outage_remaining"] = round(self.outage_remaining(), 3)
        data["active"] = self.active
        return data


def format_retry_after(seconds: float) -> str:
    """Retry-After is an integer number of seconds (RFC 9110); round up, never below 0."""
    return str(max(0, math.ceil(seconds)))
