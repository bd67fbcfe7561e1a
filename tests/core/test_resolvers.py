"""Customer resolvers: each spec kind, fallbacks, coercion, anonymous users, async callables."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.resolvers import (
    RequestView,
    compile_resolver,
    import_dotted,
    parse_resolver_spec,
)


@dataclass
class View:
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)
    current_user: object | None = None
    native: object = "the-request"

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)

    def query(self, name: str) -> str | None:
        return self.params.get(name)

    def state(self, name: str) -> object | None:
        return self.attrs.get(name)

    def user(self) -> object | None:
        return self.current_user


def resolve(spec: Any, view: View) -> str | None:
    return compile_resolver(spec).resolve(view)


def customer_of(request: object) -> str:
    return f"from-{request}"


async def async_customer_of(request: object) -> str | None:
    await asyncio.sleep(0)
    return "async-cust"


def none_customer(request: object) -> None:
    return None


def test_view_satisfies_protocol() -> None:
    assert isinstance(View(), RequestView)


def test_header() -> None:
    view = View(headers={"X-Customer-Id": "cust_1"})
    assert resolve("header:X-Customer-Id", view) == "cust_1"
    assert resolve("header:x-customer-id", view) == "cust_1"
    assert resolve("header:X-Other", view) is None
    assert resolve("header:X-Customer-Id", View(headers={"X-Customer-Id": ""})) is None


def test_header_name_is_passed_lower_case() -> None:
    seen: list[str] = []

    class Recording(View):
        def header(self, name: str) -> str | None:
            seen.append(name)
            return None

    resolve("header:X-Customer-Id", Recording())
    assert seen == ["x-customer-id"]


def test_query_and_state() -> None:
    view = View(params={"org": "o1"}, attrs={"customer_id": 42, "org": {"billing": {"id": "b7"}}})
    assert resolve("query:org", view) == "o1"
    assert resolve("state:customer_id", view) == "42"
    assert resolve("state:org.billing.id", view) == "b7"
    assert resolve("state:missing", view) is None
    assert resolve("state:org.nope.id", view) is None


def test_user_paths_and_anonymous() -> None:
    org = SimpleNamespace(external_id="org_9")
    user = SimpleNamespace(is_authenticated=True, id=5, organization=org)
    assert resolve("user:id", View(current_user=user)) == "5"
    assert resolve("user:organization.external_id", View(current_user=user)) == "org_9"
    anonymous = SimpleNamespace(is_authenticated=False, id=None, username="")
    assert resolve("user:username", View(current_user=anonymous)) is None
    assert resolve("user:id", View(current_user=None)) is None
    no_flag = {"sub": "u-1"}  # e.g. a decoded JWT as a mapping
    assert resolve("user:sub", View(current_user=no_flag)) == "u-1"
    callable_flag = SimpleNamespace(is_authenticated=lambda: False, id=1)
    assert resolve("user:id", View(current_user=callable_flag)) is None


def test_callables_and_dotted_paths() -> None:
    view = View()
    assert resolve(customer_of, view) == "from-the-request"
    assert resolve(f"callable:{__name__}.customer_of", view) == "from-the-request"
    assert resolve(lambda request: 7, view) == "7"


def test_fallbacks_in_order() -> None:
    spec = ["header:X-Customer-Id", "user:id", none_customer, "query:c", customer_of]
    assert resolve(spec, View(params={"c": "q"})) == "q"
    assert resolve(spec, View(headers={"X-Customer-Id": "h"}, params={"c": "q"})) == "h"
    assert resolve(spec, View()) == "from-the-request"
    assert resolve(["header:A", "header:B"], View()) is None


def test_async_callable() -> None:
    resolver = compile_resolver(["header:X-C", async_customer_of])
    assert resolver.is_async
    assert resolver.resolve(View()) is None  # sync resolution cannot await: skipped
    assert resolver.resolve(View(headers={"X-C": "h"})) == "h"
    assert asyncio.run(resolver.resolve_async(View())) == "async-cust"
    assert asyncio.run(resolver.resolve_async(View(headers={"X-C": "h"}))) == "h"


def test_async_callable_object() -> None:
    class Resolver:
        async def __call__(self, request: object) -> str:
            return "obj"

    resolver = compile_resolver(Resolver())
    assert resolver.is_async
    assert asyncio.run(resolver.resolve_async(View())) == "obj"


def test_no_resolver() -> None:
    resolver = compile_resolver(None)
    assert not resolver
    assert resolver.resolve(View(headers={"X-Customer-Id": "x"})) is None


@pytest.mark.parametrize(
    "spec",
    ["cookie:x", "header:", "header:bad name", "user:a..b", "callable:nodots", "", [], 5, ["ok"]],
)
def test_syntax_errors(spec: Any) -> None:
    with pytest.raises(ValueError):
        parse_resolver_spec(spec)
    with pytest.raises(ConfigError):
        compile_resolver(spec, "customer")


def test_import_errors_name_the_path() -> None:
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_module_x\.func'"):
        compile_resolver("callable:no_such_module_x.func")
    with pytest.raises(ConfigError, match="cannot import"):
        compile_resolver(f"callable:{__name__}.does_not_exist")


def test_import_dotted_forms() -> None:
    import os.path

    assert import_dotted("os.path.join") is os.path.join
    assert import_dotted("os.path:join") is os.path.join
    with pytest.raises(ImportError):
        import_dotted("nowhere_pkg_x.y")
