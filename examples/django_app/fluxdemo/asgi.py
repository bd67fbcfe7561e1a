"""ASGI entry point: ``uvicorn fluxdemo.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fluxdemo.settings")

application = get_asgi_application()
