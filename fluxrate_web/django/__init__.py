"""Django integration: ``INSTALLED_APPS += ["fluxrate_web.django"]`` and
``MIDDLEWARE += ["fluxrate_web.django.FluxrateMiddleware"]``.

Configuration comes from ``settings.FLUXRATE`` (every ``fluxrate.yaml`` key, upper or lower case;
``"CONFIG"`` names the YAML file) and wins over the file. See ``docs/django.md``.
"""

from __future__ import annotations

from fluxrate_web.django._runtime import flush, get_metering
from fluxrate_web.django.middleware import DjangoRequestView, FluxrateMiddleware

__all__ = ["DjangoRequestView", "FluxrateMiddleware", "flush", "get_metering"]
