"""What a Django URL pattern routes to: the view callable and, for class-based views, the
method that handles one HTTP method."""

from __future__ import annotations

from typing import Any

__all__ = ["view_class", "view_handler", "view_methods"]

_DEFAULT_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# answered by every view without being written for it
_IMPLIED_METHODS = frozenset({"head", "options", "trace"})


def view_class(callback: object) -> type | None:
    """The class behind an ``as_view()`` callable: Django's ``view_class``, DRF's ``cls``."""
    cls = getattr(callback, "view_class", None)
    if cls is None:
        cls = getattr(callback, "cls", None)
    return cls if isinstance(cls, type) else None


def view_handler(callback: object, method: str) -> Any | None:
    """The function that handles ``method`` on a class-based view (``ItemView.get``, a DRF
    viewset action such as ``ItemViewSet.list``), or ``None`` for a function view.

    Follows the dispatch rules of Django (``head`` falls back to ``get``) and DRF
    (``actions={"get": "list"}``)."""
    cls = view_class(callback)
    if cls is None:
        return None
    lowered = method.lower()
    actions = getattr(callback, "actions", None)
    if isinstance(actions, dict):
        name = actions.get(lowered)
        if name is None and lowered == "head":
            name = actions.get("get")
        if name is None:
            return None
    else:
        if lowered not in getattr(cls, "http_method_names", ()):
            return None
        name = lowered
        if lowered == "head" and not hasattr(cls, "head"):
            name = "get"
    return getattr(cls, name, None)


def view_methods(callback: object) -> tuple[str, ...]:
    """The HTTP methods a view answers, for ``manage.py fluxrate routes``: those a class-based
    view implements, or the usual five for a function view (which may answer any)."""
    cls = view_class(callback)
    if cls is None:
        return _DEFAULT_METHODS
    actions = getattr(callback, "actions", None)
    if isinstance(actions, dict):
        # DRF adds "head" to a viewset's actions on its first request: leave it out either way
        return tuple(m.upper() for m in actions if m not in _IMPLIED_METHODS)
    names = getattr(cls, "http_method_names", ())
    return tuple(m.upper() for m in names if m not in _IMPLIED_METHODS and hasattr(cls, m))
