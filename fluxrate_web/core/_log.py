"""Logging helpers shared by fluxrate-web modules.

Everything is logged under the ``fluxrate_web`` logger (or a child). A problem that repeats, such
as every event failing during an outage, is logged once per ``interval`` per *key*; the next line
after the interval says how many were suppressed::

    from fluxrate_web.core._log import warn_limited
    warn_limited("delivery-failed", "event delivery failed: %s", reason)
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["log_limited", "logger", "reset_limits", "warn_limited"]

logger = logging.getLogger("fluxrate_web")

DEFAULT_INTERVAL = 60.0

_lock = threading.Lock()
# key -> [monotonic time of the last line logged, suppressed count since]
_state: dict[str, list[float]] = {}
_MAX_KEYS = 1024


def log_limited(
    level: int,
    key: str,
    msg: str,
    *args: Any,
    interval: float = DEFAULT_INTERVAL,
    log: logging.Logger | None = None,
) -> bool:
    """Log ``msg % args`` at ``level`` unless a line with the same ``key`` was logged within
    ``interval`` seconds. Returns whether the line was logged. Thread-safe, never raises."""
    target = log or logger
    if not target.isEnabledFor(level):
        return False
    now = time.monotonic()
    with _lock:
        entry = _state.get(key)
        if entry is not None and now - entry[0] < interval:
            entry[1] += 1
            return False
        suppressed = int(entry[1]) if entry is not None else 0
        if entry is None and len(_state) >= _MAX_KEYS:
            _state.clear()
        _state[key] = [now, 0]
    if suppressed:
        msg = f"{msg} (%d similar messages suppressed in the last %.0f s)"
        args = (*args, suppressed, interval)
    try:
        target.log(level, msg, *args)
    except Exception:  # pragma: no cover - a broken handler must not break the caller
        return False
    return True


def warn_limited(key: str, msg: str, *args: Any, interval: float = DEFAULT_INTERVAL) -> bool:
    """``log_limited(logging.WARNING, key, msg, *args)``."""
    return log_limited(logging.WARNING, key, msg, *args, interval=interval)


def reset_limits() -> None:
    """Forget every rate-limit window (tests use this to see the next warning)."""
    with _lock:
        _state.clear()
