"""Settings of the fluxdemo example project.

The fluxrate-specific parts are ``INSTALLED_APPS`` (``"fluxrate_web.django"``), ``MIDDLEWARE``
(``FluxrateMiddleware``, last) and ``FLUXRATE``. What is billed lives in ``fluxrate.yaml``; the
secrets come from the environment.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "fluxdemo-insecure-development-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "fluxdemo.accounts",
    "fluxdemo.api",
    "fluxrate_web.django",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    # API clients send "Authorization: Bearer <token>"; sets request.user.
    "fluxdemo.accounts.auth.TokenAuthenticationMiddleware",
    # Last: it sees the resolved view, and request.user.
    "fluxrate_web.django.FluxrateMiddleware",
]

ROOT_URLCONF = "fluxdemo.urls"
WSGI_APPLICATION = "fluxdemo.wsgi.application"
ASGI_APPLICATION = "fluxdemo.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("FLUXDEMO_DB", BASE_DIR / "db.sqlite3"),
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Every key of fluxrate.yaml can be set here too, upper or lower case; these win over the file.
FLUXRATE = {
    "CONFIG": BASE_DIR / "fluxrate.yaml",
    "API_KEY": os.environ.get("FLUXRATE_API_KEY"),
    "BASE_URL": os.environ.get("FLUXRATE_BASE_URL"),  # None: the Fluxrate cloud
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"fluxrate_web": {"handlers": ["console"], "level": "INFO"}},
}
