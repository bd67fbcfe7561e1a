"""ASGI entry point: ``uvicorn fluxdemo.asgi:application``.

``with_lifespan`` delivers the queued usage events when uvicorn shuts down (uvicorn ends the
process on SIGTERM without running exit hooks).
"""

import os

from django.core.asgi import get_asgi_application

from fluxrate_web.django.asgi import with_lifespan

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fluxdemo.settings")

application = with_lifespan(get_asgi_application())
