"""The seam every adapter calls: :class:`Metering`, :class:`RoutePlan`, :class:`RequestView`,
and :func:`record`.

Compiled once at startup, asked once per request::

    metering = Metering.from_config("fluxrate.yaml")    # or Metering(config, client=...)
    metering.start()

    # per request, in the adapter
    scope = metering.open_scope()                       # enables record(); O(1)
    plan = metering.route(template, method, endpoint, handler=..., name=...)   # cached per route
    if plan.reject_missing_customer and plan.customer(view) is None:
        ...answer 401...
    ...the app runs; the adapter counts bytes...
    metering.finish(plan, view, scope, status=..., request_bytes=..., response_bytes=...,
                    response_headers=..., duration_ms=..., completed=..., error=...)

``finish`` decides everything else (billable, customer, quantities, idempotency key) and never
raises into the request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar, Token
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from fluxrate_web.core._log import log_limited, logger, warn_limited
from fluxrate_web.core.config import Config, MeterSpec, load_config
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.events import reseed_keys_if_forked, trusted_event
from fluxrate_web.core.quantities import HeaderSource, ResponseInfo, parse_number
from fluxrate_web.core.resolvers import RequestView
from fluxrate_web.core.rules import PlannedMeter, RequestRules, RoutePlan

if TYPE_CHECKING:
    from fluxrate_web.core.events import UsageEvent

__all__ = [
    "Metering",
    "RequestView",
    "RoutePlan",
    "ScopeToken",
    "UsageClient",
    "record",
    "stats",
]

_log = logger.getChild("metering")
_getpid = os.getpid


class UsageClient(Protocol):
    """What :class:`Metering` needs of a client: ``FluxrateClient`` or ``CapturingClient``."""

    def track(
        self,
        meter_token: str,
        customer_external_id: str,
        quantity: int | float | Decimal = 1,
        *,
        timestamp: Any = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> UsageEvent | None: ...

    def enqueue(self, event: UsageEvent) -> bool: ...

    def note_dropped(self, reason: str) -> None: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self, timeout: float | None = None) -> None: ...


# --------------------------------------------------------------------------------------------
# record(): usage added from inside a view


class ScopeToken(list[tuple[str, Any, Any, Any]]):
    """The per-request scope: the list ``record()`` appends to. Opened by
    :meth:`Metering.open_scope`, closed by :meth:`Metering.finish`.

    The contextvar holds this (mutable) list, so threads and tasks started with a copy of the
    request's context add to the same list."""

    __slots__ = ("closed", "token")

    token: Token[ScopeToken | None] | None
    closed: bool


_SCOPE: ContextVar[ScopeToken | None] = ContextVar("fluxrate_web_scope", default=None)


class _Stats:
    __slots__ = ("dropped_outside_request",)

    def __init__(self) -> None:
        self.dropped_outside_request = 0


stats = _Stats()
"""Process-wide counters: ``stats.dropped_outside_request`` counts ``record()`` calls made
outside a request (or after its response was finished)."""


def record(
    meter: str,
    quantity: int | float | Decimal | str = 1,
    *,
    metadata: Mapping[str, Any] | None = None,
    customer: str | None = None,
) -> None:
    """Add usage to the current request: billed with the request's customer (or ``customer``)
    after the response, under the same ``bill_on`` rules as the route.

    Works in sync and async views, and in threads or tasks started with a copy of the request's
    context (``contextvars.copy_context()``, ``asyncio.create_task``, ``asyncio.to_thread``).
    Outside a request it logs a warning and drops the usage; it never raises.
    """
    try:
        scope = _SCOPE.get()
        if scope is None or scope.closed:
            stats.dropped_outside_request += 1
            warn_limited(
                "record-outside-request",
                "fluxrate_web.record(%r) called outside a metered request (or after its "
                "response was finished); the usage is dropped",
                meter,
            )
            return
        scope.append((meter, quantity, metadata, customer))
    except Exception:  # pragma: no cover - record() must never raise into a view
        stats.dropped_outside_request += 1


# --------------------------------------------------------------------------------------------


class _NullClient:
    """The client of a disabled configuration: accepts nothing, sends nothing."""

    def track(self, *args: Any, **kwargs: Any) -> None:
        return None

    def enqueue(self, event: object) -> bool:
        return False

    def note_dropped(self, reason: str) -> None:
        return None

    def start(self) -> None:
        return None

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        return None


def _trusted_track(client: object) -> Callable[..., bool] | None:
    """What ``Metering`` may call instead of ``client.track()`` for a prepared route (see
    ``RoutePlan.prepared``): ``FluxrateClient._track_trusted``, or, for the test helper
    ``fluxrate_web.testing.CapturingClient``, the same build followed by its ``enqueue()``
    (what its ``track()`` does). Only for those exact classes, or a ``FluxrateClient``
    subclass that overrides neither ``track`` nor ``_track_trusted``: a client that
    instruments ``track()`` keeps seeing every call."""
    from fluxrate_web.core.client import FluxrateClient

    if isinstance(client, FluxrateClient):
        kind = type(client)
        if (
            kind.track is FluxrateClient.track
            and kind._track_trusted is FluxrateClient._track_trusted
        ):
            return client._track_trusted
        return None
    testing = sys.modules.get("fluxrate_web.testing")  # loaded if the client is one of its
    if testing is not None and type(client) is getattr(testing, "CapturingClient", None):
        return _capturing_track(client)
    return None


def _capturing_track(client: Any) -> Callable[..., bool]:
    """``CapturingClient.track()`` for a prepared route: the same event, the same drop."""
    enqueue = client.enqueue
    note_dropped = client.note_dropped

    def track(
        meter_token: str,
        customer: str,
        quantity: int | float | Decimal,
        metadata: Mapping[str, Any] | None,
        metadata_json: str | None,
    ) -> bool:
        reseed_keys_if_forked(_getpid())
        try:
            event = trusted_event(meter_token, customer, quantity, metadata, metadata_json)
        except Exception as exc:
            note_dropped(f"invalid usage: {exc}")
            return False
        return bool(enqueue(event))

    return track


def derive_idempotency_key(request_key: str, meter_token: str, customer: str, index: int) -> str:
    """The event key for a request that carried an idempotency header: the same request
    retried by its client gives the same key, so Fluxrate bills it once."""
    digest = hashlib.sha256(
        f"{request_key}\x1f{meter_token}\x1f{customer}\x1f{index}".encode("utf-8", "replace")
    ).hexdigest()
    return f"req_{digest}"


_FAILED = object()  # an async quantity source that raised (already counted)
_ASK: Any = object()  # finish(request_key=...) not given: core reads the idempotency header


class Metering:
    """Rules + a client: the one object an adapter holds.

    ``Metering(config, client=...)`` or ``Metering.from_config(path_or_config, ...)``. Without a
    ``client``, a ``FluxrateClient(**config.client_kwargs())`` is built (nothing is sent until
    the first event). Any object with ``track``, ``enqueue``, ``note_dropped``, ``flush`` and
    ``close`` works, e.g. ``fluxrate_web.testing.CapturingClient``.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        client: UsageClient | None = None,
        rules: RequestRules | None = None,
    ) -> None:
        if config is None:
            config = rules.config if rules is not None else Config()
        self.config = config
        self.rules = rules if rules is not None else RequestRules(config)
        if client is None:
            client = self._default_client(config)
        self.client = client
        self.enabled = config.enabled
        header = config.idempotency_header
        self._idempotency_header = header.lower() if header else None
        self.idempotency_header: str | None = self._idempotency_header
        """The lower-cased name of the request header carrying the client's idempotency key
        (``None``: keys are never derived from the request). See ``finish(request_key=)``."""
        self._cache: dict[tuple[Any, ...], RoutePlan] = {}
        self._record_specs: dict[str, MeterSpec | None] = {}
        self.errors = 0
        _known_meters.update({name: spec.token for name, spec in config.meters.items()})

    @property
    def client(self) -> UsageClient:
        """The client events go to (``FluxrateClient``, ``CapturingClient``, ...)."""
        return self._client

    @client.setter
    def client(self, client: UsageClient) -> None:
        self._client = client
        self._trusted = _trusted_track(client)

    @staticmethod
    def _default_client(config: Config) -> UsageClient:
        if not config.enabled:
            return _NullClient()
        from fluxrate_web.core.client import FluxrateClient

        client: UsageClient = FluxrateClient(**config.client_kwargs())
        return client

    @classmethod
    def from_config(
        cls,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        client: UsageClient | None = None,
        overrides: Mapping[str, Any] | None = None,
        overrides_name: str = "overrides",
    ) -> Metering:
        """Load (unless given a :class:`Config`) and compile; raises :class:`ConfigError`."""
        if not isinstance(config, Config):
            config = load_config(config, overrides=overrides, overrides_name=overrides_name)
        elif overrides:
            raise ConfigError("from_config(): give overrides to load_config(), not with a Config")
        return cls(config, client=client)

    # -- lifecycle, delegated to the client

    def start(self) -> None:
        start = getattr(self.client, "start", None)
        if start is not None:
            start()

    def flush(self, timeout: float | None = None) -> bool:
        return self.client.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        self.client.close(timeout)

    def __enter__(self) -> Metering:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per request

    def route(
        self,
        template: str | None,
        method: str,
        endpoint: object | None = None,
        *,
        handler: object | None = None,
        name: str | None = None,
        defaults: tuple[object, ...] = (),
    ) -> RoutePlan:
        """The plan for a route, cached per ``(template, method, endpoint, handler, name)``
        (and ``defaults``).

        ``defaults`` are group-level ``@meter`` markers (e.g. a Flask blueprint's), outermost
        first: they apply like ``@meter`` on the view, except a meter the view bills itself.

        Pass ``handler`` as the function found on the class (``type(view).get``), not a bound
        method: bound methods work but are normalised on every call. Raises
        :class:`ConfigError` the first time it meets a ``@meter`` naming an unknown meter.
        """
        key = (template, method, endpoint, handler, name, defaults)
        try:
            return self._cache[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable endpoint: plan without caching
            return self.rules.plan(
                template, method, endpoint, handler=handler, name=name, defaults=defaults
            )
        return self._route_miss(template, method, endpoint, handler, name, defaults)

    def _route_miss(
        self,
        template: str | None,
        method: str,
        endpoint: object | None,
        handler: object | None,
        name: str | None,
        defaults: tuple[object, ...],
    ) -> RoutePlan:
        if handler is not None and getattr(handler, "__self__", None) is not None:
            func = getattr(handler, "__func__", None)
            if func is not None:
                # A bound method is new on every request: cache under its function only.
                handler = func
                plan = self._cache.get((template, method, endpoint, handler, name, defaults))
                if plan is not None:
                    return plan
        plan = self.rules.plan(
            template, method, endpoint, handler=handler, name=name, defaults=defaults
        )
        if len(self._cache) < 65536:
            self._cache[(template, method, endpoint, handler, name, defaults)] = plan
        return plan

    @staticmethod
    def enter_scope(scope: ScopeToken) -> Token[ScopeToken | None]:
        """Make an open scope current again (e.g. around each chunk of a streamed body that is
        iterated after the view returned), so ``record()`` adds to it. O(1). Pair with
        :meth:`exit_scope`."""
        return _SCOPE.set(scope)

    @staticmethod
    def exit_scope(token: Token[ScopeToken | None]) -> None:
        """Undo :meth:`enter_scope`. Never raises."""
        try:
            _SCOPE.reset(token)
        except (ValueError, RuntimeError):
            _SCOPE.set(None)

    def validate_views(self, views: Iterable[object]) -> None:
        """Check the ``@meter`` rules of ``views`` now (at startup) instead of on their first
        request. Raises :class:`ConfigError` naming the first function with an unknown meter."""
        for view in views:
            self.rules.decorated_meters(view)

    def open_scope(self) -> ScopeToken:
        """Open the request's ``record()`` scope (before the app runs)."""
        scope = ScopeToken()
        scope.closed = False
        scope.token = _SCOPE.set(scope)
        return scope

    @staticmethod
    def _close(scope: ScopeToken) -> bool:
        """Close the scope; False when it was already closed (finish called twice)."""
        if scope.closed:
            return False
        scope.closed = True
        token = scope.token
        if token is not None:
            scope.token = None
            try:
                _SCOPE.reset(token)
            except (ValueError, RuntimeError):  # finished from another context
                if _SCOPE.get() is scope:
                    _SCOPE.set(None)
        return True

    def finish(
        self,
        plan: RoutePlan,
        view: RequestView,
        scope: ScopeToken,
        *,
        status: int | None,
        request_bytes: int = 0,
        response_bytes: int = 0,
        response_headers: HeaderSource = None,
        duration_ms: float = 0.0,
        completed: bool = True,
        error: bool = False,
        customer: str | None = None,
        request_key: str | None = _ASK,
    ) -> int:
        """Close the scope, decide, and enqueue the request's events. Returns how many were
        enqueued. Never raises: problems are logged (rate-limited) and counted.

        ``completed`` is false when the client went away before the response was sent in full;
        ``error`` is true when the app raised. ``customer`` skips the resolvers: a string is the
        customer, ``""`` means "already resolved: nobody" (the events are dropped and counted).
        Async resolvers or quantity sources are skipped here (and counted): call
        :meth:`finish_async` when ``plan.needs_async``.

        ``request_key`` is the value of the request's :attr:`idempotency_header` when the
        adapter has already read it (``None`` or ``""``: the request has none); not given,
        core asks ``view.header()`` for it.
        """
        try:
            # Close the scope (inlined: this runs on every request).
            if scope.closed:
                warn_limited(
                    "finish-twice", "Metering.finish() called twice for one request; ignored"
                )
                return 0
            scope.closed = True
            token = scope.token
            if token is not None:
                scope.token = None
                try:
                    _SCOPE.reset(token)
                except (ValueError, RuntimeError):  # finished from another context
                    if _SCOPE.get() is scope:
                        _SCOPE.set(None)
            if not scope:
                meters = plan.meters
                if not meters or not self.enabled:
                    return 0
                if plan.fast:
                    # Constant quantities, static metadata, one customer and bill_on for all.
                    if (
                        status not in plan.billable
                        or (error and not plan.bill_on_exception)
                        or (not completed and not plan.bill_on_disconnect)
                    ):
                        return 0
                    who = customer if customer is not None else plan.customer(view)
                    if not who:
                        self._missing(plan, len(meters))
                        return 0
                    if request_key is _ASK:
                        header = self._idempotency_header
                        request_key = view.header(header) if header is not None else None
                    if not request_key:
                        sent = 0
                        trusted = self._trusted
                        prepared = plan.prepared
                        if trusted is not None and prepared is not None:
                            # validated when the route was planned: build, don't re-check
                            for meter_token, quantity, metadata, encoded in prepared:
                                if trusted(meter_token, who, quantity, metadata, encoded):
                                    sent += 1
                            return sent
                        track = self._client.track
                        for meter in meters:
                            if track(meter.token, who, meter.constant, metadata=meter.metadata):  # type: ignore[arg-type]
                                sent += 1
                        return sent
                    customer = who
            elif not self.enabled:
                return 0
            return self._bill(
                plan,
                view,
                scope,
                status,
                request_bytes,
                response_bytes,
                response_headers,
                duration_ms,
                completed,
                error,
                customer,
                None,
                request_key,
            )
        except Exception as exc:
            self._internal_error(exc)
            return 0

    async def finish_async(
        self,
        plan: RoutePlan,
        view: RequestView,
        scope: ScopeToken,
        *,
        status: int | None,
        request_bytes: int = 0,
        response_bytes: int = 0,
        response_headers: HeaderSource = None,
        duration_ms: float = 0.0,
        completed: bool = True,
        error: bool = False,
        customer: str | None = None,
        request_key: str | None = _ASK,
    ) -> int:
        """:meth:`finish` for async code: awaits async resolvers and quantity sources."""
        try:
            if not plan.needs_async:
                return self.finish(
                    plan,
                    view,
                    scope,
                    status=status,
                    request_bytes=request_bytes,
                    response_bytes=response_bytes,
                    response_headers=response_headers,
                    duration_ms=duration_ms,
                    completed=completed,
                    error=error,
                    customer=customer,
                    request_key=request_key,
                )
            if not self._close(scope):
                warn_limited(
                    "finish-twice", "Metering.finish() called twice for one request; ignored"
                )
                return 0
            if (not plan.meters and not scope) or not self.enabled:
                return 0
            info = ResponseInfo(
                view,
                status,
                response_headers,
                request_bytes,
                response_bytes,
                duration_ms,
                completed,
                error,
            )
            resolved: dict[int, Any] = {}
            if customer is None and plan.resolver.is_async:
                resolved[id(plan.resolver)] = await plan.resolver.resolve_async(view)
            for meter in plan.meters:
                if meter.resolver is not None and meter.resolver.is_async:
                    resolved[id(meter.resolver)] = await meter.resolver.resolve_async(view)
                if meter.quantity.is_async and meter.quantity.source is not None:
                    try:
                        resolved[id(meter)] = await meter.quantity.source(info)  # type: ignore[misc]
                    except Exception as exc:
                        self._drop(
                            f"meter {meter.name!r}: quantity source "
                            f"{meter.quantity.description} raised {type(exc).__name__}: {exc}"
                        )
                        resolved[id(meter)] = _FAILED
            return self._bill(
                plan,
                view,
                scope,
                status,
                request_bytes,
                response_bytes,
                response_headers,
                duration_ms,
                completed,
                error,
                customer,
                resolved,
                request_key,
                info,
            )
        except Exception as exc:
            self._internal_error(exc)
            return 0

    # -- internals

    def _internal_error(self, exc: BaseException) -> None:
        self.errors += 1
        try:
            log_limited(
                logging.ERROR,
                f"metering-error:{type(exc).__name__}",
                "fluxrate_web: metering a request failed (the request itself was not affected): "
                "%s: %s",
                type(exc).__name__,
                exc,
                log=_log,
            )
        except Exception:  # pragma: no cover
            pass

    def _drop(self, reason: str) -> None:
        try:
            self.client.note_dropped(reason)
        except Exception as exc:  # pragma: no cover - a broken client
            self._internal_error(exc)

    def _customer(
        self,
        resolver_plan: RoutePlan | PlannedMeter,
        view: RequestView,
        resolved: dict[int, Any] | None,
    ) -> str | None:
        resolver = resolver_plan.resolver
        assert resolver is not None
        if resolved is not None and id(resolver) in resolved:
            value = resolved[id(resolver)]
            return value if isinstance(value, str) else None
        return resolver.resolve(view)  # async specs are skipped here (see finish_async)

    def _quantity(
        self,
        meter: PlannedMeter,
        info: ResponseInfo,
        resolved: dict[int, Any] | None,
    ) -> int | float | Decimal | bool | None:
        """The meter's quantity, ``None`` when unknown (dropped), ``False`` for zero."""
        if resolved is not None and id(meter) in resolved:
            raw = resolved[id(meter)]
            if raw is _FAILED:
                return None  # already counted
        elif meter.quantity.is_async:
            self._drop(
                f"meter {meter.name!r}: async quantity source {meter.quantity.description} "
                "needs Metering.finish_async()"
            )
            return None
        else:
            assert meter.quantity.source is not None
            try:
                raw = meter.quantity.source(info)
            except Exception as exc:
                self._drop(
                    f"meter {meter.name!r}: quantity source {meter.quantity.description} raised "
                    f"{type(exc).__name__}: {exc}"
                )
                return None
        if raw is None:
            self._drop(f"meter {meter.name!r}: no quantity from {meter.quantity.description}")
            return None
        number = parse_number(raw)
        if number is None:
            self._drop(
                f"meter {meter.name!r}: {meter.quantity.description} gave {raw!r}, not a number"
            )
            return None
        if number == 0:
            return False
        return number

    def _metadata(self, meter: PlannedMeter, info: ResponseInfo | None) -> Mapping[str, Any] | None:
        if meter.metadata_fn is None:
            return meter.metadata
        assert info is not None
        try:
            value = meter.metadata_fn(info.view.native, info)
        except Exception as exc:
            self._drop(f"meter {meter.name!r}: metadata callable raised {type(exc).__name__}")
            return None
        if value is None or isinstance(value, Mapping):
            return value
        self._drop(f"meter {meter.name!r}: metadata callable returned {type(value).__name__}")
        return None

    def _record_spec(self, name: object) -> MeterSpec | None:
        if not isinstance(name, str):
            return None
        try:
            return self._record_specs[name]
        except KeyError:
            spec = self.config.meter(name)
            if len(self._record_specs) < 4096:
                self._record_specs[name] = spec
            return spec

    def _bill(
        self,
        plan: RoutePlan,
        view: RequestView,
        records: ScopeToken,
        status: int | None,
        request_bytes: int,
        response_bytes: int,
        response_headers: HeaderSource,
        duration_ms: float,
        completed: bool,
        error: bool,
        customer: str | None,
        resolved: dict[int, Any] | None,
        request_key: str | None,
        info: ResponseInfo | None = None,
    ) -> int:
        plan_billable = plan.is_billable(status, completed, error)
        if plan.uniform and not plan_billable:
            return 0  # the common "not billed" case: a 4xx/5xx under bill_on: 2xx
        request_customer = (
            self._customer(plan, view, resolved) if customer is None else (customer or None)
        )
        if info is None and (plan.needs_info or records):
            info = ResponseInfo(
                view,
                status,
                response_headers,
                request_bytes,
                response_bytes,
                duration_ms,
                completed,
                error,
            )
        if request_key is _ASK:
            header = self._idempotency_header
            request_key = view.header(header) if header is not None else None
        request_key = request_key or None
        counts: dict[tuple[str, str], int] | None = {} if request_key is not None else None
        track = self.client.track
        sent = 0
        missing = 0
        for meter in plan.meters:
            if meter.billable is None:
                if not plan_billable:
                    continue
            elif meter.billable is not None and not (
                status in meter.billable
                and (completed or plan.bill_on_disconnect)
                and (not error or plan.bill_on_exception)
            ):
                continue
            if meter.resolver is None or customer is not None:
                who = request_customer  # an explicit customer="" means "resolved: nobody"
            else:
                who = self._customer(meter, view, resolved)
            if who is None:
                missing += 1
                continue
            quantity = meter.constant
            if quantity is None:
                assert info is not None
                found = self._quantity(meter, info, resolved)
                if found is None or found is False or found is True:
                    continue
                quantity = found
            metadata = meter.metadata if meter.metadata_fn is None else self._metadata(meter, info)
            key = None
            if counts is not None and request_key is not None:
                index = counts.get((meter.token, who), 0)
                counts[(meter.token, who)] = index + 1
                key = derive_idempotency_key(request_key, meter.token, who, index)
            if track(meter.token, who, quantity, idempotency_key=key, metadata=metadata):
                sent += 1
        if records and plan_billable:
            sent += self._bill_records(records, request_customer, request_key, counts)
        if missing:
            self._missing(plan, missing)
        return sent

    def _bill_records(
        self,
        records: ScopeToken,
        request_customer: str | None,
        request_key: str | None,
        counts: dict[tuple[str, str], int] | None,
    ) -> int:
        sent = 0
        missing = 0
        track = self.client.track
        for name, raw_quantity, metadata, customer in records:
            spec = self._record_spec(name)
            if spec is None:
                self._drop(
                    f"record({name!r}): {self.config.unknown_meter_message(str(name))}"
                    if isinstance(name, str)
                    else f"record(): the meter must be a string, got {type(name).__name__}"
                )
                continue
            who = customer if customer is not None else request_customer
            if who is None:
                missing += 1
                continue
            try:
                quantity = parse_number(raw_quantity)
            except Exception:  # a user's object whose __float__ or __index__ raises
                quantity = None
            if quantity is None:
                self._drop(f"record({name!r}): quantity {_safe_repr(raw_quantity)} is not a number")
                continue
            if quantity == 0:
                continue
            if metadata is not None and not isinstance(metadata, Mapping):
                self._drop(f"record({name!r}): metadata must be a mapping")
                continue
            key = None
            if counts is not None and request_key is not None:
                index = counts.get((spec.token, who), 0)
                counts[(spec.token, who)] = index + 1
                key = derive_idempotency_key(request_key, spec.token, who, index)
            if track(spec.token, who, quantity, idempotency_key=key, metadata=metadata):
                sent += 1
        if missing:
            self._drop(f"no customer for {missing} recorded event(s)")
        return sent

    def _missing(self, plan: RoutePlan, count: int) -> None:
        resolver = plan.resolver.description
        for _ in range(count):
            self._drop(
                f"no customer for {plan.source} (resolver: {resolver}); see 'customer:' in "
                "docs/configuration.md"
            )


# name -> token of every meter any Metering in this process knows (for fluxrate_web.testing)
_known_meters: dict[str, str] = {}


def known_meter_token(name: str) -> str | None:
    """The token of a meter name known to any :class:`Metering` of this process."""
    return _known_meters.get(name)


def _safe_repr(value: object) -> str:
    """``repr(value)`` for a log line, bounded, and never raising (a user's ``__repr__`` may)."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__} whose repr() raised>"
    return text if len(text) <= 80 else text[:77] + "..."
