"""The failure log: one JSON line per event that was finally not delivered.

Each line::

    {"v": 1, "time": "2026-11-27T15:14:24.123Z", "reason": "retries_exhausted",
     "status": 503, "error": "HTTP 503: try later", "attempts": 8,
     "event": {"meter_token": "...", "customer_external_id": "...", "quantity": 1,
               "timestamp": "...", "idempotency_key": "...", "metadata": {...}}}

The file is created with mode 0600 (an existing file with wider permissions is narrowed to 0600,
with a warning), opened in append mode for each batch and written with one ``write`` per batch,
so several processes can share it. No line contains the API key or the access token.
Without a path, each line is logged at WARNING instead (rate-limited per reason).

``fluxrate-web replay FILE`` (see :mod:`fluxrate_web.core.replay`) sends the events again with
their original idempotency keys and timestamps.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fluxrate_web.core._log import log_limited, logger
from fluxrate_web.core.events import UsageEvent, utc_timestamp
from fluxrate_web.core.transport import redact

__all__ = ["REASONS", "FailureLog", "FailureRecord", "read_failure_log"]

FORMAT_VERSION = 1

REASONS = {
    "rejected": "the API refused the event for good (4xx other than 408/409/429)",
    "retries_exhausted": "still failing after max_attempts attempts or max_retry_age seconds",
    "queue_full": "the in-memory queue held max_queue_size events already",
    "shutdown_deadline": "not delivered when close() or interpreter exit ran out of time",
    "client_closed": "tracked on a client that was already closed",
    "no_api_key": "no API key configured (api_key= or FLUXRATE_API_KEY)",
    "no_access_token": "a REST event (meter_id/customer_id) but no access_token configured",
    "internal_error": "an unexpected error in fluxrate-web itself (a bug: please report it)",
}


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """One line of a failure log, read back."""

    line: int
    event: UsageEvent
    reason: str
    status: int | None
    error: str | None
    attempts: int
    time: str | None


def make_record(
    event: UsageEvent,
    reason: str,
    *,
    status: int | None = None,
    error: str | None = None,
    attempts: int = 0,
) -> dict[str, Any]:
    return {
        "v": FORMAT_VERSION,
        "time": utc_timestamp(),
        "reason": reason,
        "status": status,
        "error": error,
        "attempts": attempts,
        "event": event.to_dict(),
    }


class FailureLog:
    """Where finally-failed events go. Thread-safe; never raises."""

    def __init__(self, path: str | os.PathLike[str] | None, *, secrets: Iterable[str] = ()):
        self.path = os.fspath(path) if path is not None else None
        self._secrets = tuple(s for s in secrets if s)
        self._lock = threading.Lock()
        self._checked_mode = False
        self.written = 0

    def __repr__(self) -> str:
        return f"FailureLog({self.path!r})"

    def add(
        self,
        event: UsageEvent,
        reason: str,
        *,
        status: int | None = None,
        error: str | None = None,
        attempts: int = 0,
    ) -> None:
        self.write([make_record(event, reason, status=status, error=error, attempts=attempts)])

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        lines = []
        for record in records:
            try:
                text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
                if not text.isascii():
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        # A lone surrogate cannot be written as UTF-8; \uXXXX escapes keep the
                        # line valid JSON that json.loads turns back into the very same event.
                        text = json.dumps(record, separators=(",", ":"), default=str)
            except Exception as exc:  # pragma: no cover - records are built from valid events
                text = json.dumps(
                    {"v": FORMAT_VERSION, "reason": "internal_error", "error": str(exc)}
                )
            lines.append(redact(text, self._secrets))
        if self.path is None:
            for record, line in zip(records, lines, strict=True):
                log_limited(
                    logging.WARNING,
                    f"failure-log:{record.get('reason')}",
                    "usage event not delivered (%s; set failed_events_path to keep them): %s",
                    record.get("reason"),
                    line,
                )
            return
        data = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            with self._lock:
                self._append(data)
                self.written += len(lines)
        except OSError as exc:
            log_limited(
                logging.ERROR,
                "failure-log-write",
                "cannot write the failure log %s (%s); %d event(s) lost from it, first: %s",
                self.path,
                exc,
                len(lines),
                lines[0],
            )

    def _append(self, data: bytes) -> None:
        assert self.path is not None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            if not self._checked_mode:
                mode = os.fstat(fd).st_mode
                if stat.S_ISREG(mode) and mode & 0o077:
                    os.fchmod(fd, 0o600)
                    logger.warning(
                        "failure log %s was readable by others (mode %o); changed to 0600",
                        self.path,
                        stat.S_IMODE(mode),
                    )
                self._checked_mode = True
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)


def read_failure_log(
    path: str | os.PathLike[str],
) -> Iterator[tuple[int, str, FailureRecord | None, str | None]]:
    """Yield ``(line_number, raw_line, record, problem)`` for each non-empty line; ``record`` is
    ``None`` and ``problem`` says why when the line cannot be read back as an event."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict) or not isinstance(data.get("event"), dict):
                    raise ValueError("no event object")
                event = UsageEvent.from_dict(data["event"])
            except Exception as exc:
                yield number, line, None, str(exc)[:200]
                continue
            status = data.get("status")
            attempts = data.get("attempts")
            yield (
                number,
                line,
                FailureRecord(
                    number,
                    event,
                    str(data.get("reason") or "unknown"),
                    status if isinstance(status, int) else None,
                    data.get("error") if isinstance(data.get("error"), str) else None,
                    attempts if isinstance(attempts, int) else 0,
                    data.get("time") if isinstance(data.get("time"), str) else None,
                ),
                None,
            )
