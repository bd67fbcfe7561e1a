"""The one exception the request handlers raise: an HTTP error with a ``detail`` string."""

from __future__ import annotations


class ApiError(Exception):
    """Answered as ``{"detail": detail}`` with ``status``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = headers or {}
