"""``fluxrate.yaml``, settings dictionaries and environment variables, read into a :class:`Config`.

Every problem is a :class:`~fluxrate_web.core.errors.ConfigError` whose message names the file,
the line and the key::

    fluxrate.yaml:14: endpoints[2].quantity: expected a number > 0, a source such as
    'response_header:X-Tokens-Used', or a dotted path to a callable

The full reference of every key is ``docs/configuration.md``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from fluxrate_web.core._yaml import Path, YamlProblem, load_yaml
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.quantities import QuantitySpec, describe_quantity, parse_quantity_spec
from fluxrate_web.core.resolvers import CustomerSpec, describe_resolver, parse_resolver_spec
from fluxrate_web.core.spool import DURABILITY_MODES

__all__ = [
    "AGGREGATIONS",
    "Config",
    "EndpointRule",
    "MeterSpec",
    "MeterUse",
    "format_path",
    "is_token",
    "load_config",
    "parse_bill_on",
]

AGGREGATIONS = ("SUM", "MAX", "UNIQUE_COUNT", "LAST")
DEFAULT_IDEMPOTENCY_HEADER = "Idempotency-Key"
ENV_CONFIG = "FLUXRATE_CONFIG"

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_HEADER = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*\Z")
_STATUS_CLASS = re.compile(r"([1-5])xx\Z")
_STATUS_RANGE = re.compile(r"([1-5][0-9][0-9])\s*-\s*([1-5][0-9][0-9])\Z")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\Z")
BILL_ON_EXPECTED = (
    "expected 'any', a status class such as '2xx', a status code such as 201, a range such as "
    "'200-299', or a list (or comma-separated string) of those"
)


def is_token(name: str) -> bool:
    """Whether ``name`` looks like a meter token (a UUID) rather than a friendly name."""
    return bool(_UUID.match(name))


def format_path(path: Path) -> str:
    """``("endpoints", 2, "quantity")`` -> ``"endpoints[2].quantity"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """One entry of ``meters:``. ``aggregation``/``window`` describe client-side pre-aggregation
    (parsed and validated now, applied by a later release)."""

    name: str
    token: str
    aggregation: str | None = None
    window: float | None = None


@dataclass(frozen=True, slots=True)
class MeterUse:
    """One meter billed by an endpoint rule: ``meter`` is a name from ``meters:`` or a token."""

    meter: str
    quantity: QuantitySpec = 1
    metadata: Mapping[str, Any] | None = None
    where: str = ""


@dataclass(frozen=True, slots=True)
class EndpointRule:
    """One item of ``endpoints:``. Matches by ``route`` (a template or glob) and/or ``name``
    (an endpoint / URL name or glob), optionally restricted to ``methods``."""

    route: str | None = None
    name: str | None = None
    methods: frozenset[str] | None = None
    meters: tuple[MeterUse, ...] = ()
    skip: bool = False
    customer: tuple[CustomerSpec, ...] | None = None
    bill_on: str | None = None
    where: str = ""
    index: int = 0

    def describe_match(self) -> str:
        parts = []
        if self.route is not None:
            parts.append(f"route {self.route}")
        if self.name is not None:
            parts.append(f"name {self.name}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Config:
    """The whole configuration. Build it with :func:`load_config`; every field is documented in
    ``docs/configuration.md``."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    access_token: str | None = field(default=None, repr=False)
    meters: Mapping[str, MeterSpec] = field(default_factory=dict)
    customer: tuple[CustomerSpec, ...] = ()
    bill_on: str = "2xx"
    bill_on_disconnect: bool = False
    bill_on_exception: bool = False
    exclude: tuple[str, ...] = ()
    default_meter: str | None = None
    endpoints: tuple[EndpointRule, ...] = ()
    on_missing_customer: Literal["skip", "reject"] = "skip"
    idempotency_header: str | None = DEFAULT_IDEMPOTENCY_HEADER
    enabled: bool = True
    # delivery, passed to FluxrateClient(**config.client_kwargs())
    allow_insecure: bool = False
    verify: bool | str = True
    max_queue_size: int = 100_000
    max_in_flight: int = 16
    max_attempts: int = 8
    max_retry_age: float = 300.0
    request_timeout: float = 10.0
    shutdown_timeout: float = 5.0
    failed_events_path: str | None = None
    durability: str = "memory"
    spool_path: str | None = None
    stats_log_interval: float | None = None  # seconds; None: no periodic stats line
    # scale-out through Redis Streams (docs/scale-out.md)
    transport: str = "direct"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_stream: str = "fluxrate:events"
    relay_rate_limit: int | None = None
    relay_claim_idle: float = 60.0
    source: str = "defaults"
    locations: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``FluxrateClient(**config.client_kwargs())``.

        ``aggregation`` ({meter token: AggregationSpec}) is included only when a meter of
        ``meters:`` declares pre-aggregation; ``durability`` and ``spool_path`` only when
        ``durability`` is not ``memory``; ``transport``, ``redis_url`` and ``redis_stream`` only
        when ``transport`` is not ``direct``; ``stats_log_interval`` only when it is on."""
        kwargs = self._delivery_kwargs()
        if self.stats_log_interval:
            kwargs["stats_log_interval"] = self.stats_log_interval
        if self.durability != "memory":
            kwargs["durability"] = self.durability
            kwargs["spool_path"] = self.spool_path
        if self.transport != "direct":
            kwargs["transport"] = self.transport
            kwargs["redis_url"] = self.redis_url
            kwargs["redis_stream"] = self.redis_stream
        aggregated = {
            spec.token: (spec.aggregation, spec.window)
            for spec in self.meters.values()
            if spec.aggregation is not None and spec.window is not None
        }
        if aggregated:
            from fluxrate_web.core.aggregation import AggregationSpec

            kwargs["aggregation"] = {
                token: AggregationSpec(kind, window)  # type: ignore[arg-type]
                for token, (kind, window) in aggregated.items()
            }
        return kwargs

    def _delivery_kwargs(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "access_token": self.access_token,
            "allow_insecure": self.allow_insecure,
            "verify": self.verify,
            "max_queue_size": self.max_queue_size,
            "max_in_flight": self.max_in_flight,
            "max_attempts": self.max_attempts,
            "max_retry_age": self.max_retry_age,
            "request_timeout": self.request_timeout,
            "shutdown_timeout": self.shutdown_timeout,
            "failed_events_path": self.failed_events_path,
        }

    def meter(self, name: str) -> MeterSpec | None:
        """The meter called ``name``; a UUID-looking name not in ``meters:`` is a token."""
        spec = self.meters.get(name)
        if spec is None and is_token(name):
            return MeterSpec(name=name, token=name)
        return spec

    def where(self, key: str) -> str:
        """``"fluxrate.yaml:14: endpoints[2].quantity"`` for a key path, for error messages."""
        location = self.locations.get(key)
        if location is None:
            return f"{self.source}: {key}" if key else self.source
        return f"{location}: {key}" if key else location

    def unknown_meter_message(self, name: str) -> str:
        return _unknown_meter(name, self.meters)

    def describe(self) -> dict[str, str]:
        """Settings as short strings (never the API key), for ``fluxrate-web check``."""
        return {
            "source": self.source,
            "api_key": "set" if self.api_key else "not set",
            "base_url": self.base_url or "(client default)",
            "customer": describe_resolver(self.customer),
            "on_missing_customer": self.on_missing_customer,
            "bill_on": self.bill_on,
            "bill_on_disconnect": str(self.bill_on_disconnect).lower(),
            "bill_on_exception": str(self.bill_on_exception).lower(),
            "default_meter": self.default_meter or "(none)",
            "exclude": ", ".join(self.exclude) or "(none)",
            "idempotency_header": self.idempotency_header or "(off)",
            "enabled": str(self.enabled).lower(),
            "durability": (
                self.durability
                if self.durability == "memory"
                else f"{self.durability} (spool_path {self.spool_path})"
            ),
            "transport": (
                self.transport
                if self.transport == "direct"
                else f"{self.transport} ({_mask_url(self.redis_url)}, stream {self.redis_stream})"
            ),
        }


def _unknown_meter(name: str, meters: Mapping[str, MeterSpec]) -> str:
    msg = f"unknown meter {name!r}"
    close = difflib.get_close_matches(name, list(meters), n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    known = ", ".join(sorted(meters)) or "none"
    return f"{msg}; known meters: {known}. Add it under 'meters:' or use the meter token (a UUID)"


# --------------------------------------------------------------------------------------------
# validation


class _Invalid(Exception):
    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


_TOP_KEYS = (
    "api_key",
    "base_url",
    "access_token",
    "meters",
    "customer",
    "bill_on",
    "bill_on_disconnect",
    "bill_on_exception",
    "exclude",
    "default_meter",
    "endpoints",
    "on_missing_customer",
    "idempotency_header",
    "enabled",
    "allow_insecure",
    "verify",
    "max_queue_size",
    "max_in_flight",
    "max_attempts",
    "max_retry_age",
    "request_timeout",
    "shutdown_timeout",
    "failed_events_path",
    "durability",
    "spool_path",
    "stats_log_interval",
    "transport",
    "redis_url",
    "redis_stream",
    "relay_rate_limit",
    "relay_claim_idle",
)
_RULE_KEYS = (
    "route",
    "name",
    "methods",
    "meter",
    "meters",
    "quantity",
    "metadata",
    "customer",
    "bill_on",
    "skip",
)
_USE_KEYS = ("meter", "quantity", "metadata")
_SPEC_KEYS = ("token", "aggregation", "window")


def _type_name(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) < 60 else "a string"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _keys(value: object, path: Path, allowed: Sequence[str], what: str) -> dict[str, Any]:
    """A mapping with case-insensitive schema keys; unknown keys are errors with a did-you-mean."""
    if not isinstance(value, Mapping):
        raise _Invalid(path, f"expected {what}, got {_type_name(value)}")
    result: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _Invalid(path, f"keys must be strings, got {key!r}")
        folded = key.lower()
        if folded not in allowed:
            msg = f"unknown key {key!r}"
            close = difflib.get_close_matches(folded, allowed, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
            raise _Invalid((*path, key), msg)
        if folded in result:
            raise _Invalid((*path, key), f"{key!r} is given twice (keys ignore case)")
        result[folded] = (key, item)
    return result


def _str(value: object, path: Path, *, empty_ok: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Invalid(path, f"expected a string, got {_type_name(value)}")
    text = str(value).strip()
    if not text and not empty_ok:
        raise _Invalid(path, "expected a non-empty string (is an environment variable empty?)")
    return text


def _opt_str(value: object, path: Path) -> str | None:
    if value is None:
        return None
    text = _str(value, path, empty_ok=True)
    return text or None


def _bool(value: object, path: Path) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0", ""):
        return False
    raise _Invalid(path, f"expected true or false, got {_type_name(value)}")


def _int(value: object, path: Path, minimum: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(path, f"expected a whole number >= {minimum}, got {_type_name(value)}")
    if value < minimum:
        raise _Invalid(path, f"expected a whole number >= {minimum}, got {value}")
    return value


def _seconds(value: object, path: Path, *, allow_zero: bool) -> float:
    """A duration: a number of seconds, or a string such as '500ms', '10s', '5m', '1h'."""
    expected = "a number of seconds or a duration such as '500ms', '10s', '5m'"
    seconds: float
    if isinstance(value, bool):
        raise _Invalid(path, f"expected {expected}, got {_type_name(value)}")
    if isinstance(value, int | float | Decimal):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match is None:
            raise _Invalid(path, f"expected {expected}, got {value!r}")
        factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}[
            match.group(2)
        ]
        seconds = float(match.group(1)) * factor
    else:
        raise _Invalid(path, f"expected {expected}, got {_type_name(value)}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise _Invalid(path, f"expected a duration {bound}, got {value!r}")
    return seconds


def _str_list(value: object, path: Path, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (_str(value, path),)
    if not isinstance(value, list | tuple):
        raise _Invalid(path, f"expected {what} or a list of them, got {_type_name(value)}")
    return tuple(_str(item, (*path, i)) for i, item in enumerate(value))


def parse_bill_on(value: object, path: Path = ("bill_on",)) -> str:
    """Normalise a ``bill_on`` value to a comma-separated string ("2xx", "2xx,304", "any").

    Raises ``ValueError`` (an :class:`_Invalid`) with the reason."""
    items: list[object]
    if isinstance(value, str):
        items = [part for part in value.split(",")]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, list | tuple) and value:
        items = list(value)
    else:
        raise _Invalid(path, f"{BILL_ON_EXPECTED}; got {_type_name(value)}")
    out: list[str] = []
    for item in items:
        if isinstance(item, bool):
            raise _Invalid(path, f"{BILL_ON_EXPECTED}; got {_type_name(item)}")
        text = str(item).strip().lower() if isinstance(item, str | int) else None
        if text is None:
            raise _Invalid(path, f"{BILL_ON_EXPECTED}; got {_type_name(item)}")
        if text in ("any", "all", "*"):
            text = "any"
        elif _STATUS_CLASS.match(text):
            pass
        elif text.isascii() and text.isdigit() and 100 <= int(text) <= 599:
            text = str(int(text))
        elif (rng := _STATUS_RANGE.match(text)) is not None and rng.group(1) <= rng.group(2):
            text = f"{rng.group(1)}-{rng.group(2)}"
        else:
            raise _Invalid(path, f"{BILL_ON_EXPECTED}; got {str(item)!r}")
        if text not in out:
            out.append(text)
    return ",".join(out)


def billable_statuses(bill_on: str) -> frozenset[int]:
    """The status codes a normalised ``bill_on`` string accepts."""
    codes: set[int] = set()
    for part in bill_on.split(","):
        if part == "any":
            return frozenset(range(100, 600))
        if part.endswith("xx"):
            base = int(part[0]) * 100
            codes.update(range(base, base + 100))
        elif "-" in part:
            low, high = part.split("-")
            codes.update(range(int(low), int(high) + 1))
        else:
            codes.add(int(part))
    return frozenset(codes)


def _metadata(value: object, path: Path) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _Invalid(path, f"expected a mapping of metadata, got {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _Invalid(path, f"metadata keys must be strings, got {key!r}")
    return dict(value)


def _customer(value: object, path: Path) -> tuple[CustomerSpec, ...]:
    try:
        return parse_resolver_spec(value)
    except ValueError as exc:
        raise _Invalid(path, str(exc)) from None


def _quantity(value: object, path: Path) -> QuantitySpec:
    try:
        return parse_quantity_spec(value)
    except ValueError as exc:
        raise _Invalid(path, str(exc)) from None


def _meter_spec(name: object, value: object, path: Path) -> MeterSpec:
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        raise _Invalid(path, f"a meter name must be a string without spaces, got {name!r}")
    aggregation: str | None = None
    window: float | None = None
    if isinstance(value, Mapping):
        keys = _keys(value, path, _SPEC_KEYS, "a meter token or a mapping")
        if "token" not in keys:
            raise _Invalid(path, "missing 'token' (the meter's token, shown on its detail page)")
        token_value = keys["token"][1]
        token_path: Path = (*path, keys["token"][0])
        if "aggregation" in keys:
            agg_key, agg_value = keys["aggregation"]
            text = _str(agg_value, (*path, agg_key)).upper()
            if text not in AGGREGATIONS:
                raise _Invalid(
                    (*path, agg_key),
                    f"expected one of {', '.join(AGGREGATIONS)}, got {agg_value!r}",
                )
            aggregation = text
        if "window" in keys:
            win_key, win_value = keys["window"]
            window = _seconds(win_value, (*path, win_key), allow_zero=False)
        if window is not None and aggregation is None:
            raise _Invalid(path, "'window' needs 'aggregation' (SUM, MAX, UNIQUE_COUNT or LAST)")
        if aggregation is not None and window is None:
            window = 60.0
        if aggregation is not None and window is not None:
            from fluxrate_web.core.aggregation import AggregationSpec

            try:
                AggregationSpec(aggregation, window)  # type: ignore[arg-type]
            except ValueError as exc:
                where = (*path, keys["window"][0]) if "window" in keys else path
                raise _Invalid(where, str(exc).removeprefix("window: ")) from None
    else:
        token_value = value
        token_path = path
    if token_value is None or (isinstance(token_value, str) and not token_value.strip()):
        raise _Invalid(
            token_path, "empty meter token (is the environment variable it comes from set?)"
        )
    token = _str(token_value, token_path)
    if any(c.isspace() for c in token):
        raise _Invalid(token_path, f"a meter token has no spaces, got {token!r}")
    return MeterSpec(name=name, token=token, aggregation=aggregation, window=window)


def _check_meter_ref(value: object, path: Path, meters: Mapping[str, MeterSpec]) -> str:
    name = _str(value, path)
    if name not in meters and not is_token(name):
        raise _Invalid(path, _unknown_meter(name, meters))
    return name


def _meter_use(
    value: object, path: Path, meters: Mapping[str, MeterSpec], where: Callable[[Path], str]
) -> MeterUse:
    if isinstance(value, str):
        return MeterUse(meter=_check_meter_ref(value, path, meters), where=where(path))
    keys = _keys(value, path, _USE_KEYS, "a meter name or a mapping with 'meter:'")
    if "meter" not in keys:
        raise _Invalid(path, "missing 'meter'")
    meter_key, meter_value = keys["meter"]
    name = _check_meter_ref(meter_value, (*path, meter_key), meters)
    quantity: QuantitySpec = 1
    if "quantity" in keys:
        q_key, q_value = keys["quantity"]
        quantity = _quantity(q_value, (*path, q_key))
    metadata = None
    if "metadata" in keys:
        m_key, m_value = keys["metadata"]
        metadata = _metadata(m_value, (*path, m_key))
    return MeterUse(meter=name, quantity=quantity, metadata=metadata, where=where(path))


def _methods(value: object, path: Path) -> frozenset[str] | None:
    if value is None:
        return None
    names = _str_list(value, path, "an HTTP method")
    out = set()
    for i, name in enumerate(names):
        upper = name.upper()
        if upper in ("*", "ANY"):
            return None
        if not _METHOD.match(upper):
            raise _Invalid(
                (*path, i) if not isinstance(value, str) else path, f"bad method {name!r}"
            )
        out.add(upper)
    if not out:
        raise _Invalid(path, "an empty list of methods matches nothing; remove 'methods:'")
    return frozenset(out)


def _endpoint(
    value: object,
    path: Path,
    index: int,
    meters: Mapping[str, MeterSpec],
    where: Callable[[Path], str],
) -> EndpointRule:
    keys = _keys(value, path, _RULE_KEYS, "a mapping with 'route:' or 'name:'")

    def get(key: str) -> tuple[Path, Any] | None:
        entry = keys.get(key)
        return None if entry is None else ((*path, entry[0]), entry[1])

    route = name = None
    if (entry := get("route")) is not None:
        route = _str(entry[1], entry[0])
    if (entry := get("name")) is not None:
        name = _str(entry[1], entry[0])
    if route is None and name is None:
        raise _Invalid(path, "a rule needs 'route:' (a route template or glob) or 'name:'")
    methods = None
    if (entry := get("methods")) is not None:
        methods = _methods(entry[1], entry[0])
    skip = False
    if (entry := get("skip")) is not None:
        skip = _bool(entry[1], entry[0])
    has_meter = "meter" in keys
    has_meters = "meters" in keys
    if skip:
        for other in ("meter", "meters", "quantity", "metadata", "customer", "bill_on"):
            if other in keys:
                raise _Invalid(
                    (*path, keys[other][0]), "a rule with 'skip: true' bills nothing; remove this"
                )
        return EndpointRule(
            route=route, name=name, methods=methods, skip=True, where=where(path), index=index
        )
    if has_meter and has_meters:
        raise _Invalid((*path, keys["meters"][0]), "give either 'meter:' or 'meters:', not both")
    uses: tuple[MeterUse, ...]
    if has_meters:
        for other in ("quantity", "metadata"):
            if other in keys:
                raise _Invalid(
                    (*path, keys[other][0]),
                    f"with 'meters:', put '{other}:' under each item of the list",
                )
        m_path, m_value = get("meters") or ((), None)
        if isinstance(m_value, str):
            m_value = [m_value]
        if not isinstance(m_value, list | tuple) or not m_value:
            raise _Invalid(
                m_path, f"expected a non-empty list of meters, got {_type_name(m_value)}"
            )
        uses = tuple(
            _meter_use(item, (*m_path, i), meters, where) for i, item in enumerate(m_value)
        )
    elif has_meter:
        use: dict[str, Any] = {"meter": keys["meter"][1]}
        for other in ("quantity", "metadata"):
            if other in keys:
                use[other] = keys[other][1]
        # validate with the rule's own paths so errors point at endpoints[i].quantity
        meter_name = _check_meter_ref(keys["meter"][1], (*path, keys["meter"][0]), meters)
        quantity: QuantitySpec = 1
        if "quantity" in keys:
            quantity = _quantity(keys["quantity"][1], (*path, keys["quantity"][0]))
        metadata = None
        if "metadata" in keys:
            metadata = _metadata(keys["metadata"][1], (*path, keys["metadata"][0]))
        uses = (MeterUse(meter_name, quantity, metadata, where(path)),)
    else:
        raise _Invalid(path, "a rule needs 'meter:' or 'meters:' (or 'skip: true' to bill nothing)")
    customer = None
    if (entry := get("customer")) is not None:
        customer = _customer(entry[1], entry[0])
    bill_on = None
    if (entry := get("bill_on")) is not None:
        bill_on = parse_bill_on(entry[1], entry[0])
    return EndpointRule(
        route=route,
        name=name,
        methods=methods,
        meters=uses,
        customer=customer,
        bill_on=bill_on,
        where=where(path),
        index=index,
    )


def _base_url(value: object, path: Path) -> str | None:
    text = _opt_str(value, path)
    if text is None:
        return None
    if not re.match(r"https?://[^\s/]+", text):
        raise _Invalid(path, f"expected an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def _build(data: Mapping[str, Any], where: Callable[[Path], str], source: str) -> Config:
    keys = _keys(data, (), _TOP_KEYS, "a mapping of settings")

    def get(key: str) -> tuple[Path, Any] | None:
        entry = keys.get(key)
        return None if entry is None else ((entry[0],), entry[1])

    kwargs: dict[str, Any] = {}
    for key in ("api_key", "access_token", "failed_events_path", "spool_path"):
        if (entry := get(key)) is not None:
            kwargs[key] = _opt_str(entry[1], entry[0])
    if (entry := get("base_url")) is not None:
        kwargs["base_url"] = _base_url(entry[1], entry[0])

    meters: dict[str, MeterSpec] = {}
    if (entry := get("meters")) is not None and entry[1] is not None:
        m_path, m_value = entry
        if not isinstance(m_value, Mapping):
            raise _Invalid(
                m_path, f"expected a mapping of meter names to tokens, got {_type_name(m_value)}"
            )
        for name, item in m_value.items():
            meters[str(name)] = _meter_spec(name, item, (*m_path, str(name)))
    kwargs["meters"] = meters

    if (entry := get("customer")) is not None and entry[1] is not None:
        kwargs["customer"] = _customer(entry[1], entry[0])
    if (entry := get("bill_on")) is not None:
        kwargs["bill_on"] = parse_bill_on(entry[1], entry[0])
    for key in ("bill_on_disconnect", "bill_on_exception", "enabled", "allow_insecure"):
        if (entry := get(key)) is not None:
            kwargs[key] = _bool(entry[1], entry[0])
    if (entry := get("exclude")) is not None and entry[1] is not None:
        kwargs["exclude"] = _str_list(entry[1], entry[0], "a route template or glob")
    if (entry := get("default_meter")) is not None and entry[1] is not None:
        kwargs["default_meter"] = _check_meter_ref(entry[1], entry[0], meters)
    if (entry := get("endpoints")) is not None and entry[1] is not None:
        e_path, e_value = entry
        if not isinstance(e_value, list | tuple):
            raise _Invalid(e_path, f"expected a list of rules, got {_type_name(e_value)}")
        kwargs["endpoints"] = tuple(
            _endpoint(item, (*e_path, i), i, meters, where) for i, item in enumerate(e_value)
        )
    if (entry := get("on_missing_customer")) is not None:
        text = _str(entry[1], entry[0]).lower()
        if text not in ("skip", "reject"):
            raise _Invalid(entry[0], f"expected 'skip' or 'reject', got {entry[1]!r}")
        kwargs["on_missing_customer"] = text
    if (entry := get("idempotency_header")) is not None:
        value = entry[1]
        if value is None or value is False or (isinstance(value, str) and not value.strip()):
            kwargs["idempotency_header"] = None
        else:
            header = _str(value, entry[0])
            if not _HEADER.match(header):
                raise _Invalid(entry[0], f"{header!r} is not a valid header name")
            kwargs["idempotency_header"] = header
    if (entry := get("verify")) is not None:
        value = entry[1]
        if isinstance(value, str) and value.strip().lower() not in ("true", "false"):
            kwargs["verify"] = _str(value, entry[0])  # a CA bundle path
        else:
            kwargs["verify"] = _bool(value, entry[0])
    for key, minimum in (("max_queue_size", 1), ("max_in_flight", 1), ("max_attempts", 1)):
        if (entry := get(key)) is not None:
            kwargs[key] = _int(entry[1], entry[0], minimum)
    for key, zero in (
        ("max_retry_age", False),
        ("request_timeout", False),
        ("shutdown_timeout", True),
    ):
        if (entry := get(key)) is not None:
            kwargs[key] = _seconds(entry[1], entry[0], allow_zero=zero)
    if (entry := get("stats_log_interval")) is not None and entry[1] is not None:
        # 0 (or null) is "off", the default
        kwargs["stats_log_interval"] = _seconds(entry[1], entry[0], allow_zero=True) or None
    if (entry := get("durability")) is not None and entry[1] is not None:
        text = _str(entry[1], entry[0]).strip().lower()
        if text not in DURABILITY_MODES:
            raise _Invalid(
                entry[0], f"expected one of {', '.join(DURABILITY_MODES)}, got {entry[1]!r}"
            )
        if text != "memory" and not kwargs.get("spool_path"):
            raise _Invalid(entry[0], f"'{text}' needs spool_path (a directory for the spool)")
        kwargs["durability"] = text
    _build_scale_out(get, kwargs)
    return Config(source=source, **kwargs)


def _mask_url(url: str) -> str:
    """A Redis URL without its password."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def _build_scale_out(get: Callable[[str], tuple[Path, Any] | None], kwargs: dict[str, Any]) -> None:
    """The scale-out keys: ``transport``, ``redis_*`` and ``relay_*``."""
    if (entry := get("transport")) is not None and entry[1] is not None:
        text = _str(entry[1], entry[0]).lower()
        if text not in ("direct", "redis"):
            raise _Invalid(entry[0], f"expected 'direct' or 'redis', got {entry[1]!r}")
        kwargs["transport"] = text
    if (entry := get("redis_url")) is not None and entry[1] is not None:
        url = _str(entry[1], entry[0])
        if not re.match(r"(redis|rediss|unix)://", url, re.I):
            raise _Invalid(entry[0], f"expected a redis://, rediss:// or unix:// URL, got "
                                     f"{_mask_url(url)!r}")  # fmt: skip
        kwargs["redis_url"] = url
    if (entry := get("redis_stream")) is not None and entry[1] is not None:
        name = _str(entry[1], entry[0])
        if any(ord(c) < 0x20 for c in name):
            raise _Invalid(entry[0], "control characters are not allowed in a stream name")
        kwargs["redis_stream"] = name
    if (entry := get("relay_rate_limit")) is not None and entry[1] is not None:
        kwargs["relay_rate_limit"] = _int(entry[1], entry[0], 1)
    if (entry := get("relay_claim_idle")) is not None and entry[1] is not None:
        kwargs["relay_claim_idle"] = _seconds(entry[1], entry[0], allow_zero=False)


# --------------------------------------------------------------------------------------------
# loading


def _locations(lines: Mapping[Path, int], source: str) -> dict[str, str]:
    return {format_path(path): f"{source}:{line}" for path, line in lines.items() if path}


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    overrides_name: str = "overrides",
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read the configuration.

    ``path`` names a YAML file; when ``None``, ``overrides["CONFIG"]`` (any case) and then the
    environment variable ``FLUXRATE_CONFIG`` name it; with none of them there is no file.
    ``overrides`` (Django ``settings.FLUXRATE``, Flask ``app.config``, keyword arguments) win over
    the file key by key; their keys may be upper or lower case. ``overrides_name`` names them in
    error messages (``"settings.FLUXRATE"``). ``env`` replaces ``os.environ`` for ``${NAME}``
    interpolation (tests).

    Raises :class:`ConfigError` naming file, line and key.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    over: dict[str, tuple[str, Any]] = {}
    for key, value in (overrides or {}).items():
        if not isinstance(key, str):
            raise ConfigError(f"{overrides_name}: keys must be strings, got {key!r}")
        folded = key.lower()
        if folded in over:
            raise ConfigError(f"{overrides_name}: {key!r} is given twice (keys ignore case)")
        over[folded] = (key, value)
    if path is None and "config" in over:
        config_value = over["config"][1]
        if config_value is not None and not isinstance(config_value, str | os.PathLike):
            raise ConfigError(f"{overrides_name}: config: expected the path of a YAML file")
        path = config_value
    over.pop("config", None)
    if path is None:
        path = environ.get(ENV_CONFIG) or None

    data: Any = None
    lines: dict[Path, int] = {}
    source = overrides_name if over else "defaults"
    file_name: str | None = None
    if path is not None:
        file_name = os.fspath(path)
        try:
            with open(file_name, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            reason = exc.strerror or exc
            raise ConfigError(f"{file_name}: cannot read the configuration: {reason}") from None
        try:
            data, lines = load_yaml(raw, environ)
        except YamlProblem as problem:
            at = f"{file_name}:{problem.line}"
            key = format_path(problem.path)
            raise ConfigError(
                f"{at}: {key}: {problem.message}" if key else f"{at}: {problem.message}"
            ) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"{file_name}:{lines.get((), 1)}: expected a mapping of settings at the top "
                f"level, got {_type_name(data)}"
            )
        source = f"{file_name} + {overrides_name}" if over else file_name

    merged: dict[str, Any] = dict(data or {})
    from_overrides: set[str] = set()
    if over:
        by_fold = {k.lower(): k for k in merged if isinstance(k, str)}
        for folded, (key, value) in over.items():
            existing = by_fold.get(folded)
            if existing is not None:
                del merged[existing]
            merged[key] = value
            from_overrides.add(key)

    def line_of(p: Path) -> int | None:
        for cut in range(len(p), -1, -1):
            line = lines.get(p[:cut])
            if line is not None:
                return line
        return None

    def where(p: Path) -> str:
        if p and p[0] in from_overrides:
            return overrides_name
        line = line_of(p) if file_name is not None else None
        if file_name is None:
            return overrides_name if over else source
        return f"{file_name}:{line or 1}"

    try:
        config = _build(merged, where, source)
    except _Invalid as exc:
        key = format_path(exc.path)
        raise ConfigError(
            f"{where(exc.path)}: {key}: {exc.message}"
            if key
            else (f"{where(exc.path)}: {exc.message}")
        ) from None
    locations = _locations(lines, file_name) if file_name is not None else {}
    for key in from_overrides:
        locations[key.lower()] = overrides_name
    return _replace_locations(config, locations)


def _replace_locations(config: Config, locations: dict[str, str]) -> Config:
    object.__setattr__(config, "locations", locations)
    return config


def describe_use(use: MeterUse) -> str:
    """``api_calls`` or ``ai_tokens x response_header:X-Tokens-Used``."""
    if use.quantity == 1:
        return use.meter
    return f"{use.meter} x {describe_quantity(use.quantity)}"
