"""Seed data: organisations with their API keys, meters and customers.

From a small YAML/JSON file (``--seed FILE``), from flags (``--meter``, ``--api-key``,
``--customer``; they apply to the organisation named ``default``), or both.

File format (every section optional; the top-level ``api_keys``/``meters``/``customers``
shorthand seeds the ``default`` organisation)::

    organizations:
      - name: default
        api_keys:
          - org_live_abc                       # both scopes
          - {key: org_live_ro, scopes: [usage.read]}
        meters:
          api_calls: SUM                       # name: AGGREGATION
          - {name: seats, aggregation: UNIQUE_COUNT, token: 3f0c...}   # or a list of these
        customers: [acme, globex]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fluxrate_web.devserver.models import (
    ALL_SCOPES,
    DEFAULT_API_KEY,
    DEFAULT_METERS,
    DEFAULT_ORG,
    Aggregation,
)


@dataclass(slots=True)
class MeterSeed:
    name: str
    aggregation: Aggregation
    token: str | None = None


@dataclass(slots=True)
class KeySeed:
    key: str
    scopes: frozenset[str] = ALL_SCOPES


@dataclass(slots=True)
class OrgSeed:
    name: str
    api_keys: list[KeySeed] = field(default_factory=list)
    meters: list[MeterSeed] = field(default_factory=list)
    customers: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Seed:
    organizations: list[OrgSeed] = field(default_factory=list)

    def org(self, name: str) -> OrgSeed:
        for org in self.organizations:
            if org.name == name:
                return org
        created = OrgSeed(name)
        self.organizations.append(created)
        return created

    def merge(self, other: Seed) -> None:
        for org in other.organizations:
            mine = self.org(org.name)
            mine.api_keys.extend(org.api_keys)
            mine.meters.extend(org.meters)
            mine.customers.extend(org.customers)

    def apply_defaults(self) -> None:
        """The default organisation always exists and has a key; with no meter anywhere it
        gets the four default meters (one per aggregation)."""
        default = self.org(DEFAULT_ORG)
        if not default.api_keys:
            default.api_keys.append(KeySeed(DEFAULT_API_KEY))
        if not any(org.meters for org in self.organizations):
            default.meters.extend(
                MeterSeed(name, Aggregation.parse(agg)) for name, agg in DEFAULT_METERS.items()
            )


class SeedError(ValueError):
    pass


def _parse_scopes(value: object, where: str) -> frozenset[str]:
    if isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
    elif isinstance(value, list) and all(isinstance(s, str) for s in value):
        items = list(value)
    else:
        raise SeedError(f"{where}: scopes must be a list of strings")
    return frozenset(items)


def parse_meter_flag(text: str) -> MeterSeed:
    """``NAME:AGG`` or ``NAME:AGG:TOKEN``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise SeedError(f"--meter {text!r}: expected NAME:AGGREGATION[:TOKEN]")
    try:
        aggregation = Aggregation.parse(parts[1])
    except ValueError as exc:
        raise SeedError(f"--meter {text!r}: {exc}") from None
    return MeterSeed(parts[0], aggregation, parts[2] if len(parts) == 3 and parts[2] else None)


def parse_key_flag(text: str) -> KeySeed:
    """``KEY`` (both scopes) or ``KEY:SCOPE[,SCOPE]`` (``KEY:`` for no scope at all)."""
    key, sep, scopes = text.partition(":")
    if not key:
        raise SeedError(f"--api-key {text!r}: empty key")
    if not sep:
        return KeySeed(key)
    return KeySeed(key, _parse_scopes(scopes, f"--api-key {key[:12]}…"))


def from_flags(
    meters: Sequence[str] = (), api_keys: Sequence[str] = (), customers: Sequence[str] = ()
) -> Seed:
    seed = Seed()
    org = seed.org(DEFAULT_ORG)
    org.meters.extend(parse_meter_flag(m) for m in meters)
    org.api_keys.extend(parse_key_flag(k) for k in api_keys)
    org.customers.extend(customers)
    return seed


def _meters(value: object, where: str) -> list[MeterSeed]:
    result: list[MeterSeed] = []
    items: Iterable[object]
    if isinstance(value, Mapping):
        items = [{"name": k, "aggregation": v} for k, v in value.items()]
    elif isinstance(value, list):
        items = value
    else:
        raise SeedError(f"{where}: expected a mapping name: AGGREGATION or a list")
    for i, item in enumerate(items):
        spot = f"{where}[{i}]"
        if isinstance(item, str):
            result.append(parse_meter_flag(item))
            continue
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise SeedError(f"{spot}: expected {{name, aggregation[, token]}}")
        token = item.get("token")
        if token is not None and not isinstance(token, str):
            raise SeedError(f"{spot}.token: expected a string")
        try:
            aggregation = Aggregation.parse(str(item.get("aggregation", "SUM")))
        except ValueError as exc:
            raise SeedError(f"{spot}.aggregation: {exc}") from None
        result.append(MeterSeed(item["name"], aggregation, token))
    return result


def _keys(value: object, where: str) -> list[KeySeed]:
    if not isinstance(value, list):
        raise SeedError(f"{where}: expected a list")
    result: list[KeySeed] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            result.append(KeySeed(item))
        elif isinstance(item, Mapping) and isinstance(item.get("key"), str):
            scopes = item.get("scopes")
            result.append(
                KeySeed(
                    item["key"],
                    ALL_SCOPES if scopes is None else _parse_scopes(scopes, f"{where}[{i}]"),
                )
            )
        else:
            raise SeedError(f"{where}[{i}]: expected a key string or {{key, scopes}}")
    return result


def _customers(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
        raise SeedError(f"{where}: expected a list of external ids")
    return list(value)


def _org(data: Mapping[str, Any], name: str, where: str) -> OrgSeed:
    org = OrgSeed(name)
    if "api_keys" in data:
        org.api_keys = _keys(data["api_keys"], f"{where}.api_keys")
    if "meters" in data:
        org.meters = _meters(data["meters"], f"{where}.meters")
    if "customers" in data:
        org.customers = _customers(data["customers"], f"{where}.customers")
    return org


def from_mapping(data: object, where: str = "seed") -> Seed:
    if not isinstance(data, Mapping):
        raise SeedError(f"{where}: expected a mapping")
    unknown = set(data) - {"organizations", "api_keys", "meters", "customers"}
    if unknown:
        raise SeedError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    seed = Seed()
    if any(k in data for k in ("api_keys", "meters", "customers")):
        seed.organizations.append(_org(data, DEFAULT_ORG, where))
    orgs = data.get("organizations", [])
    if not isinstance(orgs, list):
        raise SeedError(f"{where}.organizations: expected a list")
    for i, item in enumerate(orgs):
        spot = f"{where}.organizations[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise SeedError(f"{spot}: expected a mapping with a name")
        extra = Seed([_org(item, item["name"], spot)])
        seed.merge(extra)
    return seed


def load_file(path: str | Path) -> Seed:
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml  # PyYAML is a core dependency of fluxrate-web

        data = yaml.safe_load(text) or {}
    return from_mapping(data, file.name)
