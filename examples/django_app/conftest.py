"""pytest-django for the example: its own settings (``fluxdemo.settings``, given to
``settings.configure()`` so that no ``DJANGO_SETTINGS_MODULE`` leaks into other processes), and
meter tokens in the environment (fluxrate.yaml reads them from there, as in production).

The repository's Django tests (``tests/django/conftest.py``) run this file too, to share this
setup; everything here is idempotent."""

import os
import sys
from pathlib import Path

import django
from django.apps import apps
from django.conf import settings

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

TEST_ENV = {
    "FLUXRATE_METER_API_CALLS": "11111111-1111-4111-8111-111111111111",
    "FLUXRATE_METER_REPORTS": "22222222-2222-4222-8222-222222222222",
    "FLUXRATE_METER_EXPORT_BYTES": "33333333-3333-4333-8333-333333333333",
}
for key, value in TEST_ENV.items():
    os.environ.setdefault(key, value)
if not settings.configured:
    import fluxdemo.settings as project_settings

    settings.configure(
        **{
            name: getattr(project_settings, name)
            for name in dir(project_settings)
            if name.isupper()
        }
    )
if not apps.ready:
    django.setup()
