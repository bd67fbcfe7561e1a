"""Flask extension: meter a Flask app's requests to Fluxrate.

.. code-block:: python

    from flask import Flask
    from fluxrate_web.flask import Fluxrate, meter

    fluxrate = Fluxrate()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["FLUXRATE_CONFIG"] = "fluxrate.yaml"
        fluxrate.init_app(app)
        return app

This module only translates Flask into calls of the seam
(:class:`~fluxrate_web.core.metering.Metering`): rules, customer resolvers, quantities,
configuration and delivery all live in ``fluxrate_web.core``.

When an event is enqueued:

* a complete response (not ``response.is_streamed``): once Flask has finished it, that is after
  the view, the ``after_request`` handlers and the ``request_finished`` signal, with its final
  status, still inside the request context (a ``callable:`` resolver can read ``g``). It does not
  wait for the WSGI server, or Flask's test client, to close the response.
* a streamed response (a generator): when its body has been fully iterated or closed, whichever
  comes first, exactly once, with the bytes sent. A body that raises is an error (not billed
  unless ``bill_on_exception``); one closed early is a disconnect (``bill_on_disconnect``).

How: :meth:`Fluxrate.init_app` wraps the app's ``full_dispatch_request`` (everything Flask does
for a request, from ``before_request`` to ``request_finished``) and ``preprocess_request`` (the
``before_request`` handlers, for ``on_missing_customer: reject``) on that app object. This costs
one Python call each per request, where ``before_request`` + ``request_finished`` handlers cost
about 5 µs, and it sees exceptions that escape the view even with ``PROPAGATE_EXCEPTIONS``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    has_app_context,
    has_request_context,
    request,
)
from flask.cli import AppGroup, ScriptInfo
from flask.views import MethodView, View
from werkzeug.wsgi import ClosingIterator

from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.metering import Metering, RoutePlan, ScopeToken, record
from fluxrate_web.core.rules import meter

if TYPE_CHECKING:
    import os

    from werkzeug.routing import Rule

__all__ = ["FlaskRequestView", "Fluxrate", "fluxrate_cli", "meter", "record"]

logger = logging.getLogger("fluxrate_web.flask")

_F = TypeVar("_F")
_PREFIX: Final = "FLUXRATE_"
_KEY: Final = "fluxrate"
_CUSTOMER_KEY: Final = "fluxrate_web.customer"  # environ: the customer resolved for reject mode
# Werkzeug sends no body for these statuses (nor for HEAD): a streamed body is never iterated.
_NO_BODY_STATUS: Final = frozenset({204, 304})
_UNSET: Final[Any] = object()
_SMALL_BODY: Final = 64 * 1024

# Header name (core passes it lower-cased) -> WSGI environ key.
_ENVIRON_KEYS: dict[str, str] = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


def _environ_key(name: str) -> str:
    key = _ENVIRON_KEYS.get(name)
    if key is None:
        lowered = name.lower()
        key = _ENVIRON_KEYS.get(lowered) or "HTTP_" + lowered.upper().replace("-", "_")
        if len(_ENVIRON_KEYS) < 1024:
            _ENVIRON_KEYS[name] = key
    return key


# --------------------------------------------------------------------------------------------
# the request as core sees it


class FlaskRequestView:
    """One Flask request for core (the seam's ``RequestView``).

    It holds the request and its ``g`` object themselves, not the context-local proxies, so it
    still answers after Flask popped the request context (while a streamed body is sent).

    * ``header(name)``: a request header, case-insensitive.
    * ``query(name)``: a query-string parameter.
    * ``state(name)``: ``g.<name>``, else the URL parameter ``<name>`` (``/orgs/<org_id>/...``).
    * ``user()``: Flask-Login's ``current_user`` when the app has a login manager, otherwise
      ``g.user`` (the Flask tutorial's convention); ``None`` when anonymous.
    """

    __slots__ = ("_app", "_environ", "_g", "_user", "native")

    def __init__(self, native: Any, app: Flask, *, bind: bool = False) -> None:
        self.native: Any = native
        self._environ: Mapping[str, Any] = native.environ
        self._app = app
        self._user: object | None = _UNSET
        # flask.g of the request: fetched when first needed, or now (``bind``) for a view used
        # after the request context is gone
        self._g: object | None = self._current_g() if bind else None

    @staticmethod
    def _current_g() -> object | None:
        if not has_app_context():
            return None
        return g._get_current_object()  # type: ignore[no-any-return]

    def _globals(self) -> object | None:
        if self._g is None:
            self._g = self._current_g()
        return self._g

    def header(self, name: str) -> str | None:
        value = self._environ.get(_ENVIRON_KEYS.get(name) or _environ_key(name))
        return value if isinstance(value, str) else None

    def query(self, name: str) -> str | None:
        try:
            value = self.native.args.get(name)
        except Exception:  # a malformed query string must not break metering
            return None
        return value if isinstance(value, str) else None

    def state(self, name: str) -> object | None:
        value = getattr(self._globals(), name, None)
        if value is None:
            view_args = getattr(self.native, "view_args", None)
            if view_args:
                value = view_args.get(name)
        return value

    def user(self) -> object | None:
        if self._user is _UNSET:
            self._user = self._load_user()
        return self._user

    def _load_user(self) -> object | None:
        who: object | None
        if getattr(self._app, "login_manager", None) is not None:
            who = getattr(self._globals(), "_login_user", None)  # what Flask-Login loaded
            login = sys.modules.get("flask_login")
            if who is None and login is not None and has_request_context():
                try:
                    who = login.current_user._get_current_object()
                except Exception:
                    logger.debug("Flask-Login's current_user failed", exc_info=True)
                    who = None
        else:
            who = getattr(self._globals(), "user", None)
        if who is None or not _is_authenticated(who):
            return None
        return who

    def __repr__(self) -> str:
        return f"<FlaskRequestView {self.native.method} {self.native.path}>"


def _is_authenticated(user: object) -> bool:
    flag = getattr(user, "is_authenticated", True)
    if callable(flag):
        try:
            flag = flag()
        except Exception:
            return False
    return bool(flag)


# --------------------------------------------------------------------------------------------
# record() scopes of streamed bodies


def _detach_scope(scope: ScopeToken) -> None:
    """Take an open scope out of the current context without closing it: a streamed body runs
    after ``full_dispatch_request`` returned, and ``record()`` outside it must not land there.
    The body re-enters the scope around each chunk (``Metering.enter_scope``)."""
    token = scope.token
    if token is not None:
        scope.token = None
        Metering.exit_scope(token)


# --------------------------------------------------------------------------------------------
# streamed bodies


class _PendingStream:
    """Everything needed to bill a streamed response once its body is done."""

    __slots__ = (
        "app",
        "customer",
        "headers",
        "metering",
        "plan",
        "request_bytes",
        "scope",
        "started",
        "status",
        "view",
    )

    def __init__(
        self,
        app: Flask,
        metering: Metering,
        plan: RoutePlan,
        view: FlaskRequestView,
        scope: ScopeToken,
        *,
        status: int,
        headers: Callable[[str], str | None],
        request_bytes: int,
        started: float,
        customer: str | None,
    ) -> None:
        self.app = app
        self.metering = metering
        self.plan = plan
        self.view = view
        self.scope = scope
        self.status = status
        self.headers = headers
        self.request_bytes = request_bytes
        self.started = started
        self.customer = customer

    def finish(self, response_bytes: int, *, completed: bool, error: bool) -> None:
        kwargs: dict[str, Any] = {
            "status": self.status,
            "request_bytes": self.request_bytes,
            "response_bytes": response_bytes,
            "response_headers": self.headers,
            "duration_ms": (time.perf_counter() - self.started) * 1000.0,
            "completed": completed,
            "error": error,
            "customer": self.customer,
        }
        _call_finish(self.app, self.metering, self.plan, self.view, self.scope, kwargs)


class _MeteredBody:
    """A streamed response body that bills once: exhausted, closed, or failed.

    ``record()`` calls made while the body is produced land in the request's scope. ``str``
    chunks are encoded as UTF-8, as Werkzeug does.
    """

    __slots__ = ("_bytes", "_done", "_inner", "_iterator", "_pending")

    def __init__(self, inner: Iterable[bytes | str], pending: _PendingStream) -> None:
        self._inner = inner
        self._iterator: Iterator[bytes | str] | None = None
        self._pending = pending
        self._bytes = 0
        self._done = False

    def __iter__(self) -> _MeteredBody:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        token = Metering.enter_scope(self._pending.scope)
        try:
            if self._iterator is None:
                self._iterator = iter(self._inner)
            chunk = next(self._iterator)
        except StopIteration:
            Metering.exit_scope(token)
            self._finish(completed=True, error=False)
            raise
        except BaseException:
            Metering.exit_scope(token)
            self._finish(completed=False, error=True)
            raise
        Metering.exit_scope(token)
        if isinstance(chunk, str):
            chunk = chunk.encode()
        self._bytes += len(chunk)
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                token = Metering.enter_scope(self._pending.scope)
                try:
                    close()
                finally:
                    Metering.exit_scope(token)
        finally:
            self._finish(completed=False, error=False)  # a no-op after exhaustion

    def _finish(self, *, completed: bool, error: bool) -> None:
        if self._done:
            return
        self._done = True
        self._pending.finish(self._bytes, completed=completed, error=error)


# --------------------------------------------------------------------------------------------
# helpers


def _call_finish(
    app: Flask,
    metering: Metering,
    plan: RoutePlan,
    view: FlaskRequestView,
    scope: ScopeToken,
    kwargs: dict[str, Any],
) -> None:
    if plan.needs_async or (scope and plan.resolver.is_async):
        try:
            app.ensure_sync(metering.finish_async)(plan, view, scope, **kwargs)
        except Exception:  # asgiref missing (pip install "flask[async]")
            logger.exception("fluxrate: an async resolver or quantity source failed to run")
        return
    metering.finish(plan, view, scope, **kwargs)


def _known_customer(plan: RoutePlan, environ: Mapping[str, Any]) -> str | None:
    """The customer the reject check already resolved, when it is every meter's customer."""
    return environ.get(_CUSTOMER_KEY) if plan.uniform else None


def _uses_user(plan: RoutePlan) -> bool:
    resolvers = [plan.resolver, *(m.resolver for m in plan.meters if m.resolver is not None)]
    return any(
        isinstance(spec, str) and spec.startswith("user:")
        for resolver in resolvers
        for spec in resolver.specs
    )


def _request_bytes(environ: Mapping[str, Any]) -> int:
    length = environ.get("CONTENT_LENGTH")
    if not length:
        return 0
    try:
        value = int(length)
    except (TypeError, ValueError):
        return 0
    return value if value > 0 else 0


def _response_bytes(response: Response) -> int:
    length = response.headers.get("Content-Length")
    if length is not None:
        try:
            return int(length)
        except ValueError:
            pass
    body = response.response
    if isinstance(body, list | tuple):
        return sum(len(chunk) for chunk in body)
    return 0


def _buffered_wsgi_body(response: Response) -> bool:
    """Make a small body that came from a WSGI callable a sequence; whether it did.

    Flask turns what a view returns as a WSGI callable, ``abort(404)`` and every other
    ``HTTPException`` included, into a response whose body is an iterator (``is_streamed``)
    although it is complete and tiny. Such a body (a ``ClosingIterator`` with a
    ``Content-Length`` of at most 64 KiB) is read into memory here, as Werkzeug would for
    ``response.data``, so it is billed like any complete response.
    """
    if not isinstance(response.response, ClosingIterator):
        return False
    length = response.content_length
    if length is None or length > _SMALL_BODY:
        return False
    response.make_sequence()
    return True


def _handler_of(endpoint: object, method: str) -> object | None:
    """The function of a class-based view that handles ``method`` (``ItemAPI.get``)."""
    view_class = getattr(endpoint, "view_class", None)
    if not isinstance(view_class, type):
        return None
    if issubclass(view_class, MethodView):
        handler = getattr(view_class, method.lower(), None)
        if handler is None and method == "HEAD":
            handler = getattr(view_class, "get", None)
        return handler
    if issubclass(view_class, View):
        return view_class.dispatch_request
    return None


class _Route:
    """What one (url rule, method) needs at request time, computed once."""

    __slots__ = ("plan", "rule", "skip")

    def __init__(self, rule: Rule | None, plan: RoutePlan | None) -> None:
        self.rule = rule
        self.plan = plan
        self.skip = plan is None  # nothing at all to do: no scope, no finish


# --------------------------------------------------------------------------------------------
# per-app state


class FluxrateState:
    """What :meth:`Fluxrate.init_app` stores in ``app.extensions["fluxrate"]``.

    ``metering`` is the app's :class:`~fluxrate_web.core.metering.Metering` (its ``client`` and
    ``config``); ``extension`` the :class:`Fluxrate` object."""

    def __init__(self, extension: Fluxrate, app: Flask, metering: Metering) -> None:
        self.extension = extension
        self.app = app
        self.metering = metering
        self._routes: dict[str, dict[int, _Route]] = {}
        self._unmatched: dict[str, _Route] = {}

    # -- routing

    def route(self, rule: Rule | None, method: str) -> _Route:
        """The cached plan of ``rule`` (``None``: no route matched) for ``method``."""
        if rule is None:
            entry = self._unmatched.get(method)
            if entry is None:
                entry = self._unmatched[method] = self._compute(None, method)
            return entry
        by_rule = self._routes.get(method)
        if by_rule is None:
            by_rule = self._routes[method] = {}
        entry = by_rule.get(id(rule))
        if entry is None or entry.rule is not rule:
            entry = by_rule[id(rule)] = self._compute(rule, method)
        return entry

    def plan(self, rule: Rule | None, method: str) -> RoutePlan | None:
        """The plan for ``rule`` and ``method`` (``None``: Flask answers the request itself, as
        an automatic ``OPTIONS``). Raises ``ConfigError`` for a bad ``@meter``."""
        metering = self.metering
        if rule is None:
            return metering.route(None, method)
        if method == "OPTIONS" and getattr(rule, "provide_automatic_options", False):
            return None  # Flask answers it without running a view (CORS preflights)
        name = rule.endpoint
        endpoint = self.app.view_functions.get(name)
        return metering.route(
            rule.rule,
            method,
            endpoint,
            handler=_handler_of(endpoint, method),
            name=name,
            defaults=self.extension._blueprint_markers(self.app, name),
        )

    def _compute(self, rule: Rule | None, method: str) -> _Route:
        try:
            return _Route(rule, self.plan(rule, method))
        except ConfigError as exc:
            # Never fail a request over metering: log once per route; `flask fluxrate check`
            # reports the same error.
            logger.error("fluxrate: %s; this route is not metered", exc)
            return _Route(rule, None)

    # -- request hooks

    def install(self, app: Flask) -> None:
        dispatch = app.full_dispatch_request
        preprocess = app.preprocess_request
        metering = self.metering
        route = self.route
        finish = self._finish
        fail = self._finish_error

        def full_dispatch_request() -> Response:
            req: Any = request._get_current_object()  # type: ignore[attr-defined]
            entry = route(req.url_rule, req.method)
            if entry.skip:
                return dispatch()
            started = time.perf_counter()
            scope = metering.open_scope()
            try:
                response = dispatch()
            except BaseException:
                fail(req, entry, scope, started)
                raise
            finish(req, entry, scope, started, response)
            return response

        def preprocess_request() -> Any:
            rv = preprocess()
            if rv is None:
                req: Any = request._get_current_object()  # type: ignore[attr-defined]
                plan = route(req.url_rule, req.method).plan
                if plan is not None and plan.reject_missing_customer:
                    return self._reject(req, plan)
            return rv

        app.full_dispatch_request = full_dispatch_request  # type: ignore[method-assign]
        if getattr(metering.rules, "reject", True):  # on_missing_customer: reject
            app.preprocess_request = preprocess_request  # type: ignore[method-assign]

    def _customer(self, plan: RoutePlan, view: FlaskRequestView) -> str | None:
        try:
            if plan.resolver.is_async:
                customer: str | None = self.app.ensure_sync(plan.customer_async)(view)
                return customer
            return plan.customer(view)
        except Exception:
            logger.exception("fluxrate: the customer resolver raised")
            return None

    def _reject(self, req: Any, plan: RoutePlan) -> Any:
        customer = self._customer(plan, FlaskRequestView(req, self.app))
        if customer is not None:
            req.environ[_CUSTOMER_KEY] = customer
            return None
        reply = self.app.json.response(
            {"detail": "No customer: this request cannot be attributed to a Fluxrate customer."}
        )
        reply.status_code = 401
        return reply

    def _finish(
        self, req: Any, entry: _Route, scope: ScopeToken, started: float, response: Response
    ) -> None:
        try:
            plan = entry.plan
            assert plan is not None
            if (
                response.is_streamed
                and (plan.meters or not response.direct_passthrough)
                and not _buffered_wsgi_body(response)
            ):
                # (a file sent by send_file() on a route without meters runs no code of the app
                # while it is sent: it is left alone, so servers can still use sendfile())
                status = response.status_code
                if req.method != "HEAD" and status >= 200 and status not in _NO_BODY_STATUS:
                    self._defer(req, plan, scope, started, response)
                    return
            environ = req.environ
            view = FlaskRequestView(req, self.app)
            if plan.needs_async or (scope and plan.resolver.is_async):
                self._finish_async(req, plan, view, scope, started, response)
            elif plan.needs_info:  # a quantity or metadata from the request or the response
                self.metering.finish(
                    plan,
                    view,
                    scope,
                    status=response.status_code,
                    request_bytes=_request_bytes(environ),
                    response_bytes=_response_bytes(response),
                    response_headers=response.headers.get,
                    duration_ms=(time.perf_counter() - started) * 1000.0,
                    customer=_known_customer(plan, environ),
                )
            else:  # the common case: constant quantities
                self.metering.finish(
                    plan,
                    view,
                    scope,
                    status=response.status_code,
                    customer=environ.get(_CUSTOMER_KEY) if plan.uniform else None,
                )
        except Exception:  # pragma: no cover - the seam never raises; this is belt and braces
            logger.exception("fluxrate: metering a Flask response failed")

    def _finish_async(
        self,
        req: Any,
        plan: RoutePlan,
        view: FlaskRequestView,
        scope: ScopeToken,
        started: float,
        response: Response,
    ) -> None:
        kwargs = {
            "status": response.status_code,
            "request_bytes": _request_bytes(req.environ),
            "response_bytes": _response_bytes(response),
            "response_headers": response.headers.get,
            "duration_ms": (time.perf_counter() - started) * 1000.0,
            "customer": _known_customer(plan, req.environ),
        }
        _call_finish(self.app, self.metering, plan, view, scope, kwargs)

    def _defer(
        self, req: Any, plan: RoutePlan, scope: ScopeToken, started: float, response: Response
    ) -> None:
        """Bill a streamed response when its body is done: wrap the body."""
        environ = req.environ
        view = FlaskRequestView(req, self.app, bind=True)  # usable after the context is gone
        customer = None
        if plan.uniform:  # one customer for every meter: resolve it while g and the user live
            customer = environ.get(_CUSTOMER_KEY) or self._customer(plan, view) or ""
        elif _uses_user(plan):
            view.user()  # each meter's resolver runs when the body is done: load the user now
        _detach_scope(scope)
        pending = _PendingStream(
            self.app,
            self.metering,
            plan,
            view,
            scope,
            status=response.status_code,
            headers=response.headers.get,
            request_bytes=_request_bytes(environ),
            started=started,
            customer=customer,
        )
        response.response = _MeteredBody(response.response, pending)

    def _finish_error(self, req: Any, entry: _Route, scope: ScopeToken, started: float) -> None:
        try:
            plan = entry.plan
            assert plan is not None
            kwargs = {
                "status": 500,
                "request_bytes": _request_bytes(req.environ),
                "duration_ms": (time.perf_counter() - started) * 1000.0,
                "error": True,
                "customer": _known_customer(plan, req.environ),
            }
            view = FlaskRequestView(req, self.app)
            _call_finish(self.app, self.metering, plan, view, scope, kwargs)
        except Exception:  # pragma: no cover
            logger.exception("fluxrate: metering a failed Flask request failed")


# --------------------------------------------------------------------------------------------
# the extension


def _marker(blueprint: Blueprint) -> Callable[[], None]:
    """A no-op function named after ``blueprint``, to carry blueprint-level ``@meter`` rules."""

    def marker() -> None:
        return None

    marker.__module__ = blueprint.import_name
    marker.__qualname__ = marker.__name__ = f"meter_blueprint({blueprint.name!r})"
    return marker


class Fluxrate:
    """The Flask extension. One object can serve many apps (app factories).

    Configuration, lowest precedence first: the YAML file (``config=`` here, or
    ``FLUXRATE_CONFIG`` in ``app.config`` or in the environment), keyword arguments given here
    (any ``fluxrate.yaml`` key: ``api_key=...``, ``meters={...}``), then the ``app.config`` keys
    ``FLUXRATE_<KEY>`` (``FLUXRATE_API_KEY``, ``FLUXRATE_METERS``, ...). A bad configuration
    raises :class:`~fluxrate_web.core.errors.ConfigError` from :meth:`init_app`.

    ``client=`` shares one client (``FluxrateClient``, ``fluxrate_web.testing.CapturingClient``,
    anything with ``track``/``enqueue``/``note_dropped``/``flush``/``close``) between the apps;
    by default each app builds its own from its configuration. Nothing touches the network
    before the first event; queued events are flushed at interpreter exit.
    """

    meter = staticmethod(meter)
    record = staticmethod(record)

    def __init__(
        self,
        app: Flask | None = None,
        *,
        config: str | os.PathLike[str] | None = None,
        client: Any = None,
        **options: Any,
    ) -> None:
        self._config = config
        self._client = client
        self._options = {key.lower(): value for key, value in options.items()}
        # blueprint -> functions carrying its @meter / meter.exempt rules (the seam's defaults)
        self._blueprints: dict[object, list[Callable[[], None]]] = {}
        if app is not None:
            self.init_app(app)

    # -- setup

    def settings(self, app: Flask) -> tuple[str | os.PathLike[str] | None, dict[str, Any]]:
        """The config file and the keys (lower case) this extension hands to core for ``app``."""
        merged = dict(self._options)
        for key, value in app.config.items():
            if isinstance(key, str) and key.startswith(_PREFIX) and len(key) > len(_PREFIX):
                merged[key[len(_PREFIX) :].lower()] = value
        path = merged.pop("config", None) or self._config
        return path, merged

    def load(self, app: Flask, *, client: Any = None) -> Metering:
        """Build a :class:`Metering` from ``app``'s configuration (raises ``ConfigError``)."""
        path, overrides = self.settings(app)
        return Metering.from_config(
            path,
            client=client if client is not None else self._client,
            overrides=overrides,
            overrides_name="app.config",
        )

    def init_app(self, app: Flask) -> None:
        """Set ``app`` up: read its config, install the hooks and the ``flask fluxrate``
        commands. Raises ``ConfigError`` for a bad configuration. Sends nothing."""
        if _KEY in app.extensions:
            raise RuntimeError("Fluxrate.init_app() was already called for this app")
        metering = self.load(app)
        # @meter on the views registered so far, and on blueprint markers, fail here; views added
        # later are checked on their first request (logged) and by `flask fluxrate check`.
        metering.validate_views(self._views_and_markers(app))
        state = FluxrateState(self, app, metering)
        app.extensions[_KEY] = state
        state.install(app)
        if "fluxrate" not in app.cli.commands:
            app.cli.add_command(fluxrate_cli)

    def _views_and_markers(self, app: Flask) -> Iterator[object]:
        for view in app.view_functions.values():
            yield view
            view_class = getattr(view, "view_class", None)
            if isinstance(view_class, type) and issubclass(view_class, MethodView):
                for method in view_class.methods or ():
                    handler = getattr(view_class, method.lower(), None)
                    if handler is not None:
                        yield handler
        for markers in self._blueprints.values():
            yield from markers

    # -- rules

    def meter_blueprint(
        self,
        blueprint: Blueprint,
        name: str,
        *,
        quantity: Any = 1,
        customer: Any = None,
        metadata: Any = None,
        bill_on: Any = None,
    ) -> Blueprint:
        """Meter every view of ``blueprint`` (and of the blueprints nested in it) on ``name``,
        as if each view had ``@meter(name, ...)``. A view's own ``@meter`` for the same meter
        replaces it; ``@fluxrate.exempt`` on a view exempts that view. Call it before the first
        request (before or after ``register_blueprint`` and ``init_app``)."""
        marker = meter(
            name, quantity=quantity, customer=customer, metadata=metadata, bill_on=bill_on
        )(_marker(blueprint))
        self._blueprints.setdefault(blueprint, []).append(marker)
        return blueprint

    def exempt(self, target: _F) -> _F:
        """``@fluxrate.exempt``: never meter this view; given a blueprint, none of its views.
        ``record()`` inside an exempt view still bills."""
        if isinstance(target, Blueprint):
            self._blueprints.setdefault(target, []).append(meter.exempt(_marker(target)))
            return target
        return meter.exempt(target)

    def _blueprint_markers(self, app: Flask, endpoint: str) -> tuple[Callable[[], None], ...]:
        """The markers of the blueprints ``endpoint`` is in, outermost first."""
        if not self._blueprints or "." not in endpoint:
            return ()
        names = endpoint.split(".")[:-1]
        found: list[Callable[[], None]] = []
        for depth in range(1, len(names) + 1):  # outermost blueprint first
            blueprint = app.blueprints.get(".".join(names[:depth]))
            if blueprint is not None:
                found.extend(self._blueprints.get(blueprint) or ())
        return tuple(found)

    # -- runtime

    def state(self, app: Flask | None = None) -> FluxrateState:
        """``app.extensions["fluxrate"]`` of ``app`` (default: the current app)."""
        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        state = target.extensions.get(_KEY)
        if not isinstance(state, FluxrateState):
            raise RuntimeError("Fluxrate.init_app() was not called for this app")
        return state

    def flush(self, timeout: float | None = None, *, app: Flask | None = None) -> bool:
        """Wait until ``app``'s queued events are delivered (``True``) or ``timeout`` passed."""
        return self.state(app).metering.flush(timeout)


# --------------------------------------------------------------------------------------------
# `flask fluxrate ...`

fluxrate_cli = AppGroup(
    "fluxrate", help="Fluxrate usage metering: list the metered routes, check the configuration."
)


def _load_state(ctx: click.Context) -> FluxrateState:
    """The app's state; a configuration error becomes a one-line message, not a traceback
    (when the group is found before the app is loaded, through the ``flask.commands`` entry
    point)."""
    try:
        app = ctx.ensure_object(ScriptInfo).load_app()
    except ConfigError as exc:
        raise click.ClickException(f"invalid Fluxrate configuration: {exc}") from None
    state = app.extensions.get(_KEY)
    if not isinstance(state, FluxrateState):
        raise click.ClickException(
            "Fluxrate is not set up on this app: call Fluxrate(app) or fluxrate.init_app(app)."
        )
    return state


def route_rows(state: FluxrateState, *, show_all: bool) -> tuple[list[tuple[str, ...]], list[str]]:
    """``(method, rule, endpoint, meter, quantity, customer, source)`` per route and meter, and
    the configuration errors met on the way."""
    rows: list[tuple[str, ...]] = []
    errors: list[str] = []
    rules = sorted(state.app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint))
    for rule in rules:
        methods = sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"}) or sorted(
            rule.methods or ()
        )
        for method in methods:
            try:
                plan = state.plan(rule, method)
            except ConfigError as exc:
                errors.append(str(exc))
                rows.append((method, rule.rule, rule.endpoint, "(error)", "", "", str(exc)))
                continue
            if plan is None or plan.exempt or not plan.meters:
                if show_all:
                    exempt = plan is not None and plan.exempt
                    label = "(exempt)" if exempt else "-"
                    source = plan.source if plan is not None and exempt else ""
                    rows.append((method, rule.rule, rule.endpoint, label, "", "", source))
                continue
            for item in plan.meters:
                resolver = item.resolver if item.resolver is not None else plan.resolver
                rows.append(
                    (
                        method,
                        rule.rule,
                        rule.endpoint,
                        item.name,
                        item.quantity.description,
                        resolver.description,
                        plan.source,
                    )
                )
    return rows, errors


def _table(rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


@fluxrate_cli.command("routes", with_appcontext=False)
@click.option("--all", "show_all", is_flag=True, help="Also list the routes that bill nothing.")
@click.pass_context
def routes_command(ctx: click.Context, show_all: bool) -> None:
    """List every route with its meters, quantity and customer resolver.

    Usage added with record() inside a view is not listed: it is known only at run time."""
    state = _load_state(ctx)
    with state.app.app_context():
        rows, errors = route_rows(state, show_all=show_all)
    headers = ("Method", "Rule", "Endpoint", "Meter", "Quantity", "Customer", "Rule source")
    for line in _table(rows, headers):
        click.echo(line)
    for error in errors:
        click.secho(f"Error: {error}", fg="red", err=True)
    if errors:
        ctx.exit(1)


@fluxrate_cli.command("check", with_appcontext=False)
@click.pass_context
def check_command(ctx: click.Context) -> None:
    """Validate the Fluxrate configuration and every route's @meter rules."""
    state = _load_state(ctx)
    try:
        metering = state.extension.load(state.app, client=_NullClient())
    except ConfigError as exc:  # the app.config changed since init_app
        raise click.ClickException(f"invalid Fluxrate configuration: {exc}") from None
    with state.app.app_context():
        rows, errors = route_rows(state, show_all=False)
    for error in errors:
        click.secho(f"Error: {error}", fg="red", err=True)
    if errors:
        ctx.exit(1)
    config = metering.config
    described = config.describe()
    click.echo(f"Configuration OK: {config.source}")
    for key in ("api_key", "base_url", "customer", "bill_on", "on_missing_customer"):
        click.echo(f"  {key}: {described[key]}")
    click.echo(f"  meters: {', '.join(sorted(config.meters)) or '(none)'}")
    click.echo(f"  metered routes: {len({(row[0], row[1]) for row in rows})}")
    if config.enabled and not config.api_key and not config.access_token:
        click.secho(
            "Warning: no api_key (FLUXRATE_API_KEY): events cannot be delivered.",
            fg="yellow",
            err=True,
        )


class _NullClient:
    """A client that sends nothing: ``check`` must not start a worker or touch the network."""

    def track(self, *args: Any, **kwargs: Any) -> None:
        return None

    def enqueue(self, event: object) -> bool:
        return False

    def note_dropped(self, reason: str) -> None:
        return None

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        return None
