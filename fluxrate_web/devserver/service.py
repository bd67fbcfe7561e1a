"""What the endpoints do, without HTTP: authentication, validation, ingestion, reads.

Everything here is synchronous and runs on the event loop thread, so one ingestion
(idempotency lookup, customer creation, insert) is atomic with respect to every other.
Errors are raised as :class:`ApiError` and answered as ``{"detail": "..."}``.

Order of checks on ``POST /sdk/track`` (FastAPI's order: dependencies, body, handler):
401/403 auth -> 422 body schema -> 404 meter -> 400 meter rule (UNIQUE_COUNT needs
``metadata.user_id``) -> idempotent replay (200) -> 404 customer (strict mode) -> 201.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from fluxrate_web.devserver import jwt
from fluxrate_web.devserver.aggregate import Accumulator
from fluxrate_web.devserver.errors import ApiError
from fluxrate_web.devserver.models import (
    READ_SCOPE,
    WRITE_SCOPE,
    Aggregation,
    ApiKey,
    Customer,
    Meter,
    Org,
)
from fluxrate_web.devserver.store import EventRow, Store
from fluxrate_web.devserver.values import (
    dumps,
    epoch_micros,
    format_decimal,
    format_timestamp,
    loads,
    now_utc,
    parse_quantity,
    parse_timestamp,
)

log = logging.getLogger("fluxrate_web.devserver")

MAX_BODY = 1 << 20
MAX_ID_LENGTH = 255
MAX_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class Ingested:
    event: EventRow
    created: bool  # False: an idempotent replay of ``event``
    mismatch: bool = False  # replay whose payload differs from the original


@dataclass(frozen=True, slots=True)
class EventInput:
    quantity: Decimal | int
    timestamp: datetime | None
    idempotency_key: str | None
    metadata: dict[str, Any] | None
    meta_text: str | None


class Service:
    def __init__(
        self,
        store: Store,
        *,
        strict_customers: bool = False,
        jwt_secret: str = jwt.DEFAULT_SECRET,
        validation_status: int | None = None,
    ) -> None:
        self.store = store
        self.strict_customers = strict_customers
        self.jwt_secret = jwt_secret
        self.validation_status = validation_status
        self.track_requests = 0
        self.usage_requests = 0

    # -- errors -------------------------------------------------------------------------------

    def invalid(self, detail: str) -> ApiError:
        """A malformed payload: 422 (FastAPI's status for body validation)."""
        return ApiError(self.validation_status or 422, detail)

    def bad_request(self, detail: str) -> ApiError:
        """A well-formed payload the meter cannot take: 400."""
        return ApiError(self.validation_status or 400, detail)

    # -- auth ---------------------------------------------------------------------------------

    def api_key(self, key: str | None, scope: str) -> ApiKey:
        if not key:
            raise ApiError(401, "Missing API key")
        found = self.store.api_keys.get(key)
        if found is None:
            raise ApiError(401, "Invalid API key")
        if scope not in found.scopes:
            raise ApiError(403, f"API key lacks the {scope} scope")
        return found

    def jwt_org(self, cookie_header: str | None) -> Org:
        token = cookie_value(cookie_header, "access_token")
        if not token:
            raise ApiError(401, "Not authenticated")
        try:
            claims = jwt.decode(token, self.jwt_secret)
        except jwt.JWTError as exc:
            raise ApiError(401, f"Could not validate credentials: {exc}") from None
        if claims.get("type", "access") != "access":
            raise ApiError(401, "Could not validate credentials: not an access token")
        org = self.store.orgs.get(str(claims.get("org_id")))
        if org is None:
            raise ApiError(401, "Could not validate credentials: unknown organization")
        return org

    def reader_org(self, api_key: str | None, cookie_header: str | None) -> Org:
        """Read endpoints take the dashboard cookie or an API key with ``usage.read``."""
        if api_key:
            return self.store.orgs[self.api_key(api_key, READ_SCOPE).org_id]
        return self.jwt_org(cookie_header)

    # -- ingestion ----------------------------------------------------------------------------

    def parse_object(self, body: bytes) -> dict[str, Any]:
        if len(body) > MAX_BODY:
            raise ApiError(413, "Request body too large")
        try:
            data = loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.invalid(f"body: invalid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise self.invalid("body: expected a JSON object")
        return data

    def required_string(self, data: Mapping[str, Any], name: str) -> str:
        value = self.optional_string(data, name)
        if value is None:
            raise self.invalid(f"{name}: field required")
        return value

    def optional_string(self, data: Mapping[str, Any], name: str) -> str | None:
        value = data.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.invalid(f"{name}: expected a non-empty string")
        if len(value) > MAX_ID_LENGTH:
            raise self.invalid(f"{name}: at most {MAX_ID_LENGTH} characters")
        return value

    def _event_input(self, data: Mapping[str, Any]) -> EventInput:
        if "quantity" not in data or data["quantity"] is None:
            raise self.invalid("quantity: field required")
        try:
            quantity = parse_quantity(data["quantity"])
        except ValueError as exc:
            raise self.invalid(f"quantity: {exc}") from None
        raw_ts = data.get("timestamp")
        timestamp = None
        if raw_ts is not None:
            try:
                timestamp = parse_timestamp(raw_ts)
            except ValueError as exc:
                raise self.invalid(f"timestamp: {exc}") from None
        key = self.optional_string(data, "idempotency_key")
        metadata = data.get("metadata")
        meta_text = None
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise self.invalid("metadata: expected a JSON object")
            meta_text = dumps(metadata).decode()
        return EventInput(quantity, timestamp, key, metadata, meta_text)

    def _ingest(
        self,
        org_id: str,
        meter: Meter,
        customer: Customer | None,
        external_id: str,
        item: EventInput,
        raw_timestamp: object,
        source: str,
    ) -> Ingested:
        user_key = None
        if meter.aggregation is Aggregation.UNIQUE_COUNT:
            user_id = (item.metadata or {}).get("user_id")
            if isinstance(user_id, bool) or not (
                (isinstance(user_id, str) and user_id) or isinstance(user_id, int)
            ):
                raise self.bad_request(
                    f"metadata.user_id: required (a string or integer) for the "
                    f"UNIQUE_COUNT meter {meter.name!r}"
                )
            user_key = json.dumps(user_id)
        quantity = format_decimal(item.quantity)
        fingerprint = hashlib.blake2b(
            "\x1f".join(
                (meter.id, external_id, quantity, str(raw_timestamp), item.meta_text or "")
            ).encode(),
            digest_size=12,
        ).hexdigest()
        if item.idempotency_key is not None:
            original = self.store.find_idempotent(org_id, item.idempotency_key)
            if original is not None:
                mismatch = original.fingerprint != fingerprint
                if mismatch:
                    log.warning(
                        "idempotency key %r reused with a different payload; "
                        "answering the original event %s",
                        item.idempotency_key,
                        original.id,
                    )
                return Ingested(original, created=False, mismatch=mismatch)
        if customer is None:
            customer = self.store.customers_by_ext.get((org_id, external_id))
            if customer is None:
                if self.strict_customers:
                    raise ApiError(404, "Customer not found")
                customer = self.store.create_customer(org_id, external_id)
        moment = item.timestamp or now_utc()
        event = self.store.insert_event(
            org_id=org_id,
            meter_id=meter.id,
            customer_id=customer.id,
            quantity=quantity,
            timestamp=moment,
            ts_us=epoch_micros(moment),
            idempotency_key=item.idempotency_key,
            meta_data=item.meta_text,
            user_key=user_key,
            fingerprint=fingerprint,
            source=source,
        )
        return Ingested(event, created=True)

    def track(self, api_key: str | None, body: bytes) -> Ingested:
        """``POST /api/v1/sdk/track``."""
        key = self.api_key(api_key, WRITE_SCOPE)
        data = self.parse_object(body)
        token = self.required_string(data, "meter_token")
        external_id = self.required_string(data, "customer_external_id")
        item = self._event_input(data)
        meter = self.store.meters_by_token.get(token)
        if meter is None or meter.org_id != key.org_id:
            raise ApiError(404, "Meter not found")
        return self._ingest(
            key.org_id, meter, None, external_id, item, data.get("timestamp"), "sdk"
        )

    def usage(self, cookie_header: str | None, body: bytes) -> Ingested:
        """``POST /api/v1/usage`` (dashboard JWT, internal ids)."""
        org = self.jwt_org(cookie_header)
        data = self.parse_object(body)
        meter_id = self.required_string(data, "meter_id")
        customer_id = self.required_string(data, "customer_id")
        item = self._event_input(data)
        meter = self.store.meters_by_id.get(meter_id)
        if meter is None or meter.org_id != org.id:
            raise ApiError(404, "Meter not found")
        customer = self.store.customers_by_id.get(customer_id)
        if customer is None or customer.org_id != org.id:
            raise ApiError(404, "Customer not found")
        return self._ingest(
            org.id, meter, customer, customer.external_id, item, data.get("timestamp"), "rest"
        )

    # -- reads --------------------------------------------------------------------------------

    def meter_of(self, org: Org, meter_id: str) -> Meter:
        meter = self.store.meters_by_id.get(meter_id)
        if meter is None or meter.org_id != org.id:
            raise ApiError(404, "Meter not found")
        return meter

    def meter_events_page(self, meter: Meter, page: int, page_size: int) -> dict[str, Any]:
        total = self.store.count_events(meter_id=meter.id)
        rows = self.store.events(
            meter_id=meter.id,
            newest_first=True,
            limit=page_size,
            offset=(page - 1) * page_size,
        )
        return {
            "data": [row.listing() for row in rows],
            "meta": {
                "page": page,
                "page_size": page_size,
                "total": total,
                "total_pages": math.ceil(total / page_size),
            },
        }

    def meter_usage(
        self,
        meter: Meter,
        start: datetime,
        end: datetime,
        group_by: str,
        customer_id: str | None,
    ) -> dict[str, Any]:
        rows = list(
            self.store.events(
                meter_id=meter.id,
                customer_id=customer_id,
                start_us=epoch_micros(start),
                end_us=epoch_micros(end),
            )
        )
        groups: dict[datetime, dict[str, Accumulator]] = {}
        totals: dict[str, Accumulator] = {}
        for row in rows:
            period = period_start(parse_timestamp(row.timestamp), group_by)
            for bucket in (groups.setdefault(period, {}), totals):
                acc = bucket.get(row.customer_id)
                if acc is None:
                    acc = bucket[row.customer_id] = Accumulator(meter.aggregation)
                acc.add(row)
        return {
            "meter_id": meter.id,
            "total_usage": billable(totals),
            "event_count": len(rows),
            "unique_customers": len(totals),
            "period_start": format_timestamp(start),
            "period_end": format_timestamp(end),
            "grouped_data": [
                {
                    "period": format_timestamp(period),
                    "usage": billable(accs),
                    "event_count": sum(a.count for a in accs.values()),
                }
                for period, accs in sorted(groups.items())
            ],
        }

    def summary(
        self, org: Org, start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, dict[str, Decimal]]:
        """``{customer_external_id: {meter_name: billable total}}`` for every customer of
        ``org``, with a meter present once the customer has an event on it."""
        accs: dict[tuple[str, str], Accumulator] = {}
        meters = self.store.meters_by_id
        for row in self.store.events(
            org_id=org.id,
            start_us=None if start is None else epoch_micros(start),
            end_us=None if end is None else epoch_micros(end),
        ):
            key = (row.customer_id, row.meter_id)
            acc = accs.get(key)
            if acc is None:
                acc = accs[key] = Accumulator(meters[row.meter_id].aggregation)
            acc.add(row)
        result: dict[str, dict[str, Decimal]] = {
            c.external_id: {} for c in self.store.customers(org.id)
        }
        customers = self.store.customers_by_id
        for (customer_id, meter_id), acc in accs.items():
            ext = customers[customer_id].external_id
            result.setdefault(ext, {})[meters[meter_id].name] = acc.result()
        return result


def billable(per_customer: Mapping[str, Accumulator]) -> Decimal:
    """The billable total of a set of customers: the sum of each one's aggregated value."""
    return sum((acc.result() for acc in per_customer.values()), Decimal(0))


def period_start(moment: datetime, group_by: str) -> datetime:
    if group_by == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if group_by == "week":
        return day - timedelta(days=day.weekday())
    if group_by == "month":
        return day.replace(day=1)
    return day


def cookie_value(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None
