"""Acme API: a small Flask app metered with fluxrate-web.

Run it (see README.md)::

    flask --app acme_api run
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from acme_api import chat, items
from acme_api.extensions import fluxrate

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        # token -> customer id; a real app keeps these in its database
        API_TOKENS={"tok_alice": "cus_alice", "tok_bob": "cus_bob"},
        FLUXRATE_CONFIG=os.environ.get("FLUXRATE_CONFIG", os.path.join(HERE, "fluxrate.yaml")),
    )
    if test_config is not None:
        app.config.from_mapping(test_config)

    fluxrate.init_app(app)
    app.register_blueprint(items.bp)
    app.register_blueprint(chat.bp)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
