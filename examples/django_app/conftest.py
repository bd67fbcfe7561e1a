"""pytest-django for the example: its own settings (``fluxdemo.settings``), and meter tokens in
the environment (fluxrate.yaml reads them from there, as in production)."""

import os
import sys
from pathlib import Path

import django
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
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fluxdemo.settings")
if not settings.configured or not django.apps.apps.ready:
    django.setup()
