"""``UsageEvent``: one usage measurement, validated when it is created.

The timestamp and the idempotency key are fixed at creation, so every retry and every replay of
an event sends the same bytes and the API deduplicates it. Events are immutable.
"""

from __future__ import annotations

import itertools
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
from typing import Any, TypeAlias

from fluxrate_web.core.errors import InvalidUsageError

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_METADATA_BYTES",
    "MAX_QUANTITY",
    "PreparedMeter",
    "UsageEvent",
    "new_idempotency_key",
    "prepared_meter",
    "reseed_keys_if_forked",
    "trusted_event",
    "utc_timestamp",
]

MAX_ID_LENGTH = 256
"""Longest meter token, customer id, idempotency key, meter id or customer id accepted."""
MAX_METADATA_BYTES = 8192
"""Longest metadata accepted, measured as compact UTF-8 JSON."""
MAX_QUANTITY = 10**30
"""Largest quantity accepted (keeps every quantity printable as a JSON number)."""

# Control characters, line separators, and lone surrogates (no UTF-8 form: such an id could be
# neither sent nor written to the failure log).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CANONICAL_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_metadata_encoder = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=True
)

# --------------------------------------------------------------------------- timestamps

_ts_cache: tuple[int, str] = (-1, "")  # (epoch second, "YYYY-MM-DDTHH:MM:SS")
_ms_cache: tuple[int, str] = (-1, "")  # (epoch millisecond, its full timestamp)
_time_ns = time.time_ns


def utc_timestamp(now: float | None = None) -> str:
    """The current time (or ``now``, epoch seconds) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    if now is None:
        return _now_timestamp()
    return _format_ms(int(now * 1000))


def _now_timestamp() -> str:
    # The request path: one clock read and, most of the time, the string of the same
    # millisecond (a server handling > 1,000 requests/s asks many times per millisecond).
    ms = _time_ns() // 1_000_000
    cached = _ms_cache
    if cached[0] == ms:
        return cached[1]
    return _format_ms(ms)


def _format_ms(total_ms: int) -> str:
    global _ts_cache, _ms_cache
    sec, ms = divmod(total_ms, 1000)
    cached = _ts_cache
    if cached[0] == sec:
        prefix = cached[1]
    else:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache = (sec, prefix)
    text = f"{prefix}.{ms:03d}Z"
    _ms_cache = (total_ms, text)  # one tuple, replaced whole: safe across threads
    return text


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

# A random 64-bit prefix per process and a counter: unique across processes (and forks: reseeded
# in the child by an at-fork hook, and the pid is checked on every call of new_idempotency_key())
# at a fraction of the cost of uuid4(). Key = 16 hex of prefix + 16 hex of counter. The counter is
# an itertools.count: next() is atomic under the GIL, so two threads never draw the same number.
# Its hex is cut in two: the upper 14 digits change every 256 keys and are formatted then (cached
# in _key_block), the last 2 come from a table: one string concatenation per key.
_HEX2 = tuple(f"{i:02x}" for i in range(256))
_key_pid = -1
_key_prefix = ""  # 16 hex digits, random per process
_key_counter = itertools.count(1)
_key_block: tuple[int, str] = (-1, "")  # (counter >> 8, the key's first 30 digits)


def _reseed_keys() -> None:
    global _key_pid, _key_prefix, _key_counter, _key_block
    _key_prefix = os.urandom(8).hex()
    _key_counter = itertools.count(1)
    _key_block = (-1, "")
    _key_pid = os.getpid()


def reseed_keys_if_forked(pid: int) -> None:
    """Draw a new key prefix if this process (``pid``, from ``os.getpid()``) is not the one
    the current prefix was drawn in: a fork that the at-fork hook did not see. The client calls
    this from its own pid check, which the trusted path relies on."""
    if pid != _key_pid:
        _reseed_keys()


def new_idempotency_key() -> str:
    """A fresh 32-character hex key, unique across processes."""
    if os.getpid() != _key_pid:
        _reseed_keys()
    return _next_key()


def _next_key() -> str:
    global _key_block
    n = next(_key_counter)
    block = _key_block
    if block[0] != n >> 8:  # each thread uses the block of its own number
        block = _key_block = (n >> 8, f"{_key_prefix}{n >> 8:014x}")
    return block[1] + _HEX2[n & 255]


_reseed_keys()
if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_reseed_keys)


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
        raise InvalidUsageError(f"{name}: contains control characters or lone surrogates")
    return value


# Ids already checked by _check_id: the request path sees the same meter tokens and customers
# again and again. Bounded (cleared when full); holds only exact ``str`` that passed the check.
_valid_ids: set[str] = set()
_VALID_IDS_MAX = 8192


def checked_id(value: object, name: str) -> str:
    """``_check_id(value, name)`` (required), remembering the ids that passed."""
    if type(value) is str and value in _valid_ids:
        return value
    value = _check_id(value, name)
    if len(_valid_ids) >= _VALID_IDS_MAX:
        _valid_ids.clear()
    _valid_ids.add(value)
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
    if not encoded.isascii() and _SURROGATE.search(encoded):
        raise InvalidUsageError("metadata: a string with a lone surrogate has no UTF-8 form")
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
        if meter_id is not None or customer_id is not None or cls is not UsageEvent:
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
        if (
            timestamp is None
            and idempotency_key is None
            and metadata is None
            and type(meter_token) is str
            and type(customer_external_id) is str
            and meter_token in _valid_ids
            and customer_external_id in _valid_ids
            and type(quantity) is int
            and 0 < quantity <= MAX_QUANTITY
        ):
            # The common call (ids seen before, an int, nothing else): nothing left to check.
            return _built(meter_token, customer_external_id, quantity, None, None)
        # Validate only what the caller gave, no second pass.
        token = checked_id(meter_token, "meter_token")
        customer = checked_id(customer_external_id, "customer_external_id")
        number = _check_quantity(quantity)
        stamp = _now_timestamp() if timestamp is None else _normalize_timestamp(timestamp)
        key = (
            new_idempotency_key()
            if idempotency_key is None
            else _check_id(idempotency_key, "idempotency_key")
        )
        frozen, encoded = _check_metadata(metadata)
        return _built(token, customer, number, frozen, encoded, stamp, key)

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


class _Building:
    """The slots of :class:`UsageEvent`, not frozen: filled with plain stores (a third of the
    cost of nine ``object.__setattr__`` calls), then turned into a ``UsageEvent`` by
    ``__class__`` assignment, which CPython allows between classes of identical layout.
    Checked at import (see ``_check_building``); without it, ``_built`` sets the slots the
    slow way."""

    __slots__ = UsageEvent.__slots__

    meter_token: str
    customer_external_id: str
    quantity: int | float | Decimal
    timestamp: str
    idempotency_key: str
    metadata: Mapping[str, Any] | None
    meter_id: str | None
    customer_id: str | None
    _metadata_json: str | None


def _built(
    meter_token: str,
    customer_external_id: str,
    quantity: int | float | Decimal,
    metadata: Mapping[str, Any] | None,
    metadata_json: str | None,
    timestamp: str | None = None,
    idempotency_key: str | None = None,
) -> UsageEvent:
    """An event from values that are already valid (checked by the caller). Stamps the
    current time and a fresh key unless given."""
    event = _Building()
    event.meter_token = meter_token
    event.customer_external_id = customer_external_id
    event.quantity = quantity
    event.timestamp = _now_timestamp() if timestamp is None else timestamp
    event.idempotency_key = new_idempotency_key() if idempotency_key is None else idempotency_key
    event.metadata = metadata
    event.meter_id = None
    event.customer_id = None
    event._metadata_json = metadata_json
    event.__class__ = UsageEvent  # type: ignore[assignment]
    return event  # type: ignore[return-value]


def _built_slowly(
    meter_token: str,
    customer_external_id: str,
    quantity: int | float | Decimal,
    metadata: Mapping[str, Any] | None,
    metadata_json: str | None,
    timestamp: str | None = None,
    idempotency_key: str | None = None,
) -> UsageEvent:
    event = object.__new__(UsageEvent)
    _set(event, "meter_token", meter_token)
    _set(event, "customer_external_id", customer_external_id)
    _set(event, "quantity", quantity)
    _set(event, "timestamp", _now_timestamp() if timestamp is None else timestamp)
    _set(
        event,
        "idempotency_key",
        new_idempotency_key() if idempotency_key is None else idempotency_key,
    )
    _set(event, "metadata", metadata)
    _set(event, "meter_id", None)
    _set(event, "customer_id", None)
    _set(event, "_metadata_json", metadata_json)
    return event


def trusted_event(
    meter_token: str,
    customer_external_id: str,
    quantity: int | float | Decimal,
    metadata: Mapping[str, Any] | None,
    metadata_json: str | None,
) -> UsageEvent:
    """The seam's event: ``meter_token``, ``quantity`` and the frozen ``metadata`` (with its
    JSON) were validated when the route was planned (see :func:`prepared_meter`); only the
    customer is checked here (cheaply: ids that passed before are remembered). Raises
    :class:`InvalidUsageError` for a bad customer.

    The key is drawn without a pid check: the caller checked its pid first and called
    :func:`reseed_keys_if_forked` on a change (``FluxrateClient`` does)."""
    global _key_block
    if type(customer_external_id) is not str or customer_external_id not in _valid_ids:
        customer_external_id = checked_id(customer_external_id, "customer_external_id")
    # _now_timestamp() and _next_key(), inlined: this runs for every billed request
    ms = _time_ns() // 1_000_000
    stamp = _ms_cache
    timestamp = stamp[1] if stamp[0] == ms else _format_ms(ms)
    n = next(_key_counter)
    block = _key_block
    if block[0] != n >> 8:
        block = _key_block = (n >> 8, f"{_key_prefix}{n >> 8:014x}")
    # _built(), inlined
    event = _Building()
    event.meter_token = meter_token
    event.customer_external_id = customer_external_id
    event.quantity = quantity
    event.timestamp = timestamp
    event.idempotency_key = block[1] + _HEX2[n & 255]
    event.metadata = metadata
    event.meter_id = None
    event.customer_id = None
    event._metadata_json = metadata_json
    event.__class__ = UsageEvent  # type: ignore[assignment]
    return event  # type: ignore[return-value]


def _trusted_event_slowly(
    meter_token: str,
    customer_external_id: str,
    quantity: int | float | Decimal,
    metadata: Mapping[str, Any] | None,
    metadata_json: str | None,
) -> UsageEvent:
    if type(customer_external_id) is not str or customer_external_id not in _valid_ids:
        customer_external_id = checked_id(customer_external_id, "customer_external_id")
    return _built_slowly(
        meter_token,
        customer_external_id,
        quantity,
        metadata,
        metadata_json,
        _now_timestamp(),
        _next_key(),
    )


PreparedMeter: TypeAlias = tuple[str, int | float | Decimal, Mapping[str, Any] | None, str | None]
"""``(meter token, quantity, frozen metadata, metadata JSON)``, validated: see
:func:`prepared_meter`."""


def prepared_meter(meter_token: object, quantity: object, metadata: object) -> PreparedMeter | None:
    """Validate, once, what a route bills on every request: ``(token, quantity, frozen
    metadata, metadata JSON)`` for :func:`trusted_event`, or ``None`` when invalid (the request
    path then goes through ``track()``, which drops the event and says why)."""
    try:
        token = checked_id(meter_token, "meter_token")
        number = _check_quantity(quantity)
        frozen, encoded = _check_metadata(metadata)
    except Exception:
        return None
    return token, number, frozen, encoded


def _check_building() -> None:
    global _built, trusted_event
    try:
        probe = _built("m", "c", 1, None, None, "1970-01-01T00:00:00.000Z", "k")
        ok = type(probe) is UsageEvent and probe == UsageEvent(
            "m", "c", 1, "1970-01-01T00:00:00.000Z", "k"
        )
    except TypeError:  # another interpreter, another layout rule
        ok = False
    if not ok:  # pragma: no cover
        _built = _built_slowly
        trusted_event = _trusted_event_slowly


_check_building()
