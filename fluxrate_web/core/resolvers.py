"""Customer resolvers: who pays for a request.

One small spec language, shared by ``fluxrate.yaml``, settings and the ``@meter`` decorator:

=========================  =====================================================================
``header:NAME``            a request header (case-insensitive)
``user:ATTR.PATH``         an attribute path of the framework's authenticated user; an
                           anonymous user (``is_authenticated`` false) is no customer
``state:NAME[.PATH]``      request state: Starlette ``request.state``, ``flask.g``, a Django
                           request attribute (then an attribute path inside it)
``query:NAME``             a query-string parameter
``callable:module.func``   a function given the framework's request; may be ``async``
a Python callable          the same, given directly (sync or async)
a list                     fallbacks: the first one that finds a customer wins
=========================  =====================================================================

Each spec is compiled once into a small function of a :class:`RequestView`. A value is turned
into ``str``; ``None`` and the empty string mean "no customer".
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

from fluxrate_web.core._log import warn_limited
from fluxrate_web.core.errors import ConfigError

__all__ = [
    "CustomerResolver",
    "CustomerSpec",
    "RequestView",
    "ResolverSpec",
    "compile_resolver",
    "describe_resolver",
    "import_dotted",
    "is_async_callable",
    "parse_resolver_spec",
]

CustomerSpec: TypeAlias = "str | Callable[..., Any]"
ResolverSpec: TypeAlias = "CustomerSpec | Sequence[CustomerSpec]"

_Sync = Callable[["RequestView"], "str | None"]

RESOLVER_EXPECTED = (
    "expected a customer resolver such as 'header:X-Customer-Id', 'user:organization.external_id',"
    " 'state:customer_id', 'query:customer', 'callable:myapp.billing.customer_of', or a list of"
    " those (fallbacks in order)"
)
_KINDS = ("header", "user", "state", "query", "callable")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[.:][A-Za-z_][A-Za-z0-9_]*)+\Z")
_ATTR_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_0-9][A-Za-z0-9_]*)*\Z")
_HEADER = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


@runtime_checkable
class RequestView(Protocol):
    """What an adapter shows core of one request. Every method is cheap and never raises.

    ``header`` and ``query`` are given names exactly as configured, except that core passes
    header names already lower-cased; an adapter must still match header names case-insensitively.
    """

    native: object

    def header(self, name: str) -> str | None: ...

    def query(self, name: str) -> str | None: ...

    def state(self, name: str) -> object | None: ...

    def user(self) -> object | None: ...


def is_async_callable(obj: object) -> bool:
    """Whether calling ``obj`` returns an awaitable (``async def``, or an object whose
    ``__call__`` is ``async def``)."""
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 - we want the method itself
    return call is not None and not inspect.isfunction(obj) and inspect.iscoroutinefunction(call)


def import_dotted(path: str) -> Any:
    """Import ``package.module.attr`` (or ``package.module:attr.sub``). Raises ``ImportError``
    or ``AttributeError`` with a message naming the path."""
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        module = importlib.import_module(module_name)
        obj: Any = module
        for part in attr_path.split("."):
            obj = getattr(obj, part)
        return obj
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing != module_name and not module_name.startswith(missing + "."):
                raise  # the module exists but failed to import something else
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module named {parts[0]!r}")


def parse_resolver_spec(value: object) -> tuple[CustomerSpec, ...]:
    """Check the syntax of a resolver spec (no imports). Returns the specs as a tuple.

    Raises ``ValueError`` with a message for the user (the caller adds file, line and key).
    """
    items: Sequence[object]
    if isinstance(value, str) or callable(value):
        items = (value,)
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = value
        if not items:
            raise ValueError(f"empty list: {RESOLVER_EXPECTED}")
    else:
        raise ValueError(f"{RESOLVER_EXPECTED}; got {type(value).__name__}")
    result: list[CustomerSpec] = []
    for i, item in enumerate(items):
        where = f"[{i}]: " if len(items) > 1 or not isinstance(value, str | type(None)) else ""
        if callable(item) and not isinstance(item, str):
            result.append(item)
            continue
        if not isinstance(item, str):
            raise ValueError(f"{where}{RESOLVER_EXPECTED}; got {type(item).__name__}")
        kind, sep, arg = item.partition(":")
        kind = kind.strip().lower()
        arg = arg.strip()
        if not sep or kind not in _KINDS:
            raise ValueError(f"{where}{RESOLVER_EXPECTED}; got {item!r}")
        if not arg:
            raise ValueError(f"{where}'{kind}:' needs a name after the colon")
        if kind == "header" and not _HEADER.match(arg):
            raise ValueError(f"{where}{arg!r} is not a valid header name")
        if kind in ("user", "state") and not _ATTR_PATH.match(arg):
            raise ValueError(f"{where}{arg!r} is not an attribute path such as 'org.external_id'")
        if kind == "callable" and not _DOTTED.match(arg):
            raise ValueError(f"{where}{arg!r} is not a dotted path such as 'myapp.billing.func'")
        result.append(f"{kind}:{arg}")
    return tuple(result)


def describe_resolver(specs: Sequence[CustomerSpec]) -> str:
    """A short human description, for ``fluxrate-web check`` and log lines."""
    if not specs:
        return "(none)"
    names = []
    for spec in specs:
        if isinstance(spec, str):
            names.append(spec)
        else:
            module = getattr(spec, "__module__", None) or ""
            qualname = getattr(spec, "__qualname__", None) or type(spec).__qualname__
            names.append(f"callable:{module}.{qualname}" if module else f"callable:{qualname}")
    return " | ".join(names)


def _coerce(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    text = str(value)
    return text or None


def _walk(obj: object, parts: tuple[str, ...]) -> object | None:
    for part in parts:
        if obj is None:
            return None
        obj = obj.get(part) if isinstance(obj, Mapping) else getattr(obj, part, None)
    return obj


def _authenticated(user: object) -> bool:
    flag = getattr(user, "is_authenticated", True)
    if callable(flag):  # very old Django, some custom user classes
        try:
            flag = flag()
        except Exception:
            return False
    return bool(flag)


def _failed(spec: str, exc: BaseException) -> None:
    warn_limited(
        f"resolver-failed:{spec}",
        "customer resolver %s raised %s: %s; treated as no customer",
        spec,
        type(exc).__name__,
        exc,
    )


def _compile_one(spec: CustomerSpec, where: str) -> tuple[Callable[[RequestView], Any], bool]:
    """Compile one spec to ``(function of view, returns_awaitable)``. The functions never
    raise: an exception is logged (rate-limited) and means "no customer"."""
    if not isinstance(spec, str):
        func = spec
        is_async = is_async_callable(func)
        label = describe_resolver((func,))

        def call_native(view: RequestView, _f: Callable[..., Any] = func, _l: str = label) -> Any:
            try:
                return _f(view.native)
            except Exception as exc:
                _failed(_l, exc)
                return None

        return call_native, is_async
    kind, _, arg = spec.partition(":")
    if kind == "header":
        lowered = arg.lower()

        def header(view: RequestView, _n: str = lowered, _s: str = spec) -> str | None:
            try:
                return view.header(_n) or None
            except Exception as exc:
                _failed(_s, exc)
                return None

        return header, False
    if kind == "query":

        def query(view: RequestView, _n: str = arg, _s: str = spec) -> str | None:
            try:
                return view.query(_n) or None
            except Exception as exc:
                _failed(_s, exc)
                return None

        return query, False
    if kind == "user":
        parts = tuple(arg.split("."))

        def user(view: RequestView, _p: tuple[str, ...] = parts, _s: str = spec) -> str | None:
            try:
                who = view.user()
                if who is None or not _authenticated(who):
                    return None
                return _coerce(_walk(who, _p))
            except Exception as exc:
                _failed(_s, exc)
                return None

        return user, False
    if kind == "state":
        first, *rest = arg.split(".")
        tail = tuple(rest)

        def state(
            view: RequestView, _n: str = first, _p: tuple[str, ...] = tail, _s: str = spec
        ) -> str | None:
            try:
                value = view.state(_n)
                return _coerce(_walk(value, _p) if _p else value)
            except Exception as exc:
                _failed(_s, exc)
                return None

        return state, False
    if kind == "callable":
        try:
            func = import_dotted(arg)
        except Exception as exc:
            raise ConfigError(f"{where}: cannot import {arg!r}: {exc}") from None
        if not callable(func):
            raise ConfigError(f"{where}: {arg!r} is not callable")
        return _compile_one(func, where)
    raise ConfigError(f"{where}: {RESOLVER_EXPECTED}; got {spec!r}")  # pragma: no cover


class CustomerResolver:
    """A compiled resolver: call :meth:`resolve` (sync) or :meth:`resolve_async`.

    ``is_async`` is true when one of the specs is an async callable; :meth:`resolve` then skips
    it (it cannot await) and logs nothing: call :meth:`resolve_async` from async code.
    """

    __slots__ = ("_funcs", "_single", "description", "is_async", "resolve", "specs")

    def __init__(self, specs: Sequence[CustomerSpec], where: str = "customer") -> None:
        self.specs = tuple(specs)
        compiled = [_compile_one(spec, where) for spec in self.specs]
        self._funcs: tuple[tuple[Callable[[RequestView], Any], bool], ...] = tuple(compiled)
        self.is_async = any(flag for _, flag in compiled)
        self.description = describe_resolver(self.specs)
        self.resolve: _Sync
        if not compiled:
            self.resolve = _none
        elif len(compiled) == 1 and not compiled[0][1] and isinstance(self.specs[0], str):
            self.resolve = compiled[0][0]  # a built-in: already returns str | None
        else:
            self.resolve = self._resolve_many

    def _resolve_many(self, view: RequestView) -> str | None:
        for index, (func, is_async) in enumerate(self._funcs):
            if is_async:
                continue
            value = func(view)
            if inspect.isawaitable(value):  # a sync-looking callable that returned a coroutine
                _discard(value)
                continue
            try:
                text = _coerce(value)
            except Exception as exc:  # a __str__ that raises
                _failed(describe_resolver(self.specs[index : index + 1]), exc)
                continue
            if text is not None:
                return text
        return None

    async def resolve_async(self, view: RequestView) -> str | None:
        """Resolve, awaiting async callables. Never raises (an exception means "nobody")."""
        for index, (func, _is_async) in enumerate(self._funcs):
            value = func(view)
            if inspect.isawaitable(value):
                try:
                    value = await value
                except Exception as exc:
                    _failed(describe_resolver(self.specs[index : index + 1]), exc)
                    continue
            try:
                text = _coerce(value)
            except Exception as exc:  # a __str__ that raises
                _failed(describe_resolver(self.specs[index : index + 1]), exc)
                continue
            if text is not None:
                return text
        return None

    def __bool__(self) -> bool:
        return bool(self._funcs)

    def __repr__(self) -> str:
        return f"CustomerResolver({self.description})"


def _none(view: RequestView) -> None:
    return None


def _discard(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


def compile_resolver(spec: ResolverSpec | None, where: str = "customer") -> CustomerResolver:
    """Parse and compile ``spec`` (``None`` = no resolver). Raises :class:`ConfigError`."""
    if spec is None:
        return CustomerResolver((), where)
    try:
        specs = parse_resolver_spec(spec)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return CustomerResolver(specs, where)
