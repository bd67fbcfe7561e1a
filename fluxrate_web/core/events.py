"""``UsageEvent``: one usage measurement, validated when it is created.

The timestamp and the idempotency key are fixed at creation, so every retry and every replay of
an event sends the same bytes and the API deduplicates it. Events are immutable.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from fluxrate_web.core.errors import InvalidUsageError

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_METADATA_BYTES",
    "MAX_QUANTITY",
    "UsageEvent",
    "new_idempotency_key",
    "utc_timestamp",
]

MAX_ID_LENGTH = 256
"""Longest meter token, customer id, idempotency key, meter id or customer id accepted."""
MAX_METADATA_BYTES = 8192
"""Longest metadata accepted, measured as compact UTF-8 JSON."""
MAX_QUANTITY = 10**30
"""Largest quantity accepted (keeps every quantity printable as a JSON number)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CANONICAL_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_metadata_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=True
)

# --------------------------------------------------------------------------- timestamps

_ts_cache: tuple[int, str] = (-1, "")


def utc_timestamp(now: float | None = None) -> str:
    """The current time (or ``now``, epoch seconds) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    global _ts_cache
    ms = int((time.time() if now is None else now) * 1000)
    sec, ms = divmod(ms, 1000)
    cached = _ts_cache
    if cached[0] == sec:
        return f"{cached[1]}.{ms:03d}Z"
    prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    _ts_cache = (sec, prefix)
    return f"{prefix}.{ms:03d}Z"


def _format_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # naive datetimes are taken as UTC
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _normalize_timestamp(value: object) -> str:
    if type(value) is str and _CANONICAL_TS.fullmatch(value):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise InvalidUsageError(f"timestamp: not a valid date: {value!r}") from None
        return value
    if isinstance(value, datetime):
        return _format_datetime(value)
    if isinstance(value, str):
        if len(value) > 64:
            raise InvalidUsageError("timestamp: too long")
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidUsageError(
                f"timestamp: expected ISO-8601 (e.g. 2026-01-31T12:00:00.000Z), got {value!r}"
            ) from None
        return _format_datetime(parsed)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise InvalidUsageError(f"timestamp: not a valid epoch time: {value!r}")
        return utc_timestamp(float(value))
    raise InvalidUsageError(
        f"timestamp: expected an ISO-8601 string, a datetime or epoch seconds, "
        f"got {type(value).__name__}"
    )


# --------------------------------------------------------------------------- idempotency keys

# A random 64-bit prefix per process and a counter: unique across processes (and forks: the
# pid is checked on every call) at a fraction of the cost of uuid4().
_key_state: list[Any] = [-1, "", 0]


def new_idempotency_key() -> str:
    """A fresh 32-character hex key, unique across processes."""
    state = _key_state
    pid = os.getpid()
    if state[0] != pid:
        state[1] = os.urandom(8).hex()
        state[2] = 0
        state[0] = pid
    n = state[2] = state[2] + 1
    return f"{state[1]}{n:016x}"


# --------------------------------------------------------------------------- validation


def _check_id(value: object, name: str, *, required: bool = True) -> str:
    if type(value) is not str:
        if not isinstance(value, str):
            raise InvalidUsageError(f"{name}: expected a string, got {type(value).__name__}")
        value = str(value)
    if not value:
        if required:
            raise InvalidUsageError(f"{name}: must not be empty")
        return value
    if len(value) > MAX_ID_LENGTH:
        raise InvalidUsageError(f"{name}: longer than {MAX_ID_LENGTH} characters")
    if not (value.isascii() and value.isprintable()) and _CONTROL.search(value):
        raise InvalidUsageError(f"{name}: contains control characters")
    return value


def _check_quantity(value: object) -> int | float | Decimal:
    kind = type(value)
    if kind is int or kind is float:
        number: int | float | Decimal = value  # type: ignore[assignment]
    elif isinstance(value, bool | str | bytes):
        raise InvalidUsageError(f"quantity: expected a number, got {type(value).__name__}")
    elif isinstance(value, Decimal):
        number = value
        if not value.is_finite():
            raise InvalidUsageError(f"quantity: must be finite, got {value!r}")
    elif isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real):
        number = float(value)
    else:
        raise InvalidUsageError(f"quantity: expected a number, got {type(value).__name__}")
    if 0 < number <= MAX_QUANTITY:  # NaN compares False
        return number
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidUsageError(f"quantity: must be finite, got {number!r}")
    if number > 0:
        raise InvalidUsageError("quantity: larger than 1e30")
    raise InvalidUsageError(f"quantity: must be > 0, got {number!r}")


def _check_metadata(value: object) -> tuple[Mapping[str, Any] | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        raise InvalidUsageError(f"metadata: expected a mapping, got {type(value).__name__}")
    copy = dict(value)
    for key in copy:
        if type(key) is not str:
            raise InvalidUsageError(f"metadata: keys must be strings, got {type(key).__name__}")
    try:
        encoded = _metadata_encoder.encode(copy)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidUsageError(f"metadata: not JSON-serialisable: {exc}") from None
    if len(encoded) > MAX_METADATA_BYTES and len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidUsageError(f"metadata: larger than {MAX_METADATA_BYTES} bytes as JSON")
    # The JSON is encoded once, here: what is sent (and logged on failure) is the metadata as it
    # was at creation, whatever the caller does to its dict afterwards.
    frozen: Mapping[str, Any] = MappingProxyType(copy)
    return frozen, encoded


# --------------------------------------------------------------------------- the event


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One usage measurement for ``POST /api/v1/sdk/track`` (or ``POST /api/v1/usage``).

    Built with :meth:`create` (fills the timestamp and the idempotency key) or directly, in which
    case ``timestamp`` and ``idempotency_key`` are required. Invalid input raises
    :class:`~fluxrate_web.core.errors.InvalidUsageError`.

    REST events (for ``POST /api/v1/usage`` with an access token) carry ``meter_id`` and
    ``customer_id`` (internal UUIDs); their ``meter_token`` and ``customer_external_id`` may be
    empty strings.
    """

    meter_token: str
    customer_external_id: str
    quantity: int | float | Decimal
    timestamp: str
    idempotency_key: str
    metadata: Mapping[str, Any] | None = None
    meter_id: str | None = None
    customer_id: str | None = None
    _metadata_json: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rest = self.meter_id is not None or self.customer_id is not None
        if rest:
            if not self.meter_id or not self.customer_id:
                raise InvalidUsageError("meter_id and customer_id go together (REST events)")
            _set(self, "meter_id", _check_id(self.meter_id, "meter_id"))
            _set(self, "customer_id", _check_id(self.customer_id, "customer_id"))
        _set(self, "meter_token", _check_id(self.meter_token, "meter_token", required=not rest))
        _set(
            self,
            "customer_external_id",
            _check_id(self.customer_external_id, "customer_external_id", required=not rest),
        )
        _set(self, "quantity", _check_quantity(self.quantity))
        _set(self, "timestamp", _normalize_timestamp(self.timestamp))
        _set(self, "idempotency_key", _check_id(self.idempotency_key, "idempotency_key"))
        metadata, encoded = _check_metadata(self.metadata)
        _set(self, "metadata", metadata)
        _set(self, "_metadata_json", encoded)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def create(
        cls,
        meter_token: str = "",
        customer_external_id: str = "",
        quantity: int | float | Decimal = 1,
        *,
        timestamp: str | datetime | float | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        meter_id: str | None = None,
        customer_id: str | None = None,
    ) -> UsageEvent:
        """Validate and build an event, stamping it with the current time and a fresh key.

        ``timestamp`` may be an ISO-8601 string, a ``datetime`` (naive ones are taken as UTC) or
        epoch seconds; it is stored as UTC with milliseconds.
        """
        if meter_id is not None or customer_id is not None:
            return cls(
                meter_token,
                customer_external_id,
                quantity,
                utc_timestamp() if timestamp is None else timestamp,  # type: ignore[arg-type]
                new_idempotency_key() if idempotency_key is None else idempotency_key,
                metadata,
                meter_id,
                customer_id,
            )
        # The fast path of track(): validate only what the caller gave, no second pass.
        self = object.__new__(cls)
        _set(self, "meter_token", _check_id(meter_token, "meter_token"))
        _set(self, "customer_external_id", _check_id(customer_external_id, "customer_external_id"))
        _set(self, "quantity", _check_quantity(quantity))
        _set(
            self,
            "timestamp",
            utc_timestamp() if timestamp is None else _normalize_timestamp(timestamp),
        )
        _set(
            self,
            "idempotency_key",
            new_idempotency_key()
            if idempotency_key is None
            else _check_id(idempotency_key, "idempotency_key"),
        )
        if metadata is None:
            _set(self, "metadata", None)
            _set(self, "_metadata_json", None)
        else:
            frozen, encoded = _check_metadata(metadata)
            _set(self, "metadata", frozen)
            _set(self, "_metadata_json", encoded)
        _set(self, "meter_id", None)
        _set(self, "customer_id", None)
        return self

    @classmethod
    def rest(
        cls,
        meter_id: str,
        customer_id: str,
        quantity: int | float | Decimal = 1,
        *,
        timestamp: str | datetime | float | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> UsageEvent:
        """An event for ``POST /api/v1/usage`` (internal ``meter_id`` and ``customer_id``)."""
        return cls.create(
            quantity=quantity,
            timestamp=timestamp,
            idempotency_key=idempotency_key,
            metadata=metadata,
            meter_id=meter_id,
            customer_id=customer_id,
        )

    # ------------------------------------------------------------------ views

    @property
    def is_rest(self) -> bool:
        """True for events addressed by ``meter_id`` / ``customer_id`` (``POST /api/v1/usage``)."""
        return self.meter_id is not None

    @property
    def metadata_json(self) -> str | None:
        """The metadata as compact JSON, encoded once at creation."""
        return self._metadata_json

    def to_payload(self) -> dict[str, Any]:
        """The JSON body of ``POST /api/v1/sdk/track`` (a ``Decimal`` quantity stays ``Decimal``;
        the transport writes it as a JSON number)."""
        payload: dict[str, Any] = {
            "meter_token": self.meter_token,
            "customer_external_id": self.customer_external_id,
            "quantity": self.quantity,
            "timestamp": self.timestamp,
            "idempotency_key": self.idempotency_key,
        }
        if self.metadata is not None:
            payload["metadata"] = dict(self.metadata)
        return payload

    def to_rest_payload(self) -> dict[str, Any]:
        """The JSON body of ``POST /api/v1/usage``."""
        payload: dict[str, Any] = {
            "meter_id": self.meter_id,
            "customer_id": self.customer_id,
            "quantity": self.quantity,
            "timestamp": self.timestamp,
            "idempotency_key": self.idempotency_key,
        }
        if self.metadata is not None:
            payload["metadata"] = dict(self.metadata)
        return payload

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the failure log's ``event``). A ``Decimal`` quantity is
        written as a string so that no digit is lost; :meth:`from_dict` reads it back."""
        quantity = self.quantity
        data: dict[str, Any] = {
            "meter_token": self.meter_token,
            "customer_external_id": self.customer_external_id,
            "quantity": str(quantity) if isinstance(quantity, Decimal) else quantity,
            "timestamp": self.timestamp,
            "idempotency_key": self.idempotency_key,
        }
        if self._metadata_json is not None:
            data["metadata"] = json.loads(self._metadata_json)
        if self.meter_id is not None:
            data["meter_id"] = self.meter_id
            data["customer_id"] = self.customer_id
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageEvent:
        """Rebuild an event from :meth:`to_dict` output, keeping its timestamp and key."""
        if not isinstance(data, Mapping):
            raise InvalidUsageError(f"event: expected a mapping, got {type(data).__name__}")
        quantity = data.get("quantity")
        if isinstance(quantity, str):
            try:
                quantity = Decimal(quantity)
            except ArithmeticError:
                raise InvalidUsageError(f"quantity: not a number: {quantity!r}") from None
        for required in ("timestamp", "idempotency_key"):
            if required not in data:
                raise InvalidUsageError(f"{required}: missing")
        return cls(
            data.get("meter_token", ""),
            data.get("customer_external_id", ""),
            quantity,  # type: ignore[arg-type]
            data["timestamp"],
            data["idempotency_key"],
            data.get("metadata"),
            data.get("meter_id"),
            data.get("customer_id"),
        )


_set = object.__setattr__
