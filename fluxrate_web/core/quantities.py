"""Quantity sources: how much one request is worth on one meter.

=============================  =================================================================
``1``, ``2.5`` (a number > 0)   a constant (the default is ``1``: count calls)
``response_header:NAME``        a number in a response header, e.g. ``X-Tokens-Used``
``request_header:NAME``         a number in a request header
``response_bytes``              bytes of response body sent
``request_bytes``               bytes of request body received (from ``Content-Length`` or as
                                they pass through; never buffered)
``duration_ms``                 wall time of the request in milliseconds
``callable:module.func``        ``func(request, response)``: ``request`` is the framework's
``module.func``                 request, ``response`` a :class:`ResponseInfo`; may be ``async``
a Python callable               the same, given directly
=============================  =================================================================

A source that yields nothing (a missing header, ``None``) means "no usage known": the event is
dropped and counted with a warning. A result of ``0`` means "nothing used": no event, no warning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.resolvers import RequestView, import_dotted, is_async_callable

__all__ = [
    "QUANTITY_EXPECTED",
    "CompiledQuantity",
    "Quantity",
    "QuantitySpec",
    "ResponseInfo",
    "compile_quantity",
    "describe_quantity",
    "parse_number",
    "parse_quantity_spec",
]

Quantity: TypeAlias = "int | float | Decimal"
QuantitySpec: TypeAlias = "int | float | Decimal | str | Callable[..., Any]"
HeaderSource: TypeAlias = "Mapping[str, str] | Callable[[str], str | None] | None"

QUANTITY_EXPECTED = (
    "expected a number > 0, a source such as 'response_header:X-Tokens-Used', "
    "or a dotted path to a callable"
)
_BARE = ("response_bytes", "request_bytes", "duration_ms")
_PREFIXED = ("response_header", "request_header", "callable")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[.:][A-Za-z_][A-Za-z0-9_]*)+\Z")
_HEADER = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


class ResponseInfo:
    """What a quantity callable learns of the response (and the request through ``view``)."""

    __slots__ = (
        "_headers",
        "completed",
        "duration_ms",
        "error",
        "request_bytes",
        "response_bytes",
        "status",
        "view",
    )

    def __init__(
        self,
        view: RequestView,
        status: int | None,
        headers: HeaderSource,
        request_bytes: int,
        response_bytes: int,
        duration_ms: float,
        completed: bool,
        error: bool,
    ) -> None:
        self.view = view
        self.status = status
        self._headers = headers
        self.request_bytes = request_bytes
        self.response_bytes = response_bytes
        self.duration_ms = duration_ms
        self.completed = completed
        self.error = error

    @property
    def request(self) -> object:
        """The framework's own request object."""
        return self.view.native

    def header(self, name: str) -> str | None:
        """A response header, case-insensitive; ``None`` when absent."""
        headers = self._headers
        if headers is None:
            return None
        if callable(headers):
            return headers(name)
        value: str | None = headers.get(name)
        if value is None:
            lowered = name.lower()
            value = headers.get(lowered)
            if value is None and isinstance(headers, dict):
                for key, item in headers.items():
                    if isinstance(key, str) and key.lower() == lowered:
                        return str(item)
        return value

    def request_header(self, name: str) -> str | None:
        """A request header, case-insensitive; ``None`` when absent."""
        return self.view.header(name.lower())

    def __repr__(self) -> str:
        return (
            f"ResponseInfo(status={self.status}, request_bytes={self.request_bytes}, "
            f"response_bytes={self.response_bytes}, duration_ms={self.duration_ms:.3f}, "
            f"completed={self.completed}, error={self.error})"
        )


def parse_number(value: object) -> Quantity | None:
    """A finite number from an int/float/Decimal or a numeric string; ``None`` otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, str | bytes):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        text = text.strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None
        if not number.is_finite():
            return None
        return float(number) if len(text) <= 17 else number
    return None


def parse_quantity_spec(value: object) -> QuantitySpec:
    """Check the syntax of a quantity spec (no imports). Raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"{QUANTITY_EXPECTED}; got {value!r}")
    if isinstance(value, int | float | Decimal):
        number = parse_number(value)
        if number is None or number <= 0:
            raise ValueError(f"{QUANTITY_EXPECTED}; got {value!r}")
        return number
    if callable(value):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{QUANTITY_EXPECTED}; got {type(value).__name__}")
    text = value.strip()
    if text in _BARE:
        return text
    kind, sep, arg = text.partition(":")
    if sep and kind in _PREFIXED:
        arg = arg.strip()
        if kind == "callable":
            if not _DOTTED.match(arg):
                raise ValueError(f"{arg!r} is not a dotted path such as 'myapp.billing.tokens'")
        elif not _HEADER.match(arg):
            raise ValueError(f"{QUANTITY_EXPECTED}; {arg!r} is not a valid header name")
        return f"{kind}:{arg}"
    if _DOTTED.match(text) and not sep:
        return f"callable:{text}"
    number = parse_number(text)
    if number is not None and number > 0:
        return number
    raise ValueError(f"{QUANTITY_EXPECTED}; got {value!r}")


def describe_quantity(spec: QuantitySpec) -> str:
    if isinstance(spec, str):
        return spec
    if callable(spec):
        module = getattr(spec, "__module__", None) or ""
        qualname = getattr(spec, "__qualname__", None) or type(spec).__qualname__
        return f"callable:{module}.{qualname}" if module else f"callable:{qualname}"
    return str(spec)


class CompiledQuantity:
    """``constant`` is set for a constant source (the common case: no work per request);
    otherwise ``source(info)`` returns the raw value (maybe an awaitable when ``is_async``)."""

    __slots__ = ("constant", "description", "is_async", "source")

    def __init__(
        self,
        constant: Quantity | None,
        source: Callable[[ResponseInfo], object] | None,
        is_async: bool,
        description: str,
    ) -> None:
        self.constant = constant
        self.source = source
        self.is_async = is_async
        self.description = description

    def __repr__(self) -> str:
        return f"CompiledQuantity({self.description})"


def _response_bytes(info: ResponseInfo) -> object:
    return info.response_bytes


def _request_bytes(info: ResponseInfo) -> object:
    return info.request_bytes


def _duration_ms(info: ResponseInfo) -> object:
    return info.duration_ms


def compile_quantity(spec: object, where: str = "quantity") -> CompiledQuantity:
    """Parse and compile ``spec``; imports dotted callables. Raises :class:`ConfigError`."""
    try:
        parsed = parse_quantity_spec(spec)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    description = describe_quantity(parsed)
    if isinstance(parsed, int | float | Decimal):
        return CompiledQuantity(parsed, None, False, description)
    if not isinstance(parsed, str):
        func = parsed
        return CompiledQuantity(None, _call_user(func), is_async_callable(func), description)
    if parsed == "response_bytes":
        return CompiledQuantity(None, _response_bytes, False, description)
    if parsed == "request_bytes":
        return CompiledQuantity(None, _request_bytes, False, description)
    if parsed == "duration_ms":
        return CompiledQuantity(None, _duration_ms, False, description)
    kind, _, arg = parsed.partition(":")
    if kind == "response_header":

        def response_header(info: ResponseInfo, _n: str = arg) -> object:
            return info.header(_n)

        return CompiledQuantity(None, response_header, False, description)
    if kind == "request_header":
        lowered = arg.lower()

        def request_header(info: ResponseInfo, _n: str = lowered) -> object:
            return info.view.header(_n)

        return CompiledQuantity(None, request_header, False, description)
    try:
        func = import_dotted(arg)
    except Exception as exc:
        raise ConfigError(f"{where}: cannot import {arg!r}: {exc}") from None
    if not callable(func):
        raise ConfigError(f"{where}: {arg!r} is not callable")
    return CompiledQuantity(None, _call_user(func), is_async_callable(func), description)


def _call_user(func: Callable[..., Any]) -> Callable[[ResponseInfo], object]:
    def call(info: ResponseInfo, _f: Callable[..., Any] = func) -> object:
        return _f(info.view.native, info)

    return call
