"""The devserver's data model: organisations, API keys, meters and customers.

Seeded objects get deterministic ids (UUIDv5 of their names), so a meter keeps its id and
token across restarts and a ``fluxrate.yaml`` written once keeps working.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

WRITE_SCOPE = "usage.write"
READ_SCOPE = "usage.read"
ALL_SCOPES = frozenset({WRITE_SCOPE, READ_SCOPE})

DEFAULT_ORG = "default"
DEFAULT_API_KEY = "org_live_devserver_local_development_key"
DEFAULT_METERS: dict[str, str] = {
    "api_calls": "SUM",
    "peak": "MAX",
    "seats": "UNIQUE_COUNT",
    "level": "LAST",
}

_NAMESPACE = uuid.UUID("6f1c2a5e-8d2b-4c1e-9a57-3f0b2d7e9c11")


class Aggregation(enum.StrEnum):
    SUM = "SUM"
    MAX = "MAX"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    LAST = "LAST"

    @classmethod
    def parse(cls, text: str) -> Aggregation:
        try:
            return cls(text.strip().upper())
        except ValueError:
            choices = ", ".join(a.value for a in cls)
            raise ValueError(f"unknown aggregation {text!r} (expected one of {choices})") from None


def stable_id(*parts: str) -> str:
    """A deterministic UUID for a seeded object."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def org_id_for(name: str) -> str:
    return stable_id("org", name)


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ApiKey:
    key: str
    org_id: str
    scopes: frozenset[str]

    def masked(self) -> str:
        return self.key[:12] + "…" if len(self.key) > 12 else "…"


@dataclass(frozen=True, slots=True)
class Meter:
    id: str
    org_id: str
    name: str
    token: str
    aggregation: Aggregation


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    org_id: str
    external_id: str
    name: str
    email: str | None
    created_at: str
