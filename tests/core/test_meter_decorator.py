"""@meter keeps the view as it is: signature, name, docstring, __wrapped__, coroutine-ness, and it
works on functions, methods and class-based views of every framework."""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

import pytest

from fluxrate_web import meter
from fluxrate_web.core.config import load_config
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.rules import RequestRules, rules_of

A = "550e8400-e29b-41d4-a716-446655440000"
B = "650e8400-e29b-41d4-a716-446655440001"
RULES = RequestRules(load_config(overrides={"meters": {"api_calls": A, "ai_tokens": B}}))


def planned(endpoint: Any = None, handler: Any = None) -> list[str]:
    return [m.name for m in RULES.plan("/x", "GET", endpoint, handler=handler).meters]


def sync_view(item_id: int, q: str | None = None, *, limit: int = 10) -> dict[str, Any]:
    """Return an item."""
    return {"item_id": item_id, "q": q, "limit": limit}


async def async_view(item_id: int, q: str | None = None) -> dict[str, Any]:
    """Return an item, asynchronously."""
    await asyncio.sleep(0)
    return {"item_id": item_id, "q": q}


@pytest.mark.parametrize("func", [sync_view, async_view])
def test_function_keeps_everything(func: Any) -> None:
    decorated = meter("api_calls", quantity=2)(func)
    assert inspect.signature(decorated) == inspect.signature(func)
    assert decorated.__name__ == func.__name__
    assert decorated.__qualname__ == func.__qualname__
    assert decorated.__doc__ == func.__doc__
    assert decorated.__module__ == func.__module__
    assert decorated.__wrapped__ is func
    assert decorated.__annotations__ == func.__annotations__
    assert inspect.iscoroutinefunction(decorated) == inspect.iscoroutinefunction(func)
    assert asyncio.iscoroutinefunction(decorated) == asyncio.iscoroutinefunction(func)
    assert inspect.unwrap(decorated) is func
    assert callable(decorated)


def test_calls_are_unchanged() -> None:
    decorated = meter("api_calls")(sync_view)
    assert decorated(1, "a", limit=3) == {"item_id": 1, "q": "a", "limit": 3}
    adecorated = meter("api_calls")(async_view)
    assert asyncio.run(adecorated(2)) == {"item_id": 2, "q": None}


def test_stacking_keeps_everything_and_adds_meters() -> None:
    @meter("api_calls")
    @meter("ai_tokens", quantity="response_header:X-Tokens-Used")
    async def view(a: int) -> int:
        """Doc."""
        return a

    assert inspect.iscoroutinefunction(view)
    assert inspect.signature(view) == inspect.signature(inspect.unwrap(view))
    assert list(inspect.signature(view).parameters) == ["a"]
    assert view.__name__ == "view"
    assert view.__doc__ == "Doc."
    assert [r.meter for r in rules_of(view)] == ["ai_tokens", "api_calls"]
    assert sorted(planned(view)) == ["ai_tokens", "api_calls"]
    assert asyncio.run(view(5)) == 5


def test_methods_and_class_views() -> None:
    class ItemView:
        @meter("api_calls")
        def get(self, request: object, pk: int) -> tuple[object, int]:
            """Get."""
            return request, pk

        @meter("ai_tokens")
        async def post(self, request: object) -> object:
            return request

        @staticmethod
        @meter("api_calls")
        def helper(x: int) -> int:
            return x

        @classmethod
        @meter("api_calls")
        def build(cls, x: int) -> int:
            return x

    view = ItemView()
    assert view.get("r", 3) == ("r", 3)
    assert asyncio.run(view.post("r")) == "r"
    assert ItemView.helper(4) == 4
    assert ItemView.build(5) == 5
    original = inspect.unwrap(ItemView.get)
    assert inspect.signature(ItemView.get) == inspect.signature(original)
    assert list(inspect.signature(ItemView.get).parameters) == ["self", "request", "pk"]
    assert list(inspect.signature(view.get).parameters) == ["request", "pk"]
    assert inspect.iscoroutinefunction(ItemView.post)
    assert inspect.iscoroutinefunction(view.post)
    assert not inspect.iscoroutinefunction(view.get)
    assert ItemView.get.__name__ == "get"
    assert ItemView.get.__doc__ == "Get."
    assert planned(None, ItemView.get) == ["api_calls"]
    assert planned(None, view.get) == ["api_calls"]  # a bound method works too
    assert planned(None, ItemView.post) == ["ai_tokens"]


def test_functools_wraps_on_top_keeps_the_rule() -> None:
    def logged(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        return wrapper

    @logged
    @meter("api_calls")
    def view() -> int:
        return 1

    assert planned(view) == ["api_calls"]


def test_exempt_keeps_everything() -> None:
    @meter.exempt
    async def health(x: int = 1) -> int:
        return x

    assert inspect.iscoroutinefunction(health)
    assert list(inspect.signature(health).parameters) == ["x"]
    assert inspect.signature(health).parameters["x"].default == 1
    assert RULES.plan("/x", "GET", health).exempt
    assert meter.exempt()(sync_view) is not sync_view


def test_bad_arguments_fail_at_decoration() -> None:
    with pytest.raises(TypeError, match="parentheses"):
        meter(sync_view)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="quantity"):
        meter("api_calls", quantity=-1)
    with pytest.raises(ConfigError, match="customer"):
        meter("api_calls", customer="cookie:x")
    with pytest.raises(ConfigError, match="bill_on"):
        meter("api_calls", bill_on="9xx")
    with pytest.raises(ConfigError, match="non-empty"):
        meter("")


def test_unknown_meter_is_reported_lazily_naming_the_function() -> None:
    @meter("nope")
    def my_special_view() -> None: ...

    with pytest.raises(ConfigError, match=r"my_special_view.*unknown meter 'nope'"):
        planned(my_special_view)


# -- frameworks ------------------------------------------------------------------------------


def test_fastapi_dependency_injection_unchanged() -> None:
    fastapi = pytest.importorskip("fastapi")
    import httpx

    app = fastapi.FastAPI()

    def dep(x_token: str = fastapi.Header("t")) -> str:
        return x_token

    @app.get("/items/{item_id}")
    @meter("api_calls")
    async def read_item(item_id: int, q: str | None = None, token: str = fastapi.Depends(dep)):  # type: ignore[no-untyped-def]
        return {"item_id": item_id, "q": q, "token": token}

    @app.post("/sync/{n}")
    @meter("api_calls", quantity=2)
    def write(n: int, body: dict[str, int]) -> dict[str, int]:
        return {"n": n, **body}

    async def exercise() -> tuple[Any, ...]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            one = await client.get("/items/5?q=z", headers={"x-token": "abc"})
            bad = await client.get("/items/notint")
            two = await client.post("/sync/3", json={"a": 1})
            schema = await client.get("/openapi.json")
        return one.json(), bad.status_code, two.json(), schema.json()

    one, bad, two, schema = asyncio.run(exercise())
    assert one == {"item_id": 5, "q": "z", "token": "abc"}
    assert bad == 422
    assert two == {"n": 3, "a": 1}
    params = {p["name"] for p in schema["paths"]["/items/{item_id}"]["get"]["parameters"]}
    assert params == {"item_id", "q", "x-token"}
    route = next(r for r in app.routes if getattr(r, "path", "") == "/items/{item_id}")
    assert planned(route.endpoint) == ["api_calls"]  # type: ignore[attr-defined]


def test_flask_views_and_method_view() -> None:
    flask = pytest.importorskip("flask")
    from flask.views import MethodView

    app = flask.Flask(__name__)

    @app.get("/items/<int:item_id>")
    @meter("api_calls")
    def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    class Things(MethodView):
        @meter("ai_tokens")
        def get(self, thing_id: int) -> dict[str, int]:
            return {"thing_id": thing_id}

        def post(self, thing_id: int) -> dict[str, int]:
            return {"posted": thing_id}

    app.add_url_rule("/things/<int:thing_id>", view_func=Things.as_view("things"))
    client = app.test_client()
    assert client.get("/items/4").get_json() == {"item_id": 4}
    assert client.get("/things/2").get_json() == {"thing_id": 2}
    assert client.post("/things/2").get_json() == {"posted": 2}
    assert planned(app.view_functions["item"]) == ["api_calls"]
    endpoint = app.view_functions["things"]
    assert planned(endpoint, Things.get) == ["ai_tokens"]
    assert planned(endpoint, Things.post) == []


def test_django_views_and_method_decorator() -> None:
    pytest.importorskip("django")
    from types import SimpleNamespace

    from django.utils.decorators import method_decorator
    from django.views import View

    class Plain(View):
        @meter("api_calls")
        def get(self, request: Any, pk: int) -> str:
            return f"plain {pk}"

    @method_decorator(meter("ai_tokens"), name="get")
    class ViaMethodDecorator(View):
        def get(self, request: Any) -> str:
            return "md"

    @method_decorator(meter("api_calls"), name="dispatch")
    class ViaDispatch(View):
        def get(self, request: Any) -> str:
            return "dispatch"

    class Direct(View):
        @method_decorator(meter("ai_tokens"))
        def get(self, request: Any) -> str:
            """Doc."""
            return "direct"

    def request() -> Any:
        # Django's View machinery needs no settings; a request with a method is enough.
        return SimpleNamespace(method="GET")

    assert Plain.as_view()(request(), pk=3) == "plain 3"
    assert ViaMethodDecorator.as_view()(request()) == "md"
    assert ViaDispatch.as_view()(request()) == "dispatch"
    assert Direct.as_view()(request()) == "direct"
    assert Direct.get.__name__ == "get"
    assert Direct.get.__doc__ == "Doc."

    assert planned(Plain.as_view(), Plain.get) == ["api_calls"]
    assert planned(ViaMethodDecorator.as_view(), ViaMethodDecorator.get) == ["ai_tokens"]
    assert planned(ViaDispatch.as_view(), ViaDispatch.get) == ["api_calls"]
    assert planned(Direct.as_view(), Direct.get) == ["ai_tokens"]

    @meter("api_calls")
    def function_view(request: Any) -> str:
        return "f"

    assert function_view(request()) == "f"
    assert planned(function_view) == ["api_calls"]
