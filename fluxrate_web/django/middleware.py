"""``FluxrateMiddleware``: translates one Django request into calls on the metering seam.

Sync- and async-capable: under WSGI it runs as a plain function call, under ASGI as a coroutine,
so it never adds a sync/async switch (no thread hop) to the stack. Per request it

* opens the ``record()`` scope before anything else runs (``__call__``),
* looks up the cached :class:`RoutePlan` of the resolved view in ``process_view`` (function
  views, ``as_view()`` class-based views and DRF views/viewsets, with the handler method of the
  HTTP method) and answers ``401`` there when the plan rejects requests without a customer,
* bills a complete response when it passes back through the middleware, and a streamed one
  (``StreamingHttpResponse``, ``FileResponse``) once its content has been consumed or closed,
  exactly once.

Nothing here decides what to bill: rules, customers, quantities and delivery are core's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Final

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.urls import ResolverMatch
from django.utils.functional import LazyObject, empty

from fluxrate_web.core._log import log_limited
from fluxrate_web.core.metering import RoutePlan
from fluxrate_web.django import _runtime
from fluxrate_web.django._views import view_handler

__all__ = ["DjangoRequestView", "FluxrateMiddleware", "plan_for"]

logger = logging.getLogger("fluxrate_web.django")

_STATE: Final = _runtime.STATE
_PENDING: Final = "_fluxrate_pending"
_UNSET: Final[Any] = object()
_now = time.perf_counter

# Plans are cached per (route, method, view) only for these methods: a client can send any
# method name, and the cache must not grow with them.
_CACHED_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_MAX_PLANS: Final = 4096

_META_SPECIAL: Final = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
_meta_keys: dict[str, str] = {}

REJECT_BODY: Final = {"detail": "This endpoint is billed per customer and none was identified."}

GetResponse = Callable[[HttpRequest], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def _meta_key(name: str) -> str:
    key = _meta_keys.get(name)
    if key is None:
        lowered = name.lower()
        key = _META_SPECIAL.get(lowered) or "HTTP_" + lowered.upper().replace("-", "_")
        if len(_meta_keys) < 1024:
            _meta_keys[name] = key
    return key


class DjangoRequestView:
    """The :class:`~fluxrate_web.core.metering.RequestView` of a Django ``HttpRequest``.

    ``header`` reads ``request.META`` (no ``request.headers`` dict is built), ``query`` reads
    ``request.GET``, ``state(name)`` is ``getattr(request, name)`` (``request.auth`` of DRF,
    attributes your middleware sets) and ``user()`` is ``request.user`` when authenticated.
    """

    __slots__ = ("_user", "native", "request")

    native: object  # the RequestView protocol's name for it, handed to callables

    def __init__(self, request: HttpRequest) -> None:
        self.native = request
        self.request = request
        self._user: Any = _UNSET

    def header(self, name: str) -> str | None:
        value = self.request.META.get(_meta_keys.get(name) or _meta_key(name))
        if value is None or isinstance(value, str):
            return value
        return str(value)

    def query(self, name: str) -> str | None:
        try:
            value = self.request.GET.get(name)
        except Exception:  # a malformed query string
            return None
        return value if isinstance(value, str) else None

    def state(self, name: str) -> object | None:
        try:
            return getattr(self.request, name, None)
        except Exception:  # a lazy attribute that failed to evaluate
            return None

    def user(self) -> object | None:
        user = self._user
        if user is _UNSET:
            user = getattr(self.request, "user", None)
        if user is None:
            return None
        try:
            authenticated = getattr(user, "is_authenticated", True)
        except Exception as exc:  # e.g. a lazy user evaluated in async code without a prefetch
            logger.debug("fluxrate: request.user could not be evaluated: %r", exc)
            return None
        if authenticated is False:
            return None
        found: object = user
        return found

    async def aprefetch_user(self) -> None:
        """Under ASGI, evaluate ``AuthenticationMiddleware``'s lazy ``request.user`` with
        ``await request.auser()``: evaluating it from async code would touch the database
        synchronously. Does nothing when the user is already known."""
        if self._user is not _UNSET:
            return
        request = self.request
        user = request.__dict__.get("user")
        if not isinstance(user, LazyObject) or user._wrapped is not empty:
            return
        auser = getattr(request, "auser", None)
        if auser is None:
            return
        try:
            self._user = await auser()
        except Exception as exc:
            logger.debug("fluxrate: request.auser() failed: %r", exc)
            self._user = None

    def __repr__(self) -> str:
        return f"<DjangoRequestView {self.request!r}>"


def _url_name(match: ResolverMatch) -> str | None:
    if not match.url_name:
        return None
    if match.namespaces:
        return ":".join([*match.namespaces, match.url_name])
    return match.url_name


def plan_for(
    runtime: _runtime.Runtime, match: ResolverMatch | None, callback: object, method: str
) -> RoutePlan:
    """The cached plan of ``method`` on the view ``callback`` resolved by ``match``."""
    route = match.route if match is not None else None
    plans = runtime.plans
    key = (route, method, callback)
    hashable = True
    try:
        found = plans.get(key)
    except TypeError:  # an unhashable view callable
        found = None
        hashable = False
    if found is not None:
        return found
    metering = runtime.metering
    try:
        if match is None:
            plan = metering.route(None, method)
        else:
            # Core normalises Django's route ("v1/items/<int:pk>/", no leading slash, the full
            # route of nested include()s) to "/v1/items/{}".
            plan = metering.route(
                route,
                method,
                callback,
                handler=view_handler(callback, method),
                name=_url_name(match),
            )
    except Exception as exc:  # a @meter naming a meter missing from the config
        log_limited(
            logging.ERROR,
            f"django-route:{route}",
            "fluxrate: %s %s is not metered: %s",
            method,
            route,
            exc,
            log=logger,
        )
        plan = metering.rules.empty
    if hashable and method in _CACHED_METHODS and len(plans) < _MAX_PLANS:
        plans[key] = plan
    return plan


def _uses_user(plan: RoutePlan) -> bool:
    """Whether resolving the plan's customer may read ``request.user`` (a ``user:`` spec, or a
    callable, which may do anything)."""
    resolvers = [plan.resolver, *(m.resolver for m in plan.meters if m.resolver is not None)]
    for resolver in resolvers:
        for spec in resolver.specs:
            if not isinstance(spec, str) or spec.startswith(("user:", "callable:")):
                return True
    return False


def _wants_user(
    plan: RoutePlan, scope: list[Any], status: int | None, completed: bool, error: bool
) -> bool:
    """Whether finishing this request will resolve a customer through ``request.user``."""
    if not plan.meters and not scope:
        return False
    if plan.uniform and not plan.is_billable(status, completed, error):
        return False
    return _uses_user(plan)


class _Pending(DjangoRequestView):
    """One request on its way through the middleware, until it is billed (once). It is also
    the request's :class:`DjangoRequestView` (one object per request)."""

    __slots__ = (
        "done",
        "error",
        "metering",
        "plan",
        "response",
        "runtime",
        "scope",
        "sent",
        "start",
        "started",
    )

    # set by attach(), for streamed responses only
    response: HttpResponseBase
    sent: int
    started: bool

    def __init__(self, runtime: _runtime.Runtime, request: HttpRequest) -> None:
        self.native = request
        self.request = request
        self._user = _UNSET
        self.runtime = runtime
        metering = self.metering = runtime.metering
        self.plan: RoutePlan | None = None
        self.error = False
        self.done = False
        self.scope = metering.open_scope()
        self.start = _now()

    # -- the plan ------------------------------------------------------------------------------

    def final_plan(self) -> RoutePlan:
        plan = self.plan
        if plan is None:
            # process_view did not run: no URL matched (404), or an earlier middleware answered.
            request = self.request
            match = getattr(request, "resolver_match", None)
            callback = match.func if match is not None else None
            plan = plan_for(self.runtime, match, callback, request.method or "GET")
            self.plan = plan
        return plan

    def _request_bytes(self) -> int:
        length = self.request.META.get("CONTENT_LENGTH")
        if not length:
            return 0
        try:
            return max(int(length), 0)
        except (TypeError, ValueError):
            return 0

    # -- complete responses --------------------------------------------------------------------

    def bill(self, response: HttpResponseBase) -> None:
        self.done = True
        plan = self.plan or self.final_plan()
        if not getattr(plan, "needs_info", True):
            # Constant quantities (the common case): sizes and duration are not read.
            self.metering.finish(
                plan,
                self,
                self.scope,
                status=response.status_code,
                response_headers=response.headers,
                error=self.error,
            )
            return
        try:
            size = len(response.content)  # type: ignore[attr-defined]
        except Exception:
            size = 0
        self.metering.finish(
            plan,
            self,
            self.scope,
            status=response.status_code,
            request_bytes=self._request_bytes(),
            response_bytes=size,
            response_headers=response.headers,
            duration_ms=(_now() - self.start) * 1000.0,
            error=self.error,
        )

    async def abill(self, response: HttpResponseBase) -> None:
        plan = self.final_plan()
        status = response.status_code
        if _wants_user(plan, self.scope, status, True, self.error):
            await self.aprefetch_user()
        if not plan.needs_async:
            self.bill(response)
            return
        self.done = True
        try:
            size = len(response.content)  # type: ignore[attr-defined]
        except Exception:
            size = 0
        await self.metering.finish_async(
            plan,
            self,
            self.scope,
            status=status,
            request_bytes=self._request_bytes(),
            response_bytes=size,
            response_headers=response.headers,
            duration_ms=(_now() - self.start) * 1000.0,
            error=self.error,
        )

    def fail(self) -> None:
        """get_response raised (or the ASGI task was cancelled): close the scope, bill nothing
        unless the config says so."""
        if self.done:
            return
        self.done = True
        self.metering.finish(
            self.final_plan(),
            self,
            self.scope,
            status=None,
            request_bytes=self._request_bytes(),
            duration_ms=(_now() - self.start) * 1000.0,
            completed=False,
            error=True,
        )

    # -- streamed responses --------------------------------------------------------------------

    def _stream_kwargs(self, completed: bool, error: bool) -> dict[str, Any]:
        response = self.response
        assert response is not None
        return {
            "status": response.status_code,
            "request_bytes": self._request_bytes(),
            "response_bytes": self.sent,
            "response_headers": response.headers,
            "duration_ms": (_now() - self.start) * 1000.0,
            "completed": completed,
            "error": error or self.error,
        }

    def stream_end(self, completed: bool, error: bool = False) -> None:
        if self.done:
            return
        self.done = True
        self.metering.finish(
            self.final_plan(), self, self.scope, **self._stream_kwargs(completed, error)
        )

    async def astream_end(self) -> None:
        if self.done:
            return
        plan = self.final_plan()
        assert self.response is not None
        if _wants_user(plan, self.scope, self.response.status_code, True, self.error):
            await self.aprefetch_user()
        if not plan.needs_async:
            self.stream_end(completed=True)
            return
        self.done = True
        await self.metering.finish_async(plan, self, self.scope, **self._stream_kwargs(True, False))

    def on_close(self) -> None:
        """Appended to the response's closers: ``response.close()`` runs it once the server (or
        the test client) is done with the response."""
        if self.done:
            return
        response = self.response
        if not self.started and getattr(response, "file_to_stream", None) is not None:
            # A WSGI server sent the file itself (``wsgi.file_wrapper``/sendfile) without
            # iterating the content; Content-Length is what it sent.
            try:
                self.sent = int(response.headers.get("Content-Length") or 0)
            except ValueError:
                self.sent = 0
            self.stream_end(completed=True)
        else:
            self.stream_end(completed=False)

    def attach(self, response: HttpResponseBase) -> None:
        """Count the streamed bytes and bill when the content is exhausted or closed."""
        self.response = response
        self.sent = 0
        self.started = False
        file_to_stream = getattr(response, "file_to_stream", None)
        content = response.streaming_content  # type: ignore[attr-defined]
        if response.is_async:  # type: ignore[attr-defined]
            response.streaming_content = _count_async(self, content)  # type: ignore[attr-defined]
        else:
            response.streaming_content = _count_sync(self, content)  # type: ignore[attr-defined]
        if file_to_stream is not None:
            # The setter forgets the file; keep it so WSGI servers can still use sendfile.
            response.file_to_stream = file_to_stream  # type: ignore[attr-defined]
        response._resource_closers.append(self.on_close)  # type: ignore[attr-defined]


def _count_sync(pending: _Pending, content: Iterator[bytes]) -> Iterator[bytes]:
    pending.started = True
    try:
        for chunk in content:
            pending.sent += len(chunk)
            yield chunk
    except GeneratorExit:
        pending.stream_end(completed=False)
        raise
    except BaseException:
        pending.stream_end(completed=False, error=True)
        raise
    pending.stream_end(completed=True)


async def _count_async(pending: _Pending, content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    pending.started = True
    try:
        async for chunk in content:
            pending.sent += len(chunk)
            yield chunk
    except GeneratorExit:
        pending.stream_end(completed=False)
        raise
    except BaseException:
        pending.stream_end(completed=False, error=True)
        raise
    await pending.astream_end()


class FluxrateMiddleware:
    """Meter requests. Add it to ``MIDDLEWARE`` (anywhere after ``AuthenticationMiddleware``
    is usual; it only needs ``request.user`` when the response is billed)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            # The handler stack is async (ASGI): be a coroutine function, and give Django an
            # async process_view so it is awaited in place rather than run in a thread.
            markcoroutinefunction(self)
            self.process_view = self._process_view_async  # type: ignore[method-assign,assignment]
        _runtime.current()  # build the core now if the app is not in INSTALLED_APPS

    def __repr__(self) -> str:
        return f"<FluxrateMiddleware async={self.async_mode}>"

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        runtime = _STATE.runtime
        if runtime is None:
            return self.get_response(request)
        pending = _Pending(runtime, request)
        setattr(request, _PENDING, pending)
        try:
            response: HttpResponseBase = self.get_response(request)  # type: ignore[assignment]
        except BaseException:
            pending.fail()
            raise
        if response.streaming:
            pending.final_plan()
            pending.attach(response)
        else:
            pending.bill(response)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        runtime = _STATE.runtime
        if runtime is None:
            return await self.get_response(request)  # type: ignore[no-any-return,misc]
        pending = _Pending(runtime, request)
        setattr(request, _PENDING, pending)
        try:
            response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
        except BaseException:
            pending.fail()
            raise
        if response.streaming:
            pending.final_plan()
            pending.attach(response)
        else:
            await pending.abill(response)
        return response

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        pending: _Pending | None = request.__dict__.get(_PENDING)
        if pending is None:
            return None
        plan = plan_for(pending.runtime, request.resolver_match, view_func, request.method or "")
        pending.plan = plan
        if plan.reject_missing_customer and plan.customer(pending) is None:
            return _reject()
        return None

    async def _process_view_async(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponseBase | None:
        pending: _Pending | None = request.__dict__.get(_PENDING)
        if pending is None:
            return None
        plan = plan_for(pending.runtime, request.resolver_match, view_func, request.method or "")
        pending.plan = plan
        if plan.reject_missing_customer:
            if _uses_user(plan):
                await pending.aprefetch_user()
            if plan.needs_async:
                customer = await plan.customer_async(pending)
            else:
                customer = plan.customer(pending)
            if customer is None:
                return _reject()
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        pending: _Pending | None = request.__dict__.get(_PENDING)
        if pending is not None:
            pending.error = True


def _reject() -> JsonResponse:
    return JsonResponse(REJECT_BODY, status=401)
