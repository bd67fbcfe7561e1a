"""Which meters a request is billed on: the ``@meter`` decorator and :class:`RequestRules`.

Precedence, decided once per route (then cached by :class:`~fluxrate_web.core.metering.Metering`):

1. an exemption beats everything: ``@meter.exempt``, a matching ``exclude:`` glob, or a matching
   endpoint rule with ``skip: true``;
2. ``@meter(...)`` decorators on the view (the handler method, the endpoint, a class-based view's
   class or its ``dispatch``): all of them apply (they stack);
3. the first endpoint rule of ``fluxrate.yaml`` that matches (file order);
4. ``default_meter``, for every route that matched (never for a 404).

Endpoint rules match the framework's route template, never the raw path. Templates are
normalised so one rule works on every framework: a leading ``/`` is added, a trailing ``/`` is
removed, and every path parameter becomes ``{}`` whatever its name and converter::

    Starlette/FastAPI  /v1/items/{item_id}  /v1/files/{path:path}
    Django             v1/items/<int:pk>/   ^v1/items/(?P<pk>[0-9]+)/$
    Flask              /v1/items/<int:item_id>
    all become         /v1/items/{}         /v1/files/{}

``*`` in a rule's ``route:`` or ``name:`` (or in ``exclude:``) matches any run of characters,
``/`` included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar, overload

import wrapt

from fluxrate_web.core.config import (
    Config,
    EndpointRule,
    MeterSpec,
    _Invalid,
    billable_statuses,
    parse_bill_on,
)
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.events import PreparedMeter, prepared_meter
from fluxrate_web.core.quantities import (
    CompiledQuantity,
    QuantitySpec,
    compile_quantity,
    parse_quantity_spec,
)
from fluxrate_web.core.resolvers import (
    CustomerResolver,
    CustomerSpec,
    RequestView,
    ResolverSpec,
    compile_resolver,
    parse_resolver_spec,
)

__all__ = [
    "MeterRule",
    "PlannedMeter",
    "RequestRules",
    "RoutePlan",
    "meter",
    "normalize_route",
    "rules_of",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

ATTRIBUTE = "__fluxrate__"

# --------------------------------------------------------------------------------------------
# route templates

_ANGLE = re.compile(r"<(?:[^<>:]+:)?[^<>]+>")  # Django / Flask: <int:pk>, <pk>
_BRACE = re.compile(r"\{[^{}]*\}")  # Starlette: {item_id}, {path:path}
_SLASHES = re.compile(r"/{2,}")


def _regex_route(pattern: str) -> str:
    """Best effort for Django ``re_path``: groups become ``{}``, escapes are removed."""
    text = pattern
    if text.startswith("^"):
        text = text[1:]
    for end in ("\\Z", "$"):
        if text.endswith(end):
            text = text[: -len(end)]
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            if depth == 0:
                out.append(text[i + 1])
            i += 2
            continue
        if char == "(":
            if depth == 0:
                out.append("{}")
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        elif depth == 0 and char not in "?+*":
            out.append(char)
        i += 1
    return "".join(out)


def normalize_route(template: str) -> str:
    """The framework-independent form of a route template (see the module docstring)."""
    text = template.strip()
    if text.startswith("^") or text.endswith("$") or "(?P<" in text:
        text = _regex_route(text)
    text = _ANGLE.sub("{}", text)
    text = _BRACE.sub("{}", text)
    text = _SLASHES.sub("/", "/" + text)
    if len(text) > 1 and text.endswith("/"):
        text = text[:-1]
    return text


class _Pattern:
    """An exact normalised template or a ``*`` glob."""

    __slots__ = ("exact", "regex", "text")

    def __init__(self, text: str, *, route: bool) -> None:
        self.text = text
        value = normalize_route(text) if route else text
        if "*" in value:
            self.exact = None
            self.regex: re.Pattern[str] | None = re.compile(
                ".*".join(re.escape(part) for part in re.split(r"\*+", value)) + r"\Z"
            )
        else:
            self.exact = value
            self.regex = None

    def matches(self, value: str) -> bool:
        if self.exact is not None:
            return value == self.exact
        assert self.regex is not None
        return self.regex.match(value) is not None


# --------------------------------------------------------------------------------------------
# the decorator


@dataclass(frozen=True, slots=True, eq=False)
class MeterRule:
    """What one ``@meter(...)`` (or ``@meter.exempt``) attached to a view."""

    meter: str | None  # None for an exemption
    quantity: QuantitySpec = 1
    customer: tuple[CustomerSpec, ...] | None = None
    metadata: Mapping[str, Any] | Callable[..., Any] | None = None
    bill_on: str | None = None
    target: str = ""

    @property
    def exempt(self) -> bool:
        return self.meter is None


def _qualname(obj: object) -> str:
    module = getattr(obj, "__module__", None) or "?"
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{module}.{qualname}"


def rules_of(obj: object) -> tuple[MeterRule, ...]:
    """The rules attached to ``obj`` by ``@meter`` (empty if none)."""
    if obj is None:
        return ()
    try:
        found = getattr(obj, ATTRIBUTE, ())
    except Exception:
        return ()
    return found if isinstance(found, tuple) else ()


@wrapt.decorator
def _passthrough(
    wrapped: Callable[..., Any], instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    return wrapped(*args, **kwargs)


def _attach(target: T, rule: MeterRule) -> T:
    if isinstance(target, type):
        # A class-based view: the rule applies to every method it handles.
        existing = target.__dict__.get(ATTRIBUTE, ())
        setattr(target, ATTRIBUTE, (*existing, rule))
        return target
    if not callable(target):
        raise TypeError(f"@meter decorates a function, a method or a class, not {target!r}")
    wrapper: Any = _passthrough(target)
    # Stored in the function's __dict__ (wrapt forwards attribute writes to the wrapped
    # function), so functools.wraps-style decorators and Django's method_decorator carry it.
    setattr(wrapper, ATTRIBUTE, (*rules_of(target), rule))
    return wrapper  # type: ignore[no-any-return]


class _Meter:
    """``@meter(name, *, quantity=1, customer=None, metadata=None, bill_on=None)``.

    Attaches a billing rule to a view; it does not change how the view is called. The view keeps
    its signature, name, docstring, ``__wrapped__`` and coroutine-ness. Stackable: each
    ``@meter`` adds one meter. On a class-based view, decorate the handler methods, the class,
    or ``dispatch`` (e.g. with Django's ``method_decorator``). The meter name is checked when
    :class:`~fluxrate_web.core.metering.Metering` first routes to the view.
    """

    def __call__(
        self,
        name: str,
        *,
        quantity: QuantitySpec = 1,
        customer: ResolverSpec | None = None,
        metadata: Mapping[str, Any] | Callable[..., Any] | None = None,
        bill_on: str | int | Iterable[str | int] | None = None,
    ) -> Callable[[T], T]:
        if callable(name) and not isinstance(name, str):
            raise TypeError("use @meter('meter_name'), with the meter's name in parentheses")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"@meter({name!r}): the meter name must be a non-empty string")
        label = f"@meter({name!r})"
        try:
            quantity_spec = parse_quantity_spec(quantity)
        except ValueError as exc:
            raise ConfigError(f"{label}: quantity: {exc}") from None
        customer_specs = None
        if customer is not None:
            try:
                customer_specs = parse_resolver_spec(customer)
            except ValueError as exc:
                raise ConfigError(f"{label}: customer: {exc}") from None
        if metadata is not None and not (isinstance(metadata, Mapping) or callable(metadata)):
            raise ConfigError(f"{label}: metadata: expected a mapping or a callable")
        bill_on_text = None
        if bill_on is not None:
            try:
                value = bill_on if isinstance(bill_on, str | int) else list(bill_on)
                bill_on_text = parse_bill_on(value)
            except _Invalid as exc:
                raise ConfigError(f"{label}: bill_on: {exc.message}") from None

        def decorate(target: T) -> T:
            rule = MeterRule(
                meter=name.strip(),
                quantity=quantity_spec,
                customer=customer_specs,
                metadata=metadata,
                bill_on=bill_on_text,
                target=_qualname(target),
            )
            return _attach(target, rule)

        return decorate

    @overload
    def exempt(self, target: T) -> T: ...

    @overload
    def exempt(self, target: None = None) -> Callable[[T], T]: ...

    def exempt(self, target: Any = None) -> Any:
        """``@meter.exempt``: never bill this view, whatever the defaults and rules say.

        ``fluxrate_web.record()`` calls inside the view still bill."""
        if target is None:
            return self.exempt
        return _attach(target, MeterRule(meter=None, target=_qualname(target)))

    def __repr__(self) -> str:
        return "fluxrate_web.meter"


meter = _Meter()


# --------------------------------------------------------------------------------------------
# compiled plans


class PlannedMeter:
    """One meter a route bills: token, compiled quantity, metadata, and optional per-meter
    customer resolver and ``bill_on`` (``None`` = the plan's)."""

    __slots__ = (
        "billable",
        "constant",
        "metadata",
        "metadata_fn",
        "name",
        "prepared",
        "quantity",
        "resolver",
        "spec",
        "token",
    )

    def __init__(
        self,
        spec: MeterSpec,
        quantity: CompiledQuantity,
        metadata: Mapping[str, Any] | Callable[..., Any] | None,
        resolver: CustomerResolver | None,
        billable: frozenset[int] | None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.token = spec.token
        self.quantity = quantity
        self.constant: int | float | Decimal | None = quantity.constant
        if callable(metadata) and not isinstance(metadata, Mapping):
            self.metadata: Mapping[str, Any] | None = None
            self.metadata_fn: Callable[..., Any] | None = metadata
        else:
            self.metadata = dict(metadata) if metadata else None
            self.metadata_fn = None
        self.resolver = resolver
        self.billable = billable
        # constant quantity and static metadata: validated once, here, for the request path
        # (Metering hands them to the client as they are; None = validate per event)
        self.prepared: PreparedMeter | None = (
            prepared_meter(self.token, self.constant, self.metadata)
            if self.constant is not None and self.metadata_fn is None
            else None
        )

    def __repr__(self) -> str:
        return f"PlannedMeter({self.name!r}, quantity={self.quantity.description})"


def _single_header(resolver: CustomerResolver) -> str | None:
    """The lower-cased header name when ``resolver`` is exactly one ``header:`` spec."""
    specs = resolver.specs
    if len(specs) != 1 or not isinstance(specs[0], str):
        return None
    kind, _, name = specs[0].partition(":")
    return name.lower() if kind == "header" and name else None


class RoutePlan:
    """What to do for one (route, method): built once per route and cached.

    ``meters`` is empty when no rule bills this route (``fluxrate_web.record()`` may still add
    usage). ``exempt`` is true for ``@meter.exempt``, ``exclude:`` and ``skip: true``.
    ``reject_missing_customer`` asks the adapter to answer 401 before the view runs when
    :meth:`customer` finds nobody. ``needs_async`` is true when an async callable resolver or
    quantity source is involved: call :meth:`customer_async` and ``Metering.finish_async``.

    ``customer_header`` is the lower-cased name of the one request header that names the
    customer of every meter of the plan (a lone ``header:`` resolver), else ``None``: an adapter
    that reads it in the same pass as the idempotency header may hand both to
    ``Metering.finish`` (``customer=value or ""``, ``request_key=``) instead of having core ask
    the view for each.
    """

    __slots__ = (
        "bill_on_disconnect",
        "bill_on_exception",
        "billable",
        "customer",
        "customer_header",
        "exempt",
        "fast",
        "meters",
        "needs_async",
        "needs_info",
        "prepared",
        "reject_missing_customer",
        "resolver",
        "source",
        "uniform",
    )

    def __init__(
        self,
        meters: tuple[PlannedMeter, ...],
        *,
        exempt: bool,
        resolver: CustomerResolver,
        billable: frozenset[int],
        bill_on_disconnect: bool,
        bill_on_exception: bool,
        reject_missing_customer: bool,
        source: str,
    ) -> None:
        self.meters = meters
        self.exempt = exempt
        self.resolver = resolver
        self.billable = billable
        self.bill_on_disconnect = bill_on_disconnect
        self.bill_on_exception = bill_on_exception
        self.reject_missing_customer = reject_missing_customer and bool(meters)
        self.source = source
        self.needs_async = resolver.is_async or any(
            m.quantity.is_async or (m.resolver is not None and m.resolver.is_async) for m in meters
        )
        self.needs_info = any(m.constant is None or m.metadata_fn is not None for m in meters)
        # every meter shares the plan's customer and bill_on: one check per request
        self.uniform = all(m.resolver is None and m.billable is None for m in meters)
        # constant quantities, static metadata, shared customer and bill_on, nothing async:
        # Metering.finish() takes its short path
        self.fast = self.uniform and not self.needs_info and not self.needs_async
        # fast, and every meter's token, quantity and metadata validated at planning time:
        # Metering builds the events without validating them again
        prepared = [m.prepared for m in meters if m.prepared is not None]
        self.prepared: tuple[PreparedMeter, ...] | None = (
            tuple(prepared) if self.fast and meters and len(prepared) == len(meters) else None
        )
        # the sync resolver, bound once: plan.customer(view) -> str | None
        self.customer: Callable[[RequestView], str | None] = resolver.resolve
        self.customer_header = _single_header(resolver) if self.uniform else None

    async def customer_async(self, view: RequestView) -> str | None:
        """The customer, awaiting async resolvers."""
        return await self.resolver.resolve_async(view)

    def is_billable(self, status: int | None, completed: bool, error: bool) -> bool:
        """Whether a response is billed under the plan's ``bill_on`` and flags."""
        if error and not self.bill_on_exception:
            return False
        if not completed and not self.bill_on_disconnect:
            return False
        return status in self.billable

    def __repr__(self) -> str:
        names = ", ".join(m.name for m in self.meters) or "-"
        return f"RoutePlan(meters=[{names}], exempt={self.exempt}, source={self.source!r})"


class _CompiledRule:
    __slots__ = ("customer", "meters", "methods", "name", "route", "rule")

    def __init__(
        self,
        rule: EndpointRule,
        meters: tuple[PlannedMeter, ...],
        customer: CustomerResolver | None,
    ) -> None:
        self.rule = rule
        self.route = _Pattern(rule.route, route=True) if rule.route is not None else None
        self.name = _Pattern(rule.name, route=False) if rule.name is not None else None
        self.methods = rule.methods
        self.meters = meters
        self.customer = customer

    def matches(self, route: str | None, method: str, name: str | None) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.route is not None and (route is None or not self.route.matches(route)):
            return False
        return not (self.name is not None and (name is None or not self.name.matches(name)))


class RequestRules:
    """Every rule of a :class:`Config`, compiled once (resolvers, quantities, globs, imports).

    :meth:`plan` answers which meters apply to (route template, method, endpoint). It does the
    matching work; :class:`~fluxrate_web.core.metering.Metering` caches its answers per route.
    Raises :class:`ConfigError` at construction for a bad rule, and from :meth:`plan` for a
    ``@meter`` naming an unknown meter (the message names the function).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.resolver = compile_resolver(config.customer or None, config.where("customer"))
        self.billable = billable_statuses(config.bill_on)
        self.exclude = tuple(_Pattern(text, route=True) for text in config.exclude)
        self.reject = config.on_missing_customer == "reject"
        compiled: list[_CompiledRule] = []
        for rule in config.endpoints:
            customer = (
                compile_resolver(rule.customer, f"{rule.where}: customer")
                if rule.customer is not None
                else None
            )
            planned = tuple(
                self._planned(
                    use.meter,
                    use.quantity,
                    use.metadata,
                    None,
                    None,
                    where=use.where or rule.where,
                )
                for use in rule.meters
            )
            compiled.append(_CompiledRule(rule, planned, customer))
        self.rules = tuple(compiled)
        self._skips = tuple(r for r in compiled if r.rule.skip)
        self._bills = tuple(r for r in compiled if not r.rule.skip)
        self.default: tuple[PlannedMeter, ...] = ()
        if config.default_meter is not None:
            self.default = (
                self._planned(config.default_meter, 1, None, None, None, where="default_meter"),
            )
        self.empty = self._plan((), exempt=False, source="no rule")
        self.exempted = self._plan((), exempt=True, source="exempt")
        # id(rule) -> (rule, planned): rules compare by identity and live as long as their view
        self._decorated: dict[int, tuple[MeterRule, PlannedMeter]] = {}

    # -- building blocks

    def _spec(self, name: str, where: str) -> MeterSpec:
        spec = self.config.meter(name)
        if spec is None:
            raise ConfigError(f"{where}: {self.config.unknown_meter_message(name)}")
        return spec

    def _planned(
        self,
        name: str,
        quantity: QuantitySpec,
        metadata: Mapping[str, Any] | Callable[..., Any] | None,
        resolver: CustomerResolver | None,
        billable: frozenset[int] | None,
        *,
        where: str,
    ) -> PlannedMeter:
        spec = self._spec(name, where)
        compiled = compile_quantity(quantity, f"{where}: quantity")
        return PlannedMeter(spec, compiled, metadata, resolver, billable)

    def _plan(
        self,
        meters: tuple[PlannedMeter, ...],
        *,
        exempt: bool,
        source: str,
        resolver: CustomerResolver | None = None,
        billable: frozenset[int] | None = None,
    ) -> RoutePlan:
        return RoutePlan(
            meters,
            exempt=exempt,
            resolver=resolver if resolver is not None else self.resolver,
            billable=billable if billable is not None else self.billable,
            bill_on_disconnect=self.config.bill_on_disconnect,
            bill_on_exception=self.config.bill_on_exception,
            reject_missing_customer=self.reject,
            source=source,
        )

    def _from_decorator(self, rule: MeterRule) -> PlannedMeter:
        entry = self._decorated.get(id(rule))
        if entry is not None and entry[0] is rule:
            return entry[1]
        where = f"@meter({rule.meter!r}) on {rule.target}"
        assert rule.meter is not None
        resolver = (
            compile_resolver(rule.customer, f"{where}: customer")
            if rule.customer is not None
            else None
        )
        billable = billable_statuses(rule.bill_on) if rule.bill_on is not None else None
        planned = self._planned(
            rule.meter, rule.quantity, rule.metadata, resolver, billable, where=where
        )
        self._decorated[id(rule)] = (rule, planned)
        return planned

    @staticmethod
    def _objects(endpoint: object | None, handler: object | None) -> Iterable[object]:
        if handler is not None:
            yield handler
        if endpoint is not None and endpoint is not handler:
            yield endpoint
            view_class = getattr(endpoint, "view_class", None) or getattr(endpoint, "cls", None)
            if isinstance(view_class, type):
                yield view_class
                for method in ("dispatch", "dispatch_request"):
                    found = getattr(view_class, method, None)
                    if found is not None:
                        yield found

    def decorator_rules(
        self, endpoint: object | None, handler: object | None, defaults: Iterable[object] = ()
    ) -> tuple[MeterRule, ...]:
        """The ``@meter`` rules of a view, then those of its group ``defaults`` (objects carrying
        ``@meter`` metadata, outermost first, e.g. a Flask blueprint's marker). A default whose
        meter the view itself (or a more inner default) already bills is dropped."""
        seen: list[MeterRule] = []
        for obj in self._objects(endpoint, handler):
            for rule in rules_of(obj):
                if not any(rule is other for other in seen):
                    seen.append(rule)
        if defaults:
            billed = {rule.meter for rule in seen if not rule.exempt}
            extra: list[MeterRule] = []
            for obj in reversed(tuple(defaults)):  # innermost first
                for rule in rules_of(obj):
                    if any(rule is other for other in seen) or any(rule is o for o in extra):
                        continue
                    if rule.exempt or rule.meter not in billed:
                        extra.append(rule)
                        billed.add(rule.meter)
            seen.extend(reversed(extra))
        return tuple(seen)

    def decorated_meters(
        self, endpoint: object | None, handler: object | None = None
    ) -> tuple[PlannedMeter, ...]:
        """Compile the ``@meter`` rules found on a view (raises :class:`ConfigError`)."""
        return tuple(
            self._from_decorator(rule)
            for rule in self.decorator_rules(endpoint, handler)
            if not rule.exempt
        )

    # -- the answer

    def plan(
        self,
        template: str | None,
        method: str,
        endpoint: object | None = None,
        *,
        handler: object | None = None,
        name: str | None = None,
        defaults: tuple[object, ...] = (),
    ) -> RoutePlan:
        """The plan for one route and method (uncached; see ``Metering.route``).

        ``defaults``: group-level markers (see :meth:`decorator_rules`)."""
        if not self.config.enabled:
            return self.exempted
        route = normalize_route(template) if template is not None else None
        method = method.upper()
        decorated = self.decorator_rules(endpoint, handler, defaults)
        if any(rule.exempt for rule in decorated):
            return self.exempted
        if route is not None and any(pattern.matches(route) for pattern in self.exclude):
            return self.exempted
        if any(rule.matches(route, method, name) for rule in self._skips):
            return self.exempted
        if decorated:
            meters = tuple(self._from_decorator(rule) for rule in decorated)
            # When every decorator names the same customer (or bill_on), it is the plan's (and
            # record()'s); otherwise the plan keeps the configuration's and each meter its own.
            resolver = meters[0].resolver
            if resolver is None or any(
                m.resolver is None or m.resolver.specs != resolver.specs for m in meters
            ):
                resolver = None
            billable = meters[0].billable
            if any(m.billable != billable for m in meters):
                billable = None
            return self._plan(
                meters,
                exempt=False,
                source=f"@meter on {decorated[0].target}",
                resolver=resolver,
                billable=billable,
            )
        for compiled in self._bills:
            if compiled.matches(route, method, name):
                rule = compiled.rule
                return self._plan(
                    compiled.meters,
                    exempt=False,
                    source=rule.where,
                    resolver=compiled.customer,
                    billable=billable_statuses(rule.bill_on) if rule.bill_on else None,
                )
        if self.default and (
            route is not None or endpoint is not None or name is not None or handler is not None
        ):
            return self._plan(self.default, exempt=False, source="default_meter")
        return self.empty

    def describe(self) -> list[dict[str, str]]:
        """One row per endpoint rule, for ``fluxrate-web check``."""
        rows = []
        for compiled in self.rules:
            rule = compiled.rule
            if rule.skip:
                meters = "(skip)"
            else:
                meters = ", ".join(
                    m.name if m.constant == 1 else f"{m.name} x {m.quantity.description}"
                    for m in compiled.meters
                )
            rows.append(
                {
                    "where": rule.where,
                    "match": rule.describe_match(),
                    "methods": ",".join(sorted(rule.methods)) if rule.methods else "*",
                    "meters": meters,
                    "customer": (
                        compiled.customer.description if compiled.customer else "(default)"
                    ),
                    "bill_on": rule.bill_on or "-",
                }
            )
        return rows
