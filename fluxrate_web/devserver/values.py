"""Parsing and formatting of the wire values: quantities, timestamps, JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
MAX_QUANTITY = Decimal(10) ** 18
MAX_QUANTITY_CHARS = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def loads(body: bytes) -> Any:
    """Parse JSON keeping decimals exact and refusing NaN/Infinity."""
    return _DECODER.decode(body.decode())


def _default(value: object) -> object:
    if isinstance(value, Decimal):
        return decimal_to_number(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=_default).encode()


def format_decimal(value: Decimal | int) -> str:
    """Plain notation, no exponent, no trailing fractional zeros: 1.50 -> "1.5", 1E+3 -> "1000"."""
    if isinstance(value, int):
        return str(value)
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def decimal_to_number(value: Decimal) -> int | float:
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def parse_quantity(value: object) -> Decimal | int:
    """A finite JSON number > 0 (bool and strings refused). Raises ValueError with the reason."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    if isinstance(value, int):  # the common case, exact already
        if value <= 0:
            raise ValueError("must be greater than 0")
        if value > MAX_QUANTITY:
            raise ValueError("must be at most 1e18")
        return value
    try:
        number = value if isinstance(value, Decimal) else Decimal(value)
    except (InvalidOperation, ValueError):  # pragma: no cover - float inf/nan only
        raise ValueError("must be a finite number") from None
    if not number.is_finite():
        raise ValueError("must be a finite number")
    if number <= 0:
        raise ValueError("must be greater than 0")
    if number > MAX_QUANTITY:
        raise ValueError("must be at most 1e18")
    if len(format_decimal(number)) > MAX_QUANTITY_CHARS:
        raise ValueError(f"must have at most {MAX_QUANTITY_CHARS} digits")
    return number


def parse_timestamp(value: object) -> datetime:
    """ISO-8601 date-time; an offset-less value is taken as UTC. Returns an aware UTC datetime."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be an ISO-8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO-8601 date-time string") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be an ISO-8601 date-time between years 1 and 9999") from None


def format_timestamp(moment: datetime) -> str:
    """UTC with a ``Z``: seconds, milliseconds or microseconds, whichever is exact."""
    naive = moment.astimezone(UTC).replace(tzinfo=None)
    micro = naive.microsecond
    if micro == 0:
        spec = "seconds"
    elif micro % 1000 == 0:
        spec = "milliseconds"
    else:
        spec = "microseconds"
    return naive.isoformat(timespec=spec) + "Z"


def epoch_micros(moment: datetime) -> int:
    return (moment - EPOCH) // _MICROSECOND


def now_utc() -> datetime:
    return datetime.now(UTC)
