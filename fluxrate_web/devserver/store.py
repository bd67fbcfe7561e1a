"""SQLite storage (stdlib ``sqlite3``) with in-process caches for the lookups on the hot path.

One connection, used only from the event loop thread, so a lookup followed by an insert is
atomic without locks: no ``await`` ever sits between them. ``UNIQUE(org_id,
idempotency_key)`` backs that up in the schema.

Writes are grouped into transactions committed every ``COMMIT_INTERVAL`` seconds and at
shutdown (write-behind): an in-memory database does not care, a ``--db`` file then costs
one WAL append per batch instead of one per event. A crash (SIGKILL) of the devserver may
lose the last ``COMMIT_INTERVAL`` of acknowledged events in the file; reads always see them.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fluxrate_web.devserver.models import (
    Aggregation,
    ApiKey,
    Customer,
    Meter,
    Org,
    org_id_for,
    stable_id,
)
from fluxrate_web.devserver.seed import Seed
from fluxrate_web.devserver.values import format_timestamp, now_utc

COMMIT_INTERVAL = 0.1

SCHEMA = """
CREATE TABLE IF NOT EXISTS organizations (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS api_keys (
    key TEXT PRIMARY KEY, org_id TEXT NOT NULL, scopes TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meters (
    id TEXT PRIMARY KEY, org_id TEXT NOT NULL, name TEXT NOT NULL, token TEXT NOT NULL UNIQUE,
    aggregation TEXT NOT NULL, UNIQUE (org_id, name));
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, org_id TEXT NOT NULL, external_id TEXT NOT NULL, name TEXT NOT NULL,
    email TEXT, seeded INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
    UNIQUE (org_id, external_id));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE, org_id TEXT NOT NULL, meter_id TEXT NOT NULL,
    customer_id TEXT NOT NULL, quantity TEXT NOT NULL, timestamp TEXT NOT NULL,
    ts_us INTEGER NOT NULL, created_at TEXT NOT NULL, idempotency_key TEXT,
    meta_data TEXT, user_key TEXT, fingerprint TEXT NOT NULL, source TEXT NOT NULL,
    UNIQUE (org_id, idempotency_key));
CREATE INDEX IF NOT EXISTS events_by_meter ON events (meter_id, seq);
"""

_EVENT_COLUMNS = (
    "seq, id, org_id, meter_id, customer_id, quantity, timestamp, ts_us, created_at, "
    "idempotency_key, meta_data, user_key, fingerprint, source"
)
_INSERT_EVENT = (
    "INSERT INTO events (id, org_id, meter_id, customer_id, quantity, timestamp, ts_us, "
    "created_at, idempotency_key, meta_data, user_key, fingerprint, source) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


@dataclass(frozen=True, slots=True)
class EventRow:
    seq: int
    id: str
    org_id: str
    meter_id: str
    customer_id: str
    quantity: str
    timestamp: str
    ts_us: int
    created_at: str
    idempotency_key: str | None
    meta_data: str | None  # JSON text
    user_key: str | None
    fingerprint: str
    source: str

    def response_body(self) -> bytes:
        """The documented ``/sdk/track`` 201 body, built without a JSON round trip."""
        return (
            f'{{"id":"{self.id}","customer_id":"{self.customer_id}",'
            f'"meter_id":"{self.meter_id}","quantity":"{self.quantity}",'
            f'"timestamp":"{self.timestamp}","created_at":"{self.created_at}",'
            f'"meta_data":{self.meta_data or "null"}}}'
        ).encode()

    def listing(self) -> dict[str, Any]:
        """A row of ``GET /meters/{id}/events`` (documented keys, plus ``timestamp``)."""
        return {
            "id": self.id,
            "customer_id": self.customer_id,
            "meter_id": self.meter_id,
            "quantity": self.quantity,
            "timestamp": self.timestamp,
            "ingested_at": self.created_at,
            "idempotency_key": self.idempotency_key,
            "meta_data": json.loads(self.meta_data) if self.meta_data else None,
        }


class Store:
    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._conn = sqlite3.connect(path or ":memory:", isolation_level=None)
        if path:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        self.orgs: dict[str, Org] = {}
        self.api_keys: dict[str, ApiKey] = {}
        self.meters_by_token: dict[str, Meter] = {}
        self.meters_by_id: dict[str, Meter] = {}
        self.customers_by_ext: dict[tuple[str, str], Customer] = {}
        self.customers_by_id: dict[str, Customer] = {}
        self._idempotency_keys: set[tuple[str, str]] = set()  # skips a SELECT per new event
        self._load_caches()

    # -- lifecycle ----------------------------------------------------------------------------

    def _write(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN")
        return self._conn.execute(sql, params)

    def commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self.commit()
        self._conn.close()

    def _load_caches(self) -> None:
        c = self._conn
        for oid, name in c.execute("SELECT id, name FROM organizations"):
            self.orgs[oid] = Org(oid, name)
        for key, oid, scopes in c.execute("SELECT key, org_id, scopes FROM api_keys"):
            self.api_keys[key] = ApiKey(key, oid, frozenset(json.loads(scopes)))
        for mid, oid, name, token, agg in c.execute(
            "SELECT id, org_id, name, token, aggregation FROM meters"
        ):
            self._cache_meter(Meter(mid, oid, name, token, Aggregation(agg)))
        for row in c.execute(
            "SELECT id, org_id, external_id, name, email, created_at FROM customers"
        ):
            self._cache_customer(Customer(*row))
        self._idempotency_keys.update(
            c.execute(
                "SELECT org_id, idempotency_key FROM events WHERE idempotency_key IS NOT NULL"
            )
        )

    def _cache_meter(self, meter: Meter) -> None:
        old = self.meters_by_id.get(meter.id)
        if old is not None:
            self.meters_by_token.pop(old.token, None)
        self.meters_by_id[meter.id] = meter
        self.meters_by_token[meter.token] = meter

    def _cache_customer(self, customer: Customer) -> None:
        self.customers_by_ext[(customer.org_id, customer.external_id)] = customer
        self.customers_by_id[customer.id] = customer

    # -- seed ---------------------------------------------------------------------------------

    def apply_seed(self, seed: Seed) -> None:
        """Idempotent: re-seeding updates aggregations, tokens and scopes in place."""
        for org_seed in seed.organizations:
            org = Org(org_id_for(org_seed.name), org_seed.name)
            self._write("INSERT OR IGNORE INTO organizations VALUES (?, ?)", (org.id, org.name))
            self.orgs[org.id] = org
            for k in org_seed.api_keys:
                other = self.api_keys.get(k.key)
                if other is not None and other.org_id != org.id:
                    raise ValueError(f"API key {k.key[:12]}… belongs to two organisations")
                self._write(
                    "INSERT OR REPLACE INTO api_keys VALUES (?, ?, ?)",
                    (k.key, org.id, json.dumps(sorted(k.scopes))),
                )
                self.api_keys[k.key] = ApiKey(k.key, org.id, k.scopes)
            for m in org_seed.meters:
                meter = Meter(
                    id=stable_id("meter", org.name, m.name),
                    org_id=org.id,
                    name=m.name,
                    token=m.token or stable_id("meter-token", org.name, m.name),
                    aggregation=m.aggregation,
                )
                holder = self.meters_by_token.get(meter.token)
                if holder is not None and holder.id != meter.id:
                    raise ValueError(f"meter token {meter.token} is used by two meters")
                self._write(
                    "INSERT INTO meters VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                    "token = excluded.token, aggregation = excluded.aggregation",
                    (meter.id, org.id, meter.name, meter.token, meter.aggregation.value),
                )
                self._cache_meter(meter)
            for ext in org_seed.customers:
                if (org.id, ext) not in self.customers_by_ext:
                    self._insert_customer(
                        org.id, ext, ext, None, stable_id("customer", org.name, ext), True
                    )
        self.commit()

    # -- customers ----------------------------------------------------------------------------

    def _insert_customer(
        self, org_id: str, external_id: str, name: str, email: str | None, cid: str, seeded: bool
    ) -> Customer:
        customer = Customer(cid, org_id, external_id, name, email, format_timestamp(now_utc()))
        self._write(
            "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (cid, org_id, external_id, name, email, int(seeded), customer.created_at),
        )
        self._cache_customer(customer)
        return customer

    def create_customer(
        self, org_id: str, external_id: str, name: str | None = None, email: str | None = None
    ) -> Customer:
        """A new customer (auto-created ones are named after their external id)."""
        return self._insert_customer(
            org_id, external_id, name or external_id, email, str(uuid.uuid4()), False
        )

    def customers(self, org_id: str) -> list[Customer]:
        return sorted(
            (c for c in self.customers_by_id.values() if c.org_id == org_id),
            key=lambda c: (c.created_at, c.external_id),
        )

    def meters(self, org_id: str) -> list[Meter]:
        return [m for m in self.meters_by_id.values() if m.org_id == org_id]

    def org_by_name(self, name: str) -> Org | None:
        for org in self.orgs.values():
            if org.name == name:
                return org
        return None

    # -- events -------------------------------------------------------------------------------

    def find_idempotent(self, org_id: str, key: str) -> EventRow | None:
        if (org_id, key) not in self._idempotency_keys:
            return None
        row = self._conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE org_id = ? AND idempotency_key = ?",
            (org_id, key),
        ).fetchone()
        return EventRow(*row) if row else None

    def insert_event(
        self,
        *,
        org_id: str,
        meter_id: str,
        customer_id: str,
        quantity: str,
        timestamp: datetime,
        ts_us: int,
        idempotency_key: str | None,
        meta_data: str | None,
        user_key: str | None,
        fingerprint: str,
        source: str,
    ) -> EventRow:
        event_id = str(uuid.uuid4())
        ts_text = format_timestamp(timestamp)
        created_at = format_timestamp(now_utc())
        params = (
            event_id,
            org_id,
            meter_id,
            customer_id,
            quantity,
            ts_text,
            ts_us,
            created_at,
            idempotency_key,
            meta_data,
            user_key,
            fingerprint,
            source,
        )
        cursor = self._write(_INSERT_EVENT, params)
        if idempotency_key is not None:
            self._idempotency_keys.add((org_id, idempotency_key))
        seq = cursor.lastrowid or 0
        return EventRow(seq, *params)

    def _where(
        self,
        org_id: str | None,
        meter_id: str | None,
        customer_id: str | None,
        start_us: int | None = None,
        end_us: int | None = None,
    ) -> tuple[str, tuple[object, ...]]:
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (
            ("org_id", org_id),
            ("meter_id", meter_id),
            ("customer_id", customer_id),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if start_us is not None:
            clauses.append("ts_us >= ?")
            params.append(start_us)
        if end_us is not None:
            clauses.append("ts_us < ?")
            params.append(end_us)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)

    def count_events(
        self,
        *,
        org_id: str | None = None,
        meter_id: str | None = None,
        customer_id: str | None = None,
    ) -> int:
        where, params = self._where(org_id, meter_id, customer_id)
        (count,) = self._conn.execute(f"SELECT COUNT(*) FROM events{where}", params).fetchone()
        return int(count)

    def events(
        self,
        *,
        org_id: str | None = None,
        meter_id: str | None = None,
        customer_id: str | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
        newest_first: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[EventRow]:
        where, params = self._where(org_id, meter_id, customer_id, start_us, end_us)
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT {_EVENT_COLUMNS} FROM events{where} ORDER BY seq {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        for row in self._conn.execute(sql, params).fetchall():
            yield EventRow(*row)

    def reset(self) -> None:
        """Forget every event and every customer that was not seeded."""
        self._write("DELETE FROM events")
        self._write("DELETE FROM customers WHERE seeded = 0")
        self.commit()
        self._idempotency_keys.clear()
        seeded = {row[0] for row in self._conn.execute("SELECT id FROM customers WHERE seeded = 1")}
        for customer in list(self.customers_by_id.values()):
            if customer.id not in seeded:
                del self.customers_by_id[customer.id]
                del self.customers_by_ext[(customer.org_id, customer.external_id)]
