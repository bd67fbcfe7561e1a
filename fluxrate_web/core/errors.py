"""The exception hierarchy of fluxrate-web.

Everything raised on purpose by the library derives from :class:`FluxrateError`. Messages never
contain the API key or the access token: texts that come from a server or the network are passed
through :func:`fluxrate_web.core.transport.redact` before they are put in an exception.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConfigError",
    "FluxrateError",
    "InvalidUsageError",
    "NotFoundError",
    "RateLimitedError",
    "ServerError",
    "TransportError",
    "ValidationError",
]


class FluxrateError(Exception):
    """Base class of every error fluxrate-web raises."""


class ConfigError(FluxrateError, ValueError):
    """A configuration problem. Messages read ``file:line: key: why`` when a file is involved."""


class InvalidUsageError(FluxrateError, ValueError):
    """A usage event that cannot be built: bad quantity, meter, customer, metadata, timestamp."""


class APIError(FluxrateError):
    """The API answered with an error status.

    ``status`` is the HTTP status (``None`` when unknown) and ``detail`` the ``detail`` (or
    ``message``) field of the JSON error body, when there was one.
    """

    def __init__(self, message: str, *, status: int | None = None, detail: str | None = None):
        super().__init__(message)
        self.status = status
        self.detail = detail


class AuthenticationError(APIError):
    """401 or 403: the API key (or access token) is missing, wrong, revoked or lacks a scope."""


class ValidationError(APIError):
    """400 or 422: the API refused the event's content."""


class NotFoundError(APIError):
    """404: unknown meter token (or customer, on strict servers)."""


class RateLimitedError(APIError):
    """429. ``retry_after`` is the delay in seconds the server asked for, if it said."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        detail: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, detail=detail)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx, or 408: the server failed; the request may be retried."""


class TransportError(FluxrateError):
    """The request did not get an HTTP answer: connection refused or reset, timeout, TLS, proxy."""
