"""pytest setup of the Acme API example: an app and a test client per test.

``fluxrate_events`` (a fixture of fluxrate-web's pytest plugin) captures every usage event the
app tracks during a test, instead of sending it.
"""

from __future__ import annotations

import pytest
from acme_api import create_app
from flask import Flask
from flask.testing import FlaskClient


@pytest.fixture
def app() -> Flask:
    return create_app({"TESTING": True})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
