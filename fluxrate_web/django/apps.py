"""The Django app: builds the metering core when Django is ready and registers the checks."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from django.apps import AppConfig


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


def exit_on_sigterm() -> bool:
    """Make SIGTERM end the process through ``SystemExit`` when nothing else handles it.

    ``manage.py runserver`` leaves SIGTERM at its default action, which kills the process
    before any exit hook runs, so the queue would be lost without a line in the failure log.
    As ``SystemExit`` the interpreter exits normally and the core's exit flush delivers (or
    failure-logs) what is queued within ``shutdown_timeout``. A handler someone else installed
    (gunicorn, uvicorn, the app) is left alone, and a second SIGTERM kills at once."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False

    def _exit(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    return True
