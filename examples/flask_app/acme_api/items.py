"""``/v1/items``: a small CRUD resource, one class-based view per URL."""

from __future__ import annotations

import itertools
from typing import Any

from flask import Blueprint, abort, g, request
from flask.typing import ResponseReturnValue
from flask.views import MethodView

from acme_api.auth import require_token
from acme_api.extensions import fluxrate
from fluxrate_web.flask import meter

bp = Blueprint("items", __name__, url_prefix="/v1/items")
bp.before_request(require_token)

# Every call to this blueprint counts on the "api_calls" meter.
fluxrate.meter_blueprint(bp, "api_calls")

_ITEMS: dict[str, dict[int, dict[str, Any]]] = {}
_IDS = itertools.count(1)


def _store() -> dict[int, dict[str, Any]]:
    return _ITEMS.setdefault(g.customer_id, {})


class ItemList(MethodView):
    def get(self) -> ResponseReturnValue:
        return {"items": list(_store().values())}

    def post(self) -> ResponseReturnValue:
        body = request.get_json(silent=True) or {}
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return {"error": "'name' is required"}, 422
        item_id = next(_IDS)
        item = {"id": item_id, "name": name}
        _store()[item_id] = item
        return item, 201


class ItemDetail(MethodView):
    def get(self, item_id: int) -> ResponseReturnValue:
        item = _store().get(item_id)
        if item is None:
            abort(404)
        return item

    # An update is heavier: it counts 5 on "api_calls" (the view's own @meter replaces the
    # blueprint's for the same meter).
    @meter("api_calls", quantity=5)
    def put(self, item_id: int) -> ResponseReturnValue:
        item = _store().get(item_id)
        if item is None:
            abort(404)
        item.update(request.get_json(silent=True) or {})
        item["id"] = item_id
        return item

    def delete(self, item_id: int) -> ResponseReturnValue:
        _store().pop(item_id, None)
        return "", 204


bp.add_url_rule("", view_func=ItemList.as_view("list"))
bp.add_url_rule("/<int:item_id>", view_func=ItemDetail.as_view("detail"))
