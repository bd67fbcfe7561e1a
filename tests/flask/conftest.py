"""Fixtures of the Flask adapter tests: apps built with a recording usage client."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from fluxrate_flask_support import METERS, AppFactory, RecordingClient

from fluxrate_web.flask import Fluxrate


@pytest.fixture
def recorder() -> RecordingClient:
    return RecordingClient()


@pytest.fixture
def make_app(recorder: RecordingClient) -> AppFactory:
    """``make_app(**config)``: a Flask app whose ``FLUXRATE_<KEY>`` come from ``config`` (the
    test meters and ``customer: header:X-Customer-Id`` by default), metered by a ``Fluxrate``
    extension with the recording client (``extension_of(app)``); ``init=False`` leaves
    ``init_app`` to the test."""

    def factory(*, init: bool = True, testing: bool = True, **config: Any) -> Flask:
        app = Flask("fluxrate_flask_test")
        app.testing = testing
        config.setdefault("meters", METERS)
        config.setdefault("customer", "header:X-Customer-Id")
        for key, value in config.items():
            app.config[f"FLUXRATE_{key.upper()}"] = value
        extension = Fluxrate(client=recorder)
        app.extensions["fluxrate_test_extension"] = extension
        if init:
            extension.init_app(app)
        return app

    return factory
