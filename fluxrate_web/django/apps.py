"""The Django app: builds the metering core when Django is ready and registers the checks."""

from __future__ import annotations

import logging
import signal
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from django.apps import AppConfig

logger = logging.getLogger("fluxrate_web.django")


class FluxrateConfig(AppConfig):
    name = "fluxrate_web.django"
    label = "fluxrate"
    verbose_name = "Fluxrate usage metering"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        from fluxrate_web.django import _runtime, checks

        checks.register()
        setting_changed.connect(_runtime.on_setting_changed, dispatch_uid="fluxrate_web.django")
        # Compiles the rules and starts the delivery worker. Touches no network: a bad config
        # is logged here and reported by `manage.py check` (fluxrate.E001), never raised.
        _runtime.current()
        if len(sys.argv) > 1 and sys.argv[1] == "runserver":
            exit_on_sigterm()


# -- runserver and SIGTERM -------------------------------------------------------------------
#
# runserver leaves SIGTERM at its default action (death, no exit hook). Merely raising
# SystemExit is not enough either: the exit flush then runs while the interpreter finalizes,
# and runserver's daemon request threads keep answering meanwhile; once finalization has
# begun, concurrent.futures refuses new work, so every async view (asgiref needs an executor)
# answers 500. So the handler stops the server itself first, while the interpreter is intact.


class _Requests:
    """Requests inside Django's handler (``request_started`` .. ``request_finished``), and the
    gate the SIGTERM handler closes."""

    __slots__ = ("active", "closing", "cond")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.active = 0
        self.closing = False


_requests = _Requests()
_never = threading.Event()  # never set: what a request arriving after SIGTERM waits on
_DISPATCH_UID = "fluxrate_web.django.runserver"
_DEFAULT_DEADLINE = 5.0  # the client's default shutdown_timeout (metering off or invalid)
_ADMIT_AFTER_SIGTERM = 0.5  # seconds requests on open connections are still let in


def _request_started(**_kwargs: Any) -> None:
    requests = _requests
    with requests.cond:
        if not requests.closing:
            requests.active += 1
            return
    # A request on a kept-alive connection after SIGTERM: it never reaches the app (the
    # metering core is closing, and answering 5xx is not ours to do). The thread is one of
    # runserver's daemon threads; the exit resets the connection, as a stopped server would.
    _never.wait()


def _request_finished(**_kwargs: Any) -> None:
    requests = _requests
    with requests.cond:
        if requests.active > 0:
            requests.active -= 1
        if requests.active == 0:
            requests.cond.notify_all()


def _find_runserver() -> tuple[socketserver.TCPServer, bool] | None:
    """runserver's server, found where its ``serve_forever()`` runs (runserver keeps it in a
    local), and whether that is the calling thread (``--noreload``). ``None`` when it is not
    serving (not bound yet, or another server: daphne, a custom command)."""
    from django.core.servers.basehttp import WSGIServer

    code = socketserver.BaseServer.serve_forever.__code__
    me = threading.get_ident()
    for ident, top in sys._current_frames().items():
        frame: FrameType | None = top
        while frame is not None:
            if frame.f_code is code:
                server = frame.f_locals.get("self")
                if isinstance(server, WSGIServer) and isinstance(server, socketserver.TCPServer):
                    return server, ident == me
                break
            frame = frame.f_back
    return None


def _shutdown_timeout() -> tuple[float, Callable[[float], None] | None]:
    """The configured ``shutdown_timeout`` and the close of the running metering core."""
    from fluxrate_web.django import _runtime

    runtime = _runtime.STATE.runtime
    if runtime is None:
        return _DEFAULT_DEADLINE, None
    metering = runtime.metering
    return float(metering.config.shutdown_timeout), metering.close


def _stop_runserver(deadline: float | None = None) -> bool:
    """Stop runserver gracefully, from its SIGTERM handler (the main thread). ``False`` (and
    nothing done) when runserver's threaded server is not found in this process.

    In order: no new connection is accepted (the listening socket is closed: clients are
    refused, not left hanging); requests on kept-alive connections are still served for 0.5 s,
    later ones are held unanswered; the requests already inside Django finish; the metering
    core delivers its queue and writes what is left to the failure log (``close()``). All of
    it within ``deadline`` seconds (default ``shutdown_timeout``); the caller then exits."""
    found = _find_runserver()
    if found is None:
        return False
    server, in_this_thread = found
    if not isinstance(server, socketserver.ThreadingMixIn):
        # --nothreading: the requests run in the serve_forever() thread, perhaps under this
        # very handler; waiting for them here would wait for ourselves
        return False
    began = time.monotonic()
    timeout, close = _shutdown_timeout()
    until = began + (timeout if deadline is None else deadline)
    if not in_this_thread:
        # the autoreloader's child: the server runs in its "django-main-thread"; shutdown()
        # returns once serve_forever() has seen the request (within its 0.5 s poll)
        server.shutdown()
    # --noreload: serve_forever() is below this handler and never polls again (the caller
    # raises SystemExit through it)
    try:
        server.socket.close()
    except OSError:  # pragma: no cover - already closed
        pass
    # A request already sent on a kept-alive connection may not have reached Django yet (its
    # thread not scheduled); the client cannot tell it from one served, so it is admitted for
    # a moment (bounded by the deadline) before the gate closes.
    time.sleep(max(0.0, min(_ADMIT_AFTER_SIGTERM, until - time.monotonic())))
    requests = _requests
    with requests.cond:
        requests.closing = True
        if requests.active:
            logger.info(
                "fluxrate: SIGTERM under runserver: no longer accepting connections; "
                "waiting for %d request(s) in flight",
                requests.active,
            )
        requests.cond.wait_for(lambda: requests.active == 0, max(0.0, until - time.monotonic()))
        left = requests.active
    if left:
        logger.warning(
            "fluxrate: %d request(s) still running after %.1f s; exiting without them "
            "(their usage goes to the failure log)",
            left,
            time.monotonic() - began,
        )
    if close is not None:
        try:
            close(max(0.0, until - time.monotonic()))
        except Exception:  # pragma: no cover - close() is documented never to raise
            logger.exception("fluxrate: closing the metering core failed")
    return True


def exit_on_sigterm() -> bool:
    """Under ``manage.py runserver``: make SIGTERM stop the server gracefully, deliver the
    queue, then exit (``SystemExit``), all within ``shutdown_timeout``.

    ``runserver --noreload`` leaves SIGTERM at its default action, which kills the process
    before any exit hook runs; the autoreloader's child only raises ``SystemExit``, so its exit
    flush runs while requests are still being answered. See :func:`_stop_runserver`. A handler
    someone else installed (gunicorn, uvicorn, daphne, the app) is left alone, and a second
    SIGTERM kills at once. ``True`` if the handler was installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    from django.core.signals import request_finished, request_started
    from django.utils.autoreload import autoreload_started

    request_started.connect(_request_started, dispatch_uid=_DISPATCH_UID)
    request_finished.connect(_request_finished, dispatch_uid=_DISPATCH_UID)
    # the autoreloader replaces every SIGTERM handler after ready() (with its own
    # sys.exit(0)); this signal comes afterwards, from the child's main thread
    autoreload_started.connect(_replace_reloader_handler, dispatch_uid=_DISPATCH_UID)
    signal.signal(signal.SIGTERM, _graceful_exit(128 + signal.SIGTERM))
    return True


def _graceful_exit(code: int) -> Callable[[int, FrameType | None], None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            _stop_runserver()
        except Exception:  # the exit must happen whatever went wrong
            logger.exception("fluxrate: stopping runserver gracefully failed")
        raise SystemExit(code)

    return handler


def _replace_reloader_handler(**_kwargs: Any) -> None:
    current = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        return
    if getattr(current, "__module__", None) != "django.utils.autoreload":
        return  # someone else's handler
    signal.signal(signal.SIGTERM, _graceful_exit(0))  # the exit status Django's gave
