"""Async views (``flask[async]``, run through asgiref) are metered like sync ones."""

from __future__ import annotations

import asyncio

from flask import g
from flask.views import MethodView
from fluxrate_flask_support import CUSTOMER, AppFactory, RecordingClient

from fluxrate_web.flask import meter, record


def test_async_view(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app()

    @app.get("/answer")
    @meter("api_calls")
    async def answer() -> dict[str, int]:
        await asyncio.sleep(0)
        return {"answer": 42}

    response = app.test_client().get("/answer", headers=CUSTOMER)
    assert response.json == {"answer": 42}
    assert recorder.billed() == [("api_calls", "cus_1", 1)]


def test_record_in_async_view_and_task(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app()

    @app.post("/generate")
    @meter("api_calls")
    async def generate() -> str:
        record("tokens", 10)

        async def side() -> None:
            record("tokens", 5)

        await asyncio.create_task(side())
        return "done"

    app.test_client().post("/generate", headers=CUSTOMER)
    assert sorted(recorder.billed()) == [
        ("api_calls", "cus_1", 1),
        ("tokens", "cus_1", 5),
        ("tokens", "cus_1", 10),
    ]


def test_async_method_view_and_async_hooks(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(customer="state:customer_id")

    @app.before_request
    async def authenticate() -> None:
        g.customer_id = "cus_async"

    class Jobs(MethodView):
        @meter("api_calls", quantity=3)
        async def post(self) -> tuple[str, int]:
            return "queued", 202

    app.add_url_rule("/jobs", view_func=Jobs.as_view("jobs"))
    assert app.test_client().post("/jobs").status_code == 202
    assert recorder.billed() == [("api_calls", "cus_async", 3)]


async def tokens_used(request: object, info: object) -> int:
    return 12


def test_async_quantity_callable(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app()

    @app.get("/count")
    @meter("tokens", quantity=tokens_used)
    def count() -> str:
        return "ok"

    app.test_client().get("/count", headers=CUSTOMER)
    assert recorder.billed() == [("tokens", "cus_1", 12)]
