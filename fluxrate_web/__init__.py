"""fluxrate-web: usage-based billing for Starlette/FastAPI, Django and Flask.

The public names are imported lazily (PEP 562), so ``import fluxrate_web`` stays cheap and
imports no web framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fluxrate_web._version import __version__

if TYPE_CHECKING:
    from fluxrate_web.core.client import FluxrateClient
    from fluxrate_web.core.config import Config, load_config
    from fluxrate_web.core.errors import (
        APIError,
        AuthenticationError,
        ConfigError,
        FluxrateError,
        InvalidUsageError,
        NotFoundError,
        RateLimitedError,
        ServerError,
        TransportError,
        ValidationError,
    )
    from fluxrate_web.core.events import UsageEvent
    from fluxrate_web.core.metering import Metering, RequestView, RoutePlan, record
    from fluxrate_web.core.quantities import ResponseInfo
    from fluxrate_web.core.rules import meter

__all__ = [
    "APIError",
    "AuthenticationError",
    "Config",
    "ConfigError",
    "FluxrateClient",
    "FluxrateError",
    "InvalidUsageError",
    "Metering",
    "NotFoundError",
    "RateLimitedError",
    "RequestView",
    "ResponseInfo",
    "RoutePlan",
    "ServerError",
    "TransportError",
    "UsageEvent",
    "ValidationError",
    "__version__",
    "load_config",
    "meter",
    "record",
]

_LAZY = {
    "Config": "fluxrate_web.core.config",
    "load_config": "fluxrate_web.core.config",
    "Metering": "fluxrate_web.core.metering",
    "RequestView": "fluxrate_web.core.metering",
    "RoutePlan": "fluxrate_web.core.metering",
    "record": "fluxrate_web.core.metering",
    "ResponseInfo": "fluxrate_web.core.quantities",
    "meter": "fluxrate_web.core.rules",
    "FluxrateClient": "fluxrate_web.core.client",
    "UsageEvent": "fluxrate_web.core.events",
    "APIError": "fluxrate_web.core.errors",
    "AuthenticationError": "fluxrate_web.core.errors",
    "ConfigError": "fluxrate_web.core.errors",
    "FluxrateError": "fluxrate_web.core.errors",
    "InvalidUsageError": "fluxrate_web.core.errors",
    "NotFoundError": "fluxrate_web.core.errors",
    "RateLimitedError": "fluxrate_web.core.errors",
    "ServerError": "fluxrate_web.core.errors",
    "TransportError": "fluxrate_web.core.errors",
    "ValidationError": "fluxrate_web.core.errors",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'fluxrate_web' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
