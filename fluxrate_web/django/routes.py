"""Every URL pattern of the project with what it bills, for ``manage.py fluxrate routes``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver

from fluxrate_web.core.metering import Metering, RoutePlan
from fluxrate_web.core.rules import normalize_route, rules_of
from fluxrate_web.django._views import view_class, view_handler, view_methods

__all__ = ["RouteRow", "UrlRoute", "iter_url_routes", "route_rows"]


@dataclass(frozen=True)
class UrlRoute:
    """One URL pattern: ``route`` as ``request.resolver_match.route`` reports it, the namespaced
    URL name, and the view callable."""

    route: str
    name: str | None
    callback: object


@dataclass(frozen=True)
class RouteRow:
    """``route`` is the normalised template endpoint rules match (``/v1/items/{}``)."""

    route: str
    name: str
    methods: str
    meters: str
    customer: str
    source: str


def _join(route1: str, route2: str) -> str:
    # The same join as django.urls.resolvers.URLResolver._join_route.
    if not route1:
        return route2
    return route1 + route2.removeprefix("^")


def iter_url_routes(urlconf: str | None = None) -> Iterator[UrlRoute]:
    """Walk the URL resolver depth first, in the order Django tries the patterns."""

    def walk(
        patterns: list[URLPattern | URLResolver], prefix: str, namespaces: tuple[str, ...]
    ) -> Iterator[UrlRoute]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                spaces = (*namespaces, pattern.namespace) if pattern.namespace else namespaces
                yield from walk(pattern.url_patterns, _join(prefix, str(pattern.pattern)), spaces)
            elif isinstance(pattern, URLPattern):
                name = pattern.name
                if name and namespaces:
                    name = ":".join([*namespaces, name])
                yield UrlRoute(_join(prefix, str(pattern.pattern)), name, pattern.callback)

    yield from walk(get_resolver(urlconf).url_patterns, "", ())


def describe_plan(plan: RoutePlan) -> tuple[str, str]:
    """(meters with their quantities, customer resolver) of a plan."""
    if plan.exempt:
        return "(exempt)", "-"
    if not plan.meters:
        return "-", "-"
    meters = ", ".join(
        m.name if m.constant == 1 else f"{m.name} x {m.quantity.description}" for m in plan.meters
    )
    customers = {plan.resolver.description}
    for m in plan.meters:
        if m.resolver is not None:
            customers.add(m.resolver.description)
    return meters, " ; ".join(sorted(customers))


def _view_path(callback: object) -> str:
    target = getattr(callback, "view_class", None) or getattr(callback, "cls", None) or callback
    module = getattr(target, "__module__", "?")
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{qualname}"


_METHOD_DECORATOR = "@meter on django.utils.decorators."


def _source(source: str, callback: object, method: str) -> str:
    """The plan's source, readable: a rule's file path relative to the working directory, and
    the decorated method for ``method_decorator(meter(...))`` (core only saw Django's dummy)."""
    if source.startswith(_METHOD_DECORATOR):
        handler = view_handler(callback, method)
        cls = view_class(callback)
        if cls is not None:
            for found in (handler, getattr(cls, "dispatch", None)):
                if found is not None and rules_of(found):
                    name = getattr(found, "__name__", method.lower())
                    return f"@meter on {_view_path(callback)}.{name}"
        return f"@meter on {_view_path(callback)}"
    path, sep, rest = source.partition(":")
    if sep and os.path.isabs(path):
        try:
            relative = os.path.relpath(path)
        except ValueError:  # another drive (Windows)
            return source
        if not relative.startswith(".."):
            return f"{relative}:{rest}"
    return source


def route_rows(metering: Metering, urlconf: str | None = None) -> list[RouteRow]:
    """One row per URL pattern and group of methods that bill alike (``*``: a function view,
    billed alike whatever the method)."""
    rows: list[RouteRow] = []
    for url in iter_url_routes(urlconf):
        grouped: dict[tuple[str, str, str], list[str]] = {}
        for method in view_methods(url.callback):
            try:
                plan = metering.route(
                    url.route,
                    method,
                    url.callback,
                    handler=view_handler(url.callback, method),
                    name=url.name,
                )
            except Exception as exc:  # e.g. @meter naming a meter missing from the config
                grouped.setdefault((f"ERROR: {exc}", "-", "-"), []).append(method)
                continue
            meters, customer = describe_plan(plan)
            source = _source(plan.source, url.callback, method)
            grouped.setdefault((meters, customer, source), []).append(method)
        any_method = view_class(url.callback) is None and len(grouped) == 1
        for (meters, customer, source), methods in grouped.items():
            rows.append(
                RouteRow(
                    route=normalize_route(url.route),
                    name=url.name or _view_path(url.callback),
                    methods="*" if any_method else ",".join(methods),
                    meters=meters,
                    customer=customer,
                    source=source,
                )
            )
    return rows
