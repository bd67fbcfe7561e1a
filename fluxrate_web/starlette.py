"""Starlette and FastAPI adapter: a pure ASGI middleware that meters HTTP requests.

```python
from fluxrate_web.starlette import FluxrateMiddleware

app.add_middleware(FluxrateMiddleware, config="fluxrate.yaml")
```

The middleware only translates ASGI into calls on the seam (:class:`~fluxrate_web.core.metering.
Metering`); which meters apply, who the customer is, how much and whether it is billable are
decided in core. Per HTTP request it:

1. opens a ``record()`` scope and lets the app run, with ``send`` and ``receive`` wrapped to count
   the status, the response body bytes and the request body bytes (nothing is buffered, copied or
   reordered);
2. right after the last body chunk has been handed to the server (``more_body`` false), reads the
   route the router chose from the scope (``scope["route"]``, FastAPI's included-router context,
   mount prefixes from ``root_path``) and calls ``Metering.finish``, which enqueues and returns.

A response the client did not get in full (it went away mid-stream) is finished with
``completed=False``; one the app failed (it raised) with ``error=True``; the configuration
decides whether those bill (``bill_on_disconnect``, ``bill_on_exception``). Exceptions raised by
the app propagate unchanged, and a failure of our own is logged, never raised.

WebSocket traffic passes through untouched. Lifespan traffic passes through too; the middleware
only starts the core on ``lifespan.startup`` and flushes it on ``lifespan.shutdown``.

``on_missing_customer: reject`` needs the route *before* the endpoint runs. Only in that mode,
the middleware matches the request against an index of the app's full route templates (built
once from the route tree, compiled with Starlette's own ``compile_path``) and answers 401 JSON
itself when the route is metered with ``reject`` and no customer resolves. That costs one regex
scan per request, paid only by apps that ask for reject mode.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.routing import Host, Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fluxrate_web.core._log import log_limited
from fluxrate_web.core.config import Config
from fluxrate_web.core.metering import _ASK, Metering, RoutePlan
from fluxrate_web.core.rules import RequestRules

__all__ = ["REJECT_DETAIL", "FluxrateMiddleware", "ScopeRequestView", "current_exchange"]

logger = logging.getLogger("fluxrate_web.starlette")

_SCOPE_KEY = "fluxrate"
"""Key of the per-request exchange in the ASGI scope (read by ``fluxrate_web.fastapi``)."""

REJECT_DETAIL = "No customer could be identified for this metered endpoint."
"""The ``detail`` of the 401 JSON answered in reject mode."""
_REJECT_BODY = json.dumps({"detail": REJECT_DETAIL}).encode()

# Exceptions that mean "the client went away", not "the app failed".
_DISCONNECT_NAMES = frozenset({"ClientDisconnect", "ClientDisconnected", "WebSocketDisconnect"})


def _is_disconnect(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    name = type(exc).__name__
    return name in _DISCONNECT_NAMES or name == "CancelledError"


def _warn(key: str, msg: str, *args: object, exc_info: bool = False) -> None:
    """A rate-limited warning (with the current exception's traceback at DEBUG level)."""
    if log_limited(logging.WARNING, f"starlette:{key}", msg, *args, log=logger) and exc_info:
        logger.debug("fluxrate: details of the failure above", exc_info=True)


# --------------------------------------------------------------------------- request view

_HEADER_KEYS: dict[str, bytes] = {}


def _header_key(name: str) -> bytes:
    key = _HEADER_KEYS.get(name)
    if key is None:
        key = name.lower().encode("latin-1")
        if len(_HEADER_KEYS) < 256:
            _HEADER_KEYS[name] = key
    return key


class ScopeRequestView:
    """A :class:`~fluxrate_web.core.metering.RequestView` over an ASGI HTTP scope.

    Headers and the query string are parsed only when a resolver asks for them, once.
    ``native`` is a :class:`starlette.requests.Request` built on first access (without a
    ``receive`` channel: the body is never read here).
    """

    __slots__ = ("_headers", "_query", "_request", "scope")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self._headers: dict[str, str | None] | None = None  # (unused: kept for subclasses)
        self._query: dict[str, str] | None = None
        self._request: object = None

    @property
    def native(self) -> object:
        """The :class:`starlette.requests.Request` (built on first access)."""
        request = self._request
        if request is None:
            from starlette.requests import Request

            request = self._request = Request(self.scope)
        return request

    @native.setter
    def native(self, value: object) -> None:
        self._request = value

    def header(self, name: str) -> str | None:
        # One scan of the (short) header list per name asked: cheaper than building any
        # index (the seam asks for one or two names per request). ASGI servers send names
        # lower-cased (the spec asks them to); the first of repeated names wins.
        wanted = _HEADER_KEYS.get(name) or _header_key(name)
        try:
            for key, raw in self.scope["headers"]:
                if key == wanted:
                    return raw.decode("latin-1")  # type: ignore[no-any-return]
        except Exception:  # no or malformed headers
            return None
        return None

    def query(self, name: str) -> str | None:
        query = self._query
        if query is None:
            query = {}
            raw = self.scope.get("query_string") or b""
            if raw:
                for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
                    query.setdefault(key, value)
            self._query = query
        return query.get(name)

    def state(self, name: str) -> object | None:
        state = self.scope.get("state")
        if state is None:
            return None
        if isinstance(state, Mapping):
            return state.get(name)
        return getattr(state, name, None)

    def user(self) -> object | None:
        user: object = self.scope.get("user")
        if user is None or getattr(user, "is_authenticated", True) is False:
            return None
        return user


# --------------------------------------------------------------------------- route index


_RegexT = re.Pattern[str]


class _Entry:
    __slots__ = ("endpoint", "methods", "name", "regex", "route", "template")

    def __init__(
        self,
        template: str,
        endpoint: object,
        methods: frozenset[str] | None,
        name: str | None,
        route: object,
    ) -> None:
        self.template = template
        self.endpoint = endpoint
        self.methods = methods
        self.name = name
        self.route = route
        self.regex: _RegexT = compile_path(template)[0]


class _RouteIndex:
    """Full path templates of an app's routes, from mounts, includes and routes.

    Built by walking the route tree once: Starlette ``Mount`` (routes or sub-apps, with or
    without path parameters), ``Host``, and FastAPI included routers (through their effective
    route contexts, which carry the full ``include_router`` prefix).
    """

    def __init__(self, root: object) -> None:
        self.entries: list[_Entry] = []
        self.by_endpoint: dict[int, list[_Entry]] = {}
        self.static_mounts: set[str] = set()
        self.param_mounts: list[tuple[_RegexT, str]] = []
        routes = _routes_of(root)
        if routes is not None:
            self._walk(routes, "", 0)
        self.param_mounts.sort(key=lambda item: -len(item[1]))

    def _walk(self, routes: Iterable[object], prefix: str, depth: int) -> None:
        if depth > 32:
            return
        for route in routes:
            contexts = getattr(route, "effective_route_contexts", None)
            if callable(contexts):  # FastAPI's included router
                for ctx in contexts():
                    effective = getattr(ctx, "starlette_route", None) or ctx
                    self._add(effective, getattr(ctx, "original_route", effective), prefix, depth)
            else:
                self._add(route, route, prefix, depth)

    def _add(self, route: object, original: object, prefix: str, depth: int) -> None:
        if isinstance(route, Mount):
            mount_prefix = prefix + route.path
            if "{" in mount_prefix:
                self.param_mounts.append((compile_path(mount_prefix)[0], mount_prefix))
            else:
                self.static_mounts.add(mount_prefix)
            children = route.routes
            if children:
                self._walk(children, mount_prefix, depth + 1)
            self._entry(prefix + route.path_format, route.app, None, route.name, original)
        elif isinstance(route, Host):
            self._walk(route.routes, prefix, depth + 1)
        else:
            path_format = getattr(route, "path_format", None)
            if not isinstance(path_format, str) or not path_format:
                return
            methods = getattr(route, "methods", None)
            self._entry(
                prefix + path_format,
                getattr(route, "endpoint", None),
                frozenset(methods) if methods else None,
                getattr(route, "name", None),
                original,
            )

    def _entry(
        self,
        template: str,
        endpoint: object,
        methods: frozenset[str] | None,
        name: str | None,
        route: object,
    ) -> None:
        try:
            entry = _Entry(template, endpoint, methods, name, route)
        except Exception:  # a path Starlette itself could not compile: not routable anyway
            return
        self.entries.append(entry)
        if endpoint is not None:
            self.by_endpoint.setdefault(id(endpoint), []).append(entry)

    def mount_template(self, concrete: str) -> str | None:
        """The template of a concrete mount prefix (``/orgs/acme`` -> ``/orgs/{org}``)."""
        if concrete in self.static_mounts:
            return concrete
        for regex, template in self.param_mounts:
            if regex.fullmatch(concrete) is not None:
                return template
        return None

    def by_path(self, endpoint: object, path: str) -> _Entry | None:
        entries = self.by_endpoint.get(id(endpoint))
        if not entries:
            return None
        if len(entries) == 1:
            return entries[0]
        for entry in entries:
            if entry.regex.match(path) is not None:
                return entry
        return None

    def match(self, path: str, method: str) -> _Entry | None:
        """The route a request would reach, as the router would choose it (FULL, else PARTIAL)."""
        partial = None
        for entry in self.entries:
            if entry.regex.match(path) is not None:
                if entry.methods is None or method in entry.methods:
                    return entry
                if partial is None:
                    partial = entry
        return partial


def _routes_of(app: object) -> list[object] | None:
    """The route list of a Starlette/FastAPI app or router, looking through middleware."""
    seen = 0
    while app is not None and seen < 64:
        routes = getattr(app, "routes", None)
        if isinstance(routes, list):
            return routes
        app = getattr(app, "app", None)
        seen += 1
    return None


def _route_path(path: str, root_path: str) -> str:
    """Starlette's ``get_route_path``: the path below ``root_path``."""
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


# --------------------------------------------------------------------------- the middleware


class FluxrateMiddleware:
    """Pure ASGI middleware metering the HTTP requests of a Starlette or FastAPI app.

    Give exactly one of:

    - ``config``: a path to ``fluxrate.yaml`` (or a loaded ``Config``); ``None`` means
      ``$FLUXRATE_CONFIG`` or keyword ``overrides`` only;
    - ``metering``: a ready :class:`~fluxrate_web.core.metering.Metering`.

    ``client`` replaces the delivery client built from the config (e.g. a test client),
    ``rules`` the compiled rules, and ``overrides`` are config keys that win over the file.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        client: Any = None,
        rules: RequestRules | None = None,
        metering: Metering | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        if metering is None:
            metering = _build_metering(config, client=client, rules=rules, overrides=overrides)
        elif config is not None or client is not None or rules is not None:
            raise TypeError("FluxrateMiddleware: give metering= or config/client/rules, not both")
        self.metering = metering
        self.reject_mode = _reject_mode(metering)
        header = getattr(metering, "idempotency_header", None)
        self.idempotency_key: bytes | None = _header_key(header) if header else None
        self._root: object = None
        self._index: _RouteIndex | None = None
        self._index_misses: set[object] = set()
        self._plans: dict[tuple[object, ...], tuple[object, object, RoutePlan]] = {}

    # -- ASGI entry point ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if self._root is None:
            self._root = scope.get("app") or self.app
        if self.reject_mode:
            try:
                reject = await self._must_reject(scope)
            except Exception:
                _warn("reject", "fluxrate: reject check failed; request let through", exc_info=True)
                reject = False
            if reject:
                await _send_reject(send)
                return
        try:
            exchange = _Exchange(self, scope, receive, send)
        except Exception:
            _warn("setup", "fluxrate: request not metered, setup failed", exc_info=True)
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BaseException as exc:
            if not exchange.finished:
                # The seam's flags: completed=False means the client went away, error=True
                # that the app raised. Never await while an exception or cancellation unwinds.
                if _is_disconnect(exc):
                    exchange.finish(False, False, may_await=False)
                else:
                    exchange.finish(True, True, may_await=False)
            raise
        finally:
            scope.pop(_SCOPE_KEY, None)  # no scope <-> exchange cycle left for the GC
        if not exchange.finished:
            # The app returned without completing the response (the client went away and
            # the app stopped streaming): finished, not completed.
            pending = exchange.finish(False, False)
            if pending is not None:
                await pending

    # -- lifespan -----------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._root is None:
            self._root = scope.get("app") or self.app
        metering = self.metering

        async def lifespan_receive() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                try:
                    metering.start()
                except Exception:
                    _warn("start", "fluxrate: could not start the delivery core", exc_info=True)
            return message

        async def lifespan_send(message: Message) -> None:
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await _flush_off_loop(metering)
            await send(message)

        await self.app(scope, lifespan_receive, lifespan_send)

    # -- routes -------------------------------------------------------------------------

    def index(self, refresh: bool = False) -> _RouteIndex:
        index = self._index
        if index is None or refresh:
            index = self._index = _RouteIndex(self._root or self.app)
        return index

    def plan_for(
        self, scope: Scope, root_path: str, carriers: tuple[object, ...] = ()
    ) -> RoutePlan:
        """The seam's plan for the route the router chose (read from the scope, after routing).

        ``root_path`` is the scope's ``root_path`` when the request entered the middleware.
        ``carriers`` are objects holding ``@meter`` rules added at run time (FastAPI
        ``Depends(metered(...))``); they are handed to the seam as group ``defaults``.

        Cached per (route object, FastAPI include context, method, mount prefix): after the
        first request of a route this is one dict lookup."""
        route = scope.get("route")
        if route is None or carriers:
            return self._plan_slow(scope, root_path, carriers)[0]
        fastapi_scope = scope.get("fastapi")
        ctx = fastapi_scope.get("effective_route_context") if fastapi_scope else None
        key = (id(route), id(ctx), scope["method"], scope.get("root_path", ""), root_path)
        hit = self._plans.get(key)
        if hit is not None and hit[0] is route and hit[1] is ctx:
            return hit[2]
        plan, cacheable = self._plan_slow(scope, root_path, ())
        if cacheable and len(self._plans) < 4096:
            self._plans[key] = (route, ctx, plan)
        return plan

    def _plan_slow(
        self, scope: Scope, root_path: str, carriers: tuple[object, ...]
    ) -> tuple[RoutePlan, bool]:
        """The plan, and whether it may be cached by concrete mount prefix (no path parameters
        in the mounts)."""
        method: str = scope["method"]
        route = scope.get("route")
        endpoint = scope.get("endpoint")
        template: str | None = None
        name: str | None = None
        cacheable = True
        if route is not None:
            local = None
            fastapi_scope = scope.get("fastapi")
            if fastapi_scope:
                # FastAPI keeps the full include_router path on the effective route context;
                # scope["route"] is the router's own APIRoute with only its local path.
                ctx = fastapi_scope.get("effective_route_context")
                if ctx is not None and getattr(ctx, "original_route", None) is route:
                    effective = getattr(ctx, "starlette_route", None) or ctx
                    local = getattr(effective, "path_format", None)
            if local is None:
                local = getattr(route, "path_format", None)
            name = getattr(route, "name", None)
            if isinstance(local, str):
                routed_root = scope.get("root_path", "")
                if routed_root == root_path:
                    template = local
                else:
                    prefix = self._mount_template(routed_root, root_path)
                    if prefix is None:
                        cacheable = False
                    else:
                        template = prefix + local
                        cacheable = "{" not in prefix
        elif endpoint is not None:
            # Routes FastAPI's router does not record in scope["route"] (plain Starlette
            # routes and mounts of a FastAPI app): find the template by endpoint.
            entry = self._entry_for(endpoint, _route_path(scope["path"], root_path))
            if entry is not None:
                template, name = entry.template, entry.name
        handler: object = None
        if isinstance(endpoint, type):  # class-based HTTPEndpoint: the method's handler
            handler = _endpoint_handler(endpoint, method)
        plan = self.metering.route(
            template, method, endpoint, handler=handler, name=name, defaults=carriers
        )
        return plan, cacheable

    def _mount_template(self, routed_root: str, root_path: str) -> str | None:
        if not routed_root.startswith(root_path):
            return None
        concrete = routed_root[len(root_path) :]
        template = self.index().mount_template(concrete)
        if template is None and concrete not in self._index_misses:
            if len(self._index_misses) < 1024:
                self._index_misses.add(concrete)
            template = self.index(refresh=True).mount_template(concrete)
        return template

    def _entry_for(self, endpoint: object, path: str) -> _Entry | None:
        entry = self.index().by_path(endpoint, path)
        if entry is None and id(endpoint) not in self._index_misses:
            if len(self._index_misses) < 1024:
                self._index_misses.add(id(endpoint))
            entry = self.index(refresh=True).by_path(endpoint, path)
        return entry

    # -- reject mode --------------------------------------------------------------------

    async def _must_reject(self, scope: Scope) -> bool:
        """Reject mode: whether the route the request will reach is metered with ``reject``
        and no customer resolves from the request as it arrives."""
        root_path: str = scope.get("root_path", "")
        method: str = scope["method"]
        entry = self.index().match(_route_path(scope["path"], root_path), method)
        if entry is None:
            return False
        endpoint = entry.endpoint
        handler = _endpoint_handler(endpoint, method) if isinstance(endpoint, type) else None
        plan = self.metering.route(
            entry.template, method, endpoint, handler=handler, name=entry.name
        )
        if not plan.reject_missing_customer:
            return False
        view = ScopeRequestView(scope)
        if plan.needs_async:
            return await plan.customer_async(view) is None
        return plan.customer(view) is None


async def _send_reject(send: Send) -> None:
    """The 401 JSON of reject mode."""
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_REJECT_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _REJECT_BODY, "more_body": False})


def _endpoint_handler(endpoint: type, method: str) -> object:
    """The method of a class-based endpoint (Starlette ``HTTPEndpoint``) handling ``method``."""
    handler = getattr(endpoint, method.lower(), None)
    if handler is None and method == "HEAD":
        handler = getattr(endpoint, "get", None)
    return handler


def _build_metering(
    config: Config | str | os.PathLike[str] | None,
    *,
    client: Any,
    rules: RequestRules | None,
    overrides: Mapping[str, Any] | None,
) -> Metering:
    if rules is not None:
        if config is not None and not isinstance(config, Config):
            raise TypeError("FluxrateMiddleware: with rules=, give config= as a Config or omit it")
        if overrides:
            raise TypeError("FluxrateMiddleware: overrides= cannot change compiled rules=")
        return Metering(config, client=client, rules=rules)
    return Metering.from_config(config, client=client, overrides=overrides)


def _reject_mode(metering: Metering) -> bool:
    """Whether a route may need a customer before its endpoint runs (``on_missing_customer:
    reject``)."""
    return bool(metering.config.enabled and metering.config.on_missing_customer == "reject")


def _drain_at_shutdown(metering: Metering) -> None:
    """Deliver the queue within ``shutdown_timeout``; if the API is not taking it (an outage),
    close the client so what missed the deadline goes to the spool or the failure log at once,
    and the server exits before an orchestrator's SIGKILL. A queue that drained leaves the
    client open: test suites run one app's lifespan many times."""
    if not metering.flush(metering.config.shutdown_timeout):
        metering.close(0)


async def _flush_off_loop(metering: Metering) -> None:
    try:
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(_drain_at_shutdown, metering)
    except Exception:
        _warn("flush", "fluxrate: flush at shutdown failed", exc_info=True)


# --------------------------------------------------------------------------- one request


class _Exchange(ScopeRequestView):
    """The state of one HTTP request/response going through the middleware (and, being a
    :class:`ScopeRequestView`, what core sees of the request).

    Kept small: this is built for every request."""

    __slots__ = (
        "_receive",
        "_send",
        "carriers",
        "finished",
        "middleware",
        "request_bytes",
        "response_bytes",
        "root_path",
        "start",
        "started",
        "token",
    )

    def __init__(
        self, middleware: FluxrateMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.scope = scope
        self._headers = None
        self._query = None
        self._request = None
        self.middleware = middleware
        self._receive = receive
        self._send = send
        self.root_path: str = scope.get("root_path", "")
        self.start: Message | None = None  # the http.response.start message
        self.request_bytes = 0
        self.response_bytes = 0
        self.finished = False
        self.carriers: tuple[object, ...] = ()
        self.started = time.perf_counter()
        self.token = middleware.metering.open_scope()
        scope[_SCOPE_KEY] = self

    # -- the wrapped channels

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.request_bytes += len(message.get("body", b""))
        return message

    def send(self, message: Message) -> Awaitable[None]:
        # A plain function returning the server's awaitable: no coroutine of our own for every
        # message, except the last one, after which the request is finished.
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
        elif kind == "http.response.body":
            self.response_bytes += len(message.get("body", b""))
            if not message.get("more_body", False) and (
                (start := self.start) is None or not start.get("trailers", False)
            ):
                return self._send_last(message)
        elif kind == "http.response.trailers":
            if not message.get("more_trailers", False):
                return self._send_last(message)
        elif kind == "http.response.pathsend":
            # The server sends the file itself: its size is the response's Content-Length.
            length = self.response_header("content-length")
            if length is not None and length.isdigit():
                self.response_bytes += int(length)
            return self._send_last(message)
        return self._send(message)

    async def _send_last(self, message: Message) -> None:
        """Send the response's last message, then hand the request to the seam."""
        await self._send(message)
        pending = self.finish(True, False)
        if pending is not None:
            await pending

    @property
    def status(self) -> int | None:
        start = self.start
        return None if start is None else int(start["status"])

    def response_header(self, name: str) -> str | None:
        """A response header (case-insensitive), for ``response_header:`` quantities."""
        start = self.start
        headers = None if start is None else start.get("headers")
        if not headers:
            return None
        key = name.lower().encode("latin-1")
        for k, v in headers:
            if k.lower() == key:
                return v.decode("latin-1") if isinstance(v, bytes) else str(v)
        return None

    # -- routing and FastAPI dependencies

    def add_carrier(self, carrier: object) -> None:
        """Bill this request by the ``@meter`` rules ``carrier`` holds (``metered(...)``)."""
        if not any(carrier is c for c in self.carriers):
            self.carriers = (*self.carriers, carrier)

    def plan(self) -> RoutePlan:
        return self.middleware.plan_for(self.scope, self.root_path, self.carriers)

    @property
    def metering(self) -> Metering:
        return self.middleware.metering

    async def missing_required_customer(self) -> bool:
        """Whether the route needs a customer (reject mode) and none resolves, now."""
        if not self.middleware.reject_mode:
            return False
        plan = self.plan()
        if not plan.reject_missing_customer:
            return False
        if plan.needs_async:
            return await plan.customer_async(self) is None
        return plan.customer(self) is None

    # -- finishing

    def _request_bytes(self) -> int:
        length = self.header("content-length")
        if length is not None and length.isdigit():
            return int(length)
        return self.request_bytes

    def finish(
        self, completed: bool, error: bool, *, may_await: bool = True
    ) -> Awaitable[int] | None:
        """Hand the request to the seam. Returns an awaitable only when the plan has async
        resolvers or quantity sources (and ``may_await``). Never raises."""
        if self.finished:
            return None
        self.finished = True
        try:
            middleware = self.middleware
            scope = self.scope
            route = scope.get("route")
            plan: RoutePlan | None = None
            if route is not None and not self.carriers:
                # plan_for()'s cache, inlined: this runs for every request
                fastapi_scope = scope.get("fastapi")
                ctx = fastapi_scope.get("effective_route_context") if fastapi_scope else None
                key = (
                    id(route),
                    id(ctx),
                    scope["method"],
                    scope.get("root_path", ""),
                    self.root_path,
                )
                hit = middleware._plans.get(key)
                if hit is not None and hit[0] is route and hit[1] is ctx:
                    plan = hit[2]
            if plan is None:
                plan = middleware.plan_for(scope, self.root_path, self.carriers)
            metering = middleware.metering
            start = self.start
            status = None if start is None else start.get("status")
            if status is None and error:
                status = 500  # what the server (or ServerErrorMiddleware) answers
            use_async = plan.needs_async and may_await
            if not plan.needs_info and not self.token:
                # constant quantities and no record(): bytes, headers and duration unused
                wanted = plan.customer_header
                if wanted is not None and plan.fast and status in plan.billable:
                    # What core would ask the view for (the customer's header, then the
                    # idempotency header), read in one pass over the header list.
                    customer, request_key = self._read_keys(wanted, middleware.idempotency_key)
                    metering.finish(
                        plan,
                        self,
                        self.token,
                        status=status,
                        completed=completed,
                        error=error,
                        customer=customer,
                        request_key=request_key,
                    )
                    return None
                if use_async:
                    return metering.finish_async(
                        plan, self, self.token, status=status, completed=completed, error=error
                    )
                metering.finish(
                    plan, self, self.token, status=status, completed=completed, error=error
                )
                return None
            if use_async:
                return metering.finish_async(
                    plan,
                    self,
                    self.token,
                    status=status,
                    request_bytes=self._request_bytes(),
                    response_bytes=self.response_bytes,
                    response_headers=self.response_header,
                    duration_ms=(time.perf_counter() - self.started) * 1000.0,
                    completed=completed,
                    error=error,
                )
            metering.finish(
                plan,
                self,
                self.token,
                status=status,
                request_bytes=self._request_bytes(),
                response_bytes=self.response_bytes,
                response_headers=self.response_header,
                duration_ms=(time.perf_counter() - self.started) * 1000.0,
                completed=completed,
                error=error,
            )
        except Exception as exc:
            _warn("finish", "fluxrate: request not metered: %s: %s", type(exc).__name__, exc)
            self._close_quietly()
        return None

    def _read_keys(self, customer_header: str, key_header: bytes | None) -> tuple[str | None, Any]:
        """``(customer, request_key)`` for ``Metering.finish`` from one pass over the header
        list: the value of ``customer_header`` (``""``: absent) and of the idempotency header
        (``None``: absent). As :meth:`header` reads them: the first of repeated names wins.
        Malformed headers: ``(None, _ASK)``, so core asks :meth:`header` itself."""
        wanted = _HEADER_KEYS.get(customer_header) or _header_key(customer_header)
        customer: bytes | None = None
        key: bytes | None = None
        try:
            for name, raw in self.scope["headers"]:
                if name == wanted and customer is None:
                    customer = raw
                if name == key_header and key is None:
                    key = raw
            return (
                "" if customer is None else customer.decode("latin-1"),
                None if key is None else key.decode("latin-1"),
            )
        except Exception:
            return None, _ASK

    def _close_quietly(self) -> None:
        """Close the request's record() scope after a failure, billing nothing."""
        try:
            metering = self.middleware.metering
            if not self.token.closed:
                metering.finish(metering.rules.empty, self, self.token, status=None)
        except Exception:  # pragma: no cover - nothing more to do
            pass


def current_exchange(scope: Scope) -> _Exchange | None:
    """The middleware's state for the request of ``scope`` (``None`` without the middleware)."""
    exchange = scope.get(_SCOPE_KEY)
    return exchange if isinstance(exchange, _Exchange) else None
