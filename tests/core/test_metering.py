"""Metering: the seam. route() caching, finish() decisions, record(), idempotency, never raising."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fluxrate_web import meter, record
from fluxrate_web.core import _log
from fluxrate_web.core.config import Config, load_config
from fluxrate_web.core.metering import Metering, RoutePlan, derive_idempotency_key, stats
from fluxrate_web.testing import CapturingClient

A = "550e8400-e29b-41d4-a716-446655440000"
B = "650e8400-e29b-41d4-a716-446655440001"


@dataclass
class View:
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, object] = field(default_factory=dict)
    current_user: object | None = None
    native: object = "request"

    def header(self, name: str) -> str | None:
        return {k.lower(): v for k, v in self.headers.items()}.get(name.lower())

    def query(self, name: str) -> str | None:
        return self.params.get(name)

    def state(self, name: str) -> object | None:
        return self.attrs.get(name)

    def user(self) -> object | None:
        return self.current_user


@pytest.fixture(autouse=True)
def _fresh_log_limits() -> Iterator[None]:
    _log.reset_limits()
    yield
    _log.reset_limits()


def make(**overrides: Any) -> tuple[Metering, CapturingClient]:
    settings: dict[str, Any] = {
        "meters": {"api_calls": A, "ai_tokens": B},
        "customer": "header:X-Customer-Id",
        "default_meter": "api_calls",
    }
    settings.update(overrides)
    client = CapturingClient()
    return Metering(load_config(overrides=settings), client=client), client


def run(
    metering: Metering,
    view: View,
    template: str | None = "/v1/items/{id}",
    method: str = "GET",
    endpoint: object = None,
    app: Any = None,
    **finish: Any,
) -> int:
    """One request through the seam, the way an adapter does it."""
    scope = metering.open_scope()
    plan = metering.route(template, method, endpoint)
    if app is not None:
        app()
    finish.setdefault("status", 200)
    return metering.finish(plan, view, scope, **finish)


CUSTOMER = View(headers={"X-Customer-Id": "cust_1"})


def test_default_meter_bills_one_call() -> None:
    metering, client = make()
    assert run(metering, CUSTOMER) == 1
    [event] = client.events
    assert (event.meter_token, event.customer_external_id, event.quantity) == (A, "cust_1", 1)
    assert event.metadata is None


@pytest.mark.parametrize(
    ("bill_on", "status", "billed"),
    [
        ("2xx", 200, True),
        ("2xx", 204, True),
        ("2xx", 304, False),
        ("2xx", 404, False),
        ("2xx", 500, False),
        ("2xx", None, False),
        ("2xx,3xx", 304, True),
        ([200, 404], 404, True),
        ("any", 500, True),
        ("200-201", 202, False),
    ],
)
def test_bill_on(bill_on: Any, status: int | None, billed: bool) -> None:
    metering, _client = make(bill_on=bill_on)
    assert run(metering, CUSTOMER, status=status) == int(billed)


def test_disconnect_and_exception() -> None:
    metering, _ = make()
    assert run(metering, CUSTOMER, completed=False) == 0
    assert run(metering, CUSTOMER, status=500, error=True) == 0
    metering, _ = make(bill_on_disconnect=True, bill_on_exception=True, bill_on="any")
    assert run(metering, CUSTOMER, completed=False) == 1
    assert run(metering, CUSTOMER, status=500, error=True) == 1


def test_missing_customer_is_skipped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    metering, client = make()
    assert run(metering, View()) == 0
    assert client.events == []
    assert client.stats.dropped == 1
    assert "no customer" in client.dropped[0]
    assert "header:X-Customer-Id" in client.dropped[0]


def test_no_resolver_configured_means_no_customer() -> None:
    metering, client = make(customer=None)
    assert run(metering, CUSTOMER) == 0
    assert client.stats.dropped == 1


def test_reject_missing_customer_flag() -> None:
    metering, _ = make(on_missing_customer="reject")
    plan = metering.route("/v1/items/{id}", "GET")
    assert plan.reject_missing_customer
    assert plan.customer(View()) is None
    assert plan.customer(CUSTOMER) == "cust_1"
    assert not metering.route("/health", "GET", meter.exempt(lambda: None)).reject_missing_customer
    metering, _ = make(on_missing_customer="reject", default_meter=None)
    assert not metering.route("/unmetered", "GET").reject_missing_customer


def test_anonymous_user_is_no_customer() -> None:
    metering, client = make(customer="user:username")
    anonymous = SimpleNamespace(is_authenticated=False, username="")
    assert run(metering, View(current_user=anonymous)) == 0
    alice = SimpleNamespace(is_authenticated=True, username="alice")
    assert run(metering, View(current_user=alice)) == 1
    assert client.events[0].customer_external_id == "alice"


def test_explicit_customer_argument_wins() -> None:
    metering, client = make()
    assert run(metering, CUSTOMER, customer="override") == 1
    assert client.events[0].customer_external_id == "override"


def test_quantity_sources_and_metadata() -> None:
    def cost(request: object, response: Any) -> float:
        return response.duration_ms * 2

    def meta(request: object, response: Any) -> dict[str, Any]:
        return {"status": response.status}

    metering, client = make(
        endpoints=[
            {
                "route": "/chat",
                "meters": [
                    {"meter": "api_calls", "metadata": {"plan": "pro"}},
                    {"meter": "ai_tokens", "quantity": "response_header:X-Tokens-Used"},
                    {"meter": "ai_tokens", "quantity": cost},
                    {"meter": "ai_tokens", "quantity": "response_bytes"},
                    {"meter": "ai_tokens", "quantity": "request_header:X-Units"},
                ],
            }
        ]
    )
    view = View(headers={"X-Customer-Id": "c", "X-Units": "4"})
    sent = run(
        metering,
        view,
        "/chat",
        "POST",
        response_headers={"x-tokens-used": "120"},
        response_bytes=512,
        duration_ms=1.25,
    )
    assert sent == 5
    assert [e.quantity for e in client.events] == [1, 120, 2.5, 512, 4]
    assert client.events[0].metadata == {"plan": "pro"}

    @meter("api_calls", metadata=meta)
    def view_fn() -> None: ...

    client.clear()
    assert run(metering, CUSTOMER, endpoint=view_fn, status=201) == 1
    assert client.events[0].metadata == {"status": 201}


def test_zero_quantity_is_no_event_and_no_warning() -> None:
    metering, client = make(
        endpoints=[{"route": "/a", "meter": "ai_tokens", "quantity": "response_header:X-T"}]
    )
    assert run(metering, CUSTOMER, "/a", response_headers={"X-T": "0"}) == 0
    assert client.stats.dropped == 0
    assert run(metering, CUSTOMER, "/a", response_headers={}) == 0
    assert client.stats.dropped == 1
    assert "no quantity" in client.dropped[0]
    assert run(metering, CUSTOMER, "/a", response_headers={"X-T": "many"}) == 0
    assert "not a number" in client.dropped[1]
    assert run(metering, CUSTOMER, "/a", response_headers={"X-T": "-3"}) == 0
    assert client.stats.dropped == 3  # the client refused the negative quantity


def test_idempotency_key_from_request_header() -> None:
    metering, client = make(
        endpoints=[{"route": "/chat", "meters": ["api_calls", "ai_tokens", "ai_tokens"]}]
    )
    retry = View(headers={"X-Customer-Id": "c1", "Idempotency-Key": "k-123"})
    run(metering, retry, "/chat")
    first = [e.idempotency_key for e in client.events]
    client.clear()
    run(metering, retry, "/chat")
    assert [e.idempotency_key for e in client.events] == first
    assert len(set(first)) == 3  # meters and repeated meters get distinct keys
    assert first[0] == derive_idempotency_key("k-123", A, "c1", 0)
    client.clear()
    run(metering, View(headers={"X-Customer-Id": "c2", "Idempotency-Key": "k-123"}), "/chat")
    assert not set(first) & {e.idempotency_key for e in client.events}
    client.clear()
    run(metering, CUSTOMER, "/chat")
    run(metering, CUSTOMER, "/chat")
    assert len({e.idempotency_key for e in client.events}) == 6  # fresh keys without a header


def test_configured_idempotency_header_and_off() -> None:
    metering, client = make(idempotency_header="X-Request-ID")
    view = View(headers={"X-Customer-Id": "c", "X-Request-ID": "r1", "Idempotency-Key": "x"})
    run(metering, view)
    assert client.events[0].idempotency_key == derive_idempotency_key("r1", A, "c", 0)
    metering, client = make(idempotency_header=None)
    run(metering, view)
    run(metering, view)
    assert client.events[0].idempotency_key != client.events[1].idempotency_key


def test_record_adds_usage() -> None:
    metering, client = make(default_meter=None)

    def app() -> None:
        record("ai_tokens", 30, metadata={"model": "m"})
        record("ai_tokens", 12)
        record(B, 1)  # a token works as a meter name

    assert run(metering, CUSTOMER, app=app) == 3
    assert [(e.meter_token, e.quantity) for e in client.events] == [(B, 30), (B, 12), (B, 1)]
    assert client.events[0].metadata == {"model": "m"}


def test_record_follows_bill_on() -> None:
    metering, client = make()
    assert run(metering, CUSTOMER, status=500, app=lambda: record("ai_tokens", 5)) == 0
    assert client.events == []


def test_record_in_exempt_route_still_bills() -> None:
    metering, client = make()

    @meter.exempt
    def health() -> None:
        record("ai_tokens", 2)

    assert run(metering, CUSTOMER, endpoint=health, app=health) == 1
    assert client.events[0].meter_token == B


def test_record_with_own_customer_and_bad_input() -> None:
    metering, client = make(default_meter=None)

    def app() -> None:
        record("ai_tokens", 3, customer="someone_else")
        record("ai_tokenz", 1)
        record("ai_tokens", "abc")
        record("ai_tokens", 0)

    assert run(metering, CUSTOMER, app=app) == 1
    assert client.events[0].customer_external_id == "someone_else"
    assert any("unknown meter 'ai_tokenz'" in reason for reason in client.dropped)
    assert any("not a number" in reason for reason in client.dropped)


def test_record_from_threads_and_tasks() -> None:
    metering, _client = make(default_meter=None)

    def in_thread() -> None:
        record("ai_tokens", 1)

    def app() -> None:
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(in_thread,))
        thread.start()
        thread.join()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(contextvars.copy_context().run, in_thread).result()

        async def main() -> None:
            async def task() -> None:
                record("ai_tokens", 1)

            await asyncio.create_task(task())
            await asyncio.to_thread(in_thread)

        asyncio.run(main())

    assert run(metering, CUSTOMER, app=app) == 4


def test_record_outside_request_warns_and_drops(caplog: pytest.LogCaptureFixture) -> None:
    before = stats.dropped_outside_request
    with caplog.at_level(logging.WARNING, logger="fluxrate_web"):
        record("api_calls", 1)
        record("api_calls", 1)
    assert stats.dropped_outside_request == before + 2
    warnings = [r for r in caplog.records if "outside a metered request" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited


def test_record_after_finish_is_dropped() -> None:
    metering, client = make(default_meter=None)
    scope = metering.open_scope()
    plan = metering.route("/a", "GET")
    context = contextvars.copy_context()
    metering.finish(plan, CUSTOMER, scope, status=200)
    before = stats.dropped_outside_request
    context.run(record, "ai_tokens", 1)
    assert stats.dropped_outside_request == before + 1
    assert client.events == []


def test_scope_is_reset_after_finish() -> None:
    metering, _ = make()
    from fluxrate_web.core.metering import _SCOPE

    assert _SCOPE.get() is None
    scope = metering.open_scope()
    assert _SCOPE.get() is scope
    metering.finish(metering.route("/a", "GET"), CUSTOMER, scope, status=200)
    assert _SCOPE.get() is None


def test_finish_from_another_context_does_not_raise() -> None:
    metering, client = make()
    scope = metering.open_scope()
    plan = metering.route("/a", "GET")
    contextvars.Context().run(metering.finish, plan, CUSTOMER, scope, status=200)
    assert len(client.events) == 1


def test_finish_twice_bills_once(caplog: pytest.LogCaptureFixture) -> None:
    metering, client = make()
    scope = metering.open_scope()
    plan = metering.route("/a", "GET")
    assert metering.finish(plan, CUSTOMER, scope, status=200) == 1
    assert metering.finish(plan, CUSTOMER, scope, status=200) == 0
    assert len(client.events) == 1


class Exploding:
    native = None

    def header(self, name: str) -> str | None:
        raise RuntimeError("boom")

    def query(self, name: str) -> str | None:
        raise RuntimeError("boom")

    def state(self, name: str) -> object | None:
        raise RuntimeError("boom")

    def user(self) -> object | None:
        raise RuntimeError("boom")


def test_finish_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    metering, client = make()
    with caplog.at_level(logging.WARNING, logger="fluxrate_web"):
        assert run(metering, Exploding()) == 0  # type: ignore[arg-type]
    # a failing resolver means "no customer": counted and logged, not an internal error
    assert metering.errors == 0
    assert client.stats.dropped == 1
    assert "customer resolver header:X-Customer-Id raised RuntimeError: boom" in caplog.text

    class BrokenClient(CapturingClient):
        def track(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError("disk full")

    broken = Metering(metering.config, client=BrokenClient())
    with caplog.at_level(logging.ERROR, logger="fluxrate_web"):
        assert run(broken, CUSTOMER) == 0
    assert broken.errors == 1
    assert "OSError: disk full" in caplog.text

    def bad_quantity(request: object, response: object) -> int:
        raise ZeroDivisionError("nope")

    def bad_metadata(request: object, response: object) -> dict[str, str]:
        raise KeyError("k")

    def bad_customer(request: object) -> str:
        raise LookupError("who")

    @meter("api_calls", metadata=bad_metadata)
    def view() -> None: ...

    metering, client = make(
        endpoints=[
            {
                "route": "/q",
                "meters": [{"meter": "api_calls", "quantity": bad_quantity}, "ai_tokens"],
            }
        ]
    )
    assert run(metering, CUSTOMER, "/q") == 1  # the other meter is still billed
    assert metering.errors == 0
    assert "raised ZeroDivisionError: nope" in client.dropped[0]
    assert run(metering, CUSTOMER, endpoint=view) == 1  # billed without metadata
    assert client.events[-1].metadata is None
    metering, client = make(customer=[bad_customer, "header:X-Customer-Id"])
    assert run(metering, CUSTOMER) == 1  # falls back past the failing resolver
    # a broken plan argument is survived too
    assert metering.finish(None, CUSTOMER, metering.open_scope(), status=200) == 0  # type: ignore[arg-type]
    assert metering.errors == 1


def test_failing_async_sources() -> None:
    async def who(request: object) -> str:
        raise RuntimeError("down")

    async def how_much(request: object, response: Any) -> int:
        raise RuntimeError("down")

    metering, client = make(
        customer=[who, "header:X-Customer-Id"],
        endpoints=[
            {"route": "/a", "meters": [{"meter": "ai_tokens", "quantity": how_much}, "api_calls"]}
        ],
    )
    plan = metering.route("/a", "GET")

    async def request() -> int:
        assert await plan.customer_async(CUSTOMER) == "cust_1"
        return await metering.finish_async(plan, CUSTOMER, metering.open_scope(), status=200)

    assert asyncio.run(request()) == 1
    assert client.stats.dropped == 1
    assert metering.errors == 0


def test_happy_path_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    metering, _ = make()
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            run(metering, CUSTOMER)
            run(metering, CUSTOMER, status=404)
    assert caplog.records == []


def test_async_sources_need_finish_async() -> None:
    async def who(request: object) -> str:
        await asyncio.sleep(0)
        return "async-customer"

    async def how_much(request: object, response: Any) -> int:
        await asyncio.sleep(0)
        return response.status

    metering, client = make(
        customer=who,
        endpoints=[{"route": "/a", "meters": [{"meter": "ai_tokens", "quantity": how_much}]}],
    )
    plan = metering.route("/a", "GET")
    assert plan.needs_async

    async def request() -> int:
        scope = metering.open_scope()
        record("api_calls", 2)
        assert await plan.customer_async(CUSTOMER) == "async-customer"
        return await metering.finish_async(plan, CUSTOMER, scope, status=201)

    assert asyncio.run(request()) == 2
    assert [(e.customer_external_id, e.quantity) for e in client.events] == [
        ("async-customer", 201),
        ("async-customer", 2),
    ]
    # the sync finish cannot await: it skips and counts instead of raising
    client.clear()
    assert run(metering, CUSTOMER, "/a") == 0
    assert client.stats.dropped >= 1


def test_finish_async_on_a_sync_plan() -> None:
    metering, _client = make()

    async def request() -> int:
        scope = metering.open_scope()
        plan = metering.route("/x", "GET")
        assert not plan.needs_async
        return await metering.finish_async(plan, CUSTOMER, scope, status=200)

    assert asyncio.run(request()) == 1


def test_per_meter_customer_and_bill_on_from_decorators() -> None:
    @meter("api_calls")
    @meter("ai_tokens", customer="query:org", bill_on="any")
    def view() -> None: ...

    metering, client = make()
    sent = run(metering, View(headers={"X-Customer-Id": "c"}, params={"org": "o"}), endpoint=view)
    assert sent == 2
    assert {(e.meter_token, e.customer_external_id) for e in client.events} == {(A, "c"), (B, "o")}
    client.clear()
    assert run(metering, View(params={"org": "o"}), endpoint=view, status=500) == 1
    assert client.events[0].customer_external_id == "o"


def test_route_cache() -> None:
    metering, _ = make()

    class ItemView:
        @meter("ai_tokens")
        def get(self) -> None: ...

    plan = metering.route("/a", "GET")
    assert metering.route("/a", "GET") is plan
    assert metering.route("/a", "POST") is not plan
    size = len(metering._cache)
    for _ in range(50):
        bound = ItemView().get  # a new bound method every request
        assert [m.name for m in metering.route("/i", "GET", handler=bound).meters] == ["ai_tokens"]
    assert len(metering._cache) == size + 1
    unhashable: Any = {"not": "hashable"}
    assert isinstance(metering.route("/u", "GET", unhashable), RoutePlan)


def test_validate_views() -> None:
    from fluxrate_web.core.errors import ConfigError

    @meter("api_calls")
    def good() -> None: ...

    @meter("typo_meter")
    def bad() -> None: ...

    metering, _ = make()
    metering.validate_views([good])
    with pytest.raises(ConfigError, match="bad"):
        metering.validate_views([good, bad])


def test_disabled_sends_nothing_and_builds_no_client() -> None:
    metering = Metering(load_config(overrides={"enabled": False, "meters": {"a": A}}))
    assert run(metering, CUSTOMER, app=lambda: record("a", 1)) == 0
    assert metering.flush() is True
    metering.close()


def test_from_config_path(tmp_path: Path) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(f"meters:\n  api_calls: {A}\ncustomer: header:X-Customer-Id\n")
    client = CapturingClient()
    metering = Metering.from_config(
        str(path), client=client, overrides={"default_meter": "api_calls"}
    )
    assert run(metering, CUSTOMER) == 1
    with Metering.from_config(metering.config, client=client) as again:
        assert again.config is metering.config
    assert client.closed


def test_default_client_is_a_fluxrate_client() -> None:
    client_module = pytest.importorskip("fluxrate_web.core.client")
    config = Config(api_key="org_live_test", base_url="http://127.0.0.1:9")
    metering = Metering(config)
    try:
        assert isinstance(metering.client, client_module.FluxrateClient)
        assert "org_live_test" not in repr(metering.client)
    finally:
        metering.close(timeout=0)


def test_group_defaults() -> None:
    @meter("api_calls")
    def blueprint_marker() -> None: ...

    @meter("ai_tokens", quantity=5)
    def inner_marker() -> None: ...

    @meter.exempt
    def exempt_marker() -> None: ...

    @meter("ai_tokens", quantity=2)
    def own_view() -> None: ...

    def plain_view() -> None: ...

    metering, _ = make(default_meter=None)
    plan = metering.route("/a", "GET", plain_view, defaults=(blueprint_marker,))
    assert [m.name for m in plan.meters] == ["api_calls"]
    plan = metering.route("/a", "GET", own_view, defaults=(blueprint_marker, inner_marker))
    assert [(m.name, m.constant) for m in plan.meters] == [("ai_tokens", 2), ("api_calls", 1)]
    plan = metering.route("/b", "GET", plain_view, defaults=(inner_marker, blueprint_marker))
    assert sorted(m.name for m in plan.meters) == ["ai_tokens", "api_calls"]
    assert metering.route("/c", "GET", own_view, defaults=(exempt_marker,)).exempt
    defaults = (blueprint_marker,)
    assert metering.route("/a", "GET", plain_view, defaults=defaults) is metering.route(
        "/a", "GET", plain_view, defaults=defaults
    )


def test_enter_and_exit_scope_for_streamed_bodies() -> None:
    metering, client = make(default_meter=None)
    scope = metering.open_scope()
    plan = metering.route("/stream", "GET")
    outside = contextvars.Context()

    def chunk() -> None:
        token = metering.enter_scope(scope)
        try:
            record("ai_tokens", 3)
        finally:
            metering.exit_scope(token)

    outside.run(chunk)
    outside.run(chunk)
    assert metering.finish(plan, CUSTOMER, scope, status=200) == 2
    assert client.events.total("ai_tokens") == 6


def test_empty_customer_means_resolved_nobody() -> None:
    class NoResolving(View):
        def header(self, name: str) -> str | None:
            if name == "x-customer-id":
                raise AssertionError("resolvers must not run")
            return None

    metering, client = make()
    assert run(metering, NoResolving(), customer="") == 0
    assert client.stats.dropped == 1
    assert run(metering, NoResolving(), customer="", app=lambda: record("ai_tokens", 1)) == 0
    assert client.events == []
