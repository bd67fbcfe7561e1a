"""The framework-free core: events, the client and its background delivery."""

from fluxrate_web.core.client import ClientStats, FluxrateClient, capture_events
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

__all__ = [
    "APIError",
    "AuthenticationError",
    "ClientStats",
    "ConfigError",
    "FluxrateClient",
    "FluxrateError",
    "InvalidUsageError",
    "NotFoundError",
    "RateLimitedError",
    "ServerError",
    "TransportError",
    "UsageEvent",
    "ValidationError",
    "capture_events",
]
