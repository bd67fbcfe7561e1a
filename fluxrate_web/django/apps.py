"""The Django app: builds the metering core when Django is ready and registers the checks."""

from __future__ import annotations

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
