"""Bearer-token authentication: every API request names the customer that pays for it.

A real app would look the token up in its database; the example keeps a dict in
``app.config["API_TOKENS"]`` (token -> customer id).
"""

from __future__ import annotations

from flask import current_app, g, jsonify, request
from flask.typing import ResponseReturnValue


def require_token() -> ResponseReturnValue | None:
    """A ``before_request`` hook for the API blueprints: 401 unless the token is known."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    customer_id = current_app.config["API_TOKENS"].get(token) if scheme == "Bearer" else None
    if customer_id is None:
        return jsonify(error="missing or unknown API token"), 401
    g.customer_id = customer_id
    return None
