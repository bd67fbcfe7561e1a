"""FluxrateMiddleware through Django's own test clients (WSGI and ASGI handlers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from wsgiref.util import FileWrapper, setup_testing_defaults

import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.wsgi import WSGIHandler
from django.test import AsyncClient, Client
from djangotestproj.meters import API_CALLS, BYTES_OUT, REPORTS

from fluxrate_web.testing import CapturingClient

Use = Callable[..., CapturingClient]
CUSTOMER = {"HTTP_X_CUSTOMER_ID": "acme"}
ACUSTOMER = {"headers": {"X-Customer-Id": "acme"}}


def only(client: CapturingClient) -> Any:
    assert len(client.events) == 1, list(client.events)
    return client.events[0]


def aget(path: str, **kwargs: Any) -> Any:
    return async_to_sync(AsyncClient().get)(path, **kwargs)


# -- function views -----------------------------------------------------------------------------


def test_function_view_is_billed_once_for_its_customer(captured: CapturingClient) -> None:
    response = Client().get("/plain/", **CUSTOMER)
    assert response.status_code == 200
    event = only(captured)
    assert (event.meter_token, event.customer_external_id, event.quantity) == (
        API_CALLS,
        "acme",
        1,
    )


def test_no_customer_is_not_billed_and_is_counted(captured: CapturingClient) -> None:
    assert Client().get("/plain/").status_code == 200
    assert len(captured.events) == 0
    assert len(captured.dropped) == 1
    assert "no customer" in captured.dropped[0]


def test_client_and_server_errors_are_not_billed(captured: CapturingClient) -> None:
    client = Client(raise_request_exception=False)
    assert client.get("/client-error/", **CUSTOMER).status_code == 400
    assert client.get("/server-error/", **CUSTOMER).status_code == 500
    assert client.get("/no-such-page/", **CUSTOMER).status_code == 404
    assert len(captured.events) == 0


def test_exception_billed_only_when_configured(use_config: Use) -> None:
    captured = use_config(BILL_ON="any", BILL_ON_EXCEPTION=True)
    Client(raise_request_exception=False).get("/server-error/", **CUSTOMER)
    assert only(captured).customer_external_id == "acme"


def test_routes_rules_match_the_full_route_of_nested_includes(use_config: Use) -> None:
    captured = use_config(
        ENDPOINTS=[
            {"route": "/v1/items/{pk}", "meter": "reports"},
            {"route": "/legacy/*", "meter": "bytes_out"},
        ]
    )
    Client().get("/v1/items/7/", **CUSTOMER)
    Client().get("/legacy/7/", **CUSTOMER)
    assert [e.meter_token for e in captured.events] == [REPORTS, BYTES_OUT]


def test_rules_match_namespaced_url_names(use_config: Use) -> None:
    captured = use_config(ENDPOINTS=[{"name": "v1:item", "meter": "reports"}])
    Client().get("/v1/items/7/", **CUSTOMER)
    assert only(captured).meter_token == REPORTS


def test_methods_restrict_rules(use_config: Use) -> None:
    captured = use_config(
        DEFAULT_METER=None, ENDPOINTS=[{"route": "/plain", "methods": ["POST"], "meter": "reports"}]
    )
    Client().get("/plain/", **CUSTOMER)
    assert len(captured.events) == 0
    Client().post("/plain/", **CUSTOMER)
    assert only(captured).meter_token == REPORTS


def test_exclude_and_exempt_are_not_billed(use_config: Use) -> None:
    captured = use_config(EXCLUDE=["/plain"])
    Client().get("/plain/", **CUSTOMER)
    Client().get("/exempt/", **CUSTOMER)
    assert len(captured.events) == 0


def test_meter_decorator_on_a_function_view(captured: CapturingClient) -> None:
    Client().get("/decorated/", **CUSTOMER)
    event = only(captured)
    assert (event.meter_token, event.quantity) == (REPORTS, 2)


# -- customers ------------------------------------------------------------------------------------


def test_customer_from_query_and_state(use_config: Use) -> None:
    captured = use_config(CUSTOMER=["query:customer", "state:tenant"])
    Client().get("/plain/?customer=from-query")
    Client().get("/by-state/")
    assert [e.customer_external_id for e in captured.events] == ["from-query", "tenant-from-state"]


def test_customer_from_a_callable(use_config: Use) -> None:
    captured = use_config(CUSTOMER=lambda request: request.META.get("REMOTE_ADDR"))
    Client().get("/plain/")
    assert only(captured).customer_external_id == "127.0.0.1"


@pytest.mark.django_db
def test_customer_from_the_session_user(use_config: Use) -> None:
    from django.contrib.auth.models import User

    captured = use_config(CUSTOMER="user:username")
    client = Client()
    client.force_login(User.objects.create(username="alice"))
    assert client.get("/whoami/").json() == {"user": "alice"}
    client.get("/plain/")  # the view never reads request.user
    client.logout()
    client.get("/plain/")  # anonymous: no customer
    assert [e.customer_external_id for e in captured.events] == ["alice", "alice"]


@pytest.mark.django_db(transaction=True)
def test_async_views_resolve_the_session_user_without_sync_db_access(use_config: Use) -> None:
    from django.contrib.auth.models import User

    captured = use_config(CUSTOMER="user:username")
    user = User.objects.create(username="bob")
    client = AsyncClient()
    client.force_login(user)
    # The view never reads request.user: the adapter awaits request.auser() itself rather than
    # evaluate the lazy user (a database query) in async code.
    assert async_to_sync(client.get)("/async-anonymous/").status_code == 200
    assert only(captured).customer_external_id == "bob"
    assert captured.dropped == []


# -- quantities -----------------------------------------------------------------------------------


def test_quantity_from_a_response_header(use_config: Use) -> None:
    captured = use_config(
        ENDPOINTS=[
            {"route": "/tokens", "meter": "reports", "quantity": "response_header:X-Tokens-Used"}
        ]
    )
    Client().get("/tokens/", **CUSTOMER)
    assert only(captured).quantity == 42


def test_request_bytes_come_from_content_length(use_config: Use) -> None:
    captured = use_config(
        ENDPOINTS=[{"route": "/plain", "meter": "bytes_out", "quantity": "request_bytes"}]
    )
    Client().post("/plain/", data=b"x" * 1234, content_type="application/octet-stream", **CUSTOMER)
    assert only(captured).quantity == 1234


def test_response_bytes_of_a_complete_response(use_config: Use) -> None:
    captured = use_config(
        ENDPOINTS=[{"route": "/plain", "meter": "bytes_out", "quantity": "response_bytes"}]
    )
    response = Client().get("/plain/", **CUSTOMER)
    assert only(captured).quantity == len(response.content)


def test_record_in_sync_and_async_views(use_config: Use) -> None:
    captured = use_config(DEFAULT_METER=None)
    Client().get("/recording/", **CUSTOMER)
    aget("/async-recording/", **ACUSTOMER)
    assert [(e.meter_token, e.quantity) for e in captured.events] == [(REPORTS, 3), (REPORTS, 5)]


# -- reject mode ----------------------------------------------------------------------------------


def test_reject_mode_answers_401_before_the_view(use_config: Use) -> None:
    captured = use_config(ON_MISSING_CUSTOMER="reject")
    response = Client().get("/recording/")
    assert response.status_code == 401
    assert response.json()["detail"]
    assert len(captured.events) == 0  # the view did not run: nothing recorded
    assert aget("/async/").status_code == 401
    assert Client().get("/plain/", **CUSTOMER).status_code == 200
    assert aget("/async/", **ACUSTOMER).status_code == 200
    assert len(captured.events) == 2


def test_reject_mode_lets_unmetered_routes_through(use_config: Use) -> None:
    use_config(ON_MISSING_CUSTOMER="reject", DEFAULT_METER=None)
    assert Client().get("/plain/").status_code == 200


# -- class-based views ----------------------------------------------------------------------------


def test_class_based_view_methods_and_method_decorator(captured: CapturingClient) -> None:
    assert Client().get("/cbv/", **CUSTOMER).status_code == 200
    assert Client().post("/cbv/", **CUSTOMER).status_code == 201
    assert [e.meter_token for e in captured.events] == [API_CALLS, REPORTS]


def test_method_decorator_on_dispatch_covers_every_method(captured: CapturingClient) -> None:
    Client().get("/cbv-dispatch/", **CUSTOMER)
    Client().delete("/cbv-dispatch/", **CUSTOMER)
    assert [(e.meter_token, e.quantity) for e in captured.events] == [(REPORTS, 7), (REPORTS, 7)]


def test_async_views_under_the_asgi_handler(captured: CapturingClient) -> None:
    assert aget("/async/", **ACUSTOMER).json() == {"async": True}
    assert aget("/cbv-async/", **ACUSTOMER).json() == {"async_cbv": True}
    assert aget("/plain/", **ACUSTOMER).status_code == 200  # a sync view under ASGI
    assert aget("/async-fail/", **ACUSTOMER).status_code == 503
    assert [e.customer_external_id for e in captured.events] == ["acme"] * 3


def test_async_views_under_the_wsgi_handler(captured: CapturingClient) -> None:
    assert Client().get("/async/", **CUSTOMER).status_code == 200
    assert only(captured).customer_external_id == "acme"


# -- Django REST framework ------------------------------------------------------------------------


def test_drf_api_view_and_method_decorator(captured: CapturingClient) -> None:
    assert Client().get("/drf/items/", **CUSTOMER).json() == {"drf": True}
    assert Client().post("/drf/items/", **CUSTOMER).status_code == 201
    assert Client().get("/drf/fn/", **CUSTOMER).status_code == 200
    assert [e.meter_token for e in captured.events] == [API_CALLS, REPORTS, API_CALLS]


def test_drf_viewset_actions(use_config: Use) -> None:
    captured = use_config(ENDPOINTS=[{"name": "thing-detail", "meter": "bytes_out"}])
    assert Client().get("/drf/things/", **CUSTOMER).status_code == 200
    assert Client().post("/drf/things/", **CUSTOMER).status_code == 201
    assert Client().get("/drf/things/5/", **CUSTOMER).json() == {"pk": "5"}
    assert [(e.meter_token, e.quantity) for e in captured.events] == [
        (API_CALLS, 1),
        (REPORTS, 4),
        (BYTES_OUT, 1),
    ]


# -- streamed responses ---------------------------------------------------------------------------

STREAM_BYTES = 600


def test_stream_is_billed_once_consumed_with_its_bytes(use_config: Use) -> None:
    captured = use_config(
        ENDPOINTS=[{"route": "/stream", "meter": "bytes_out", "quantity": "response_bytes"}]
    )
    response = Client().get("/stream/", **CUSTOMER)
    assert len(captured.events) == 0  # the view returned, nothing sent yet
    assert len(b"".join(response.streaming_content)) == STREAM_BYTES
    assert only(captured).quantity == STREAM_BYTES


@pytest.mark.django_db  # response.close() fires request_finished: Django checks its DB connections
def test_stream_closed_before_the_end_is_not_billed(use_config: Use) -> None:
    captured = use_config(
        ENDPOINTS=[{"route": "/stream", "meter": "bytes_out", "quantity": "response_bytes"}]
    )
    response = Client().get("/stream/", **CUSTOMER)
    next(iter(response))
    response.close()  # what a WSGI server does when the client goes away
    assert len(captured.events) == 0


@pytest.mark.django_db  # response.close() fires request_finished: Django checks its DB connections
def test_stream_cut_by_the_client_is_billed_when_configured(use_config: Use) -> None:
    captured = use_config(
        BILL_ON_DISCONNECT=True,
        ENDPOINTS=[{"route": "/stream", "meter": "bytes_out", "quantity": "response_bytes"}],
    )
    response = Client().get("/stream/", **CUSTOMER)
    next(iter(response))
    response.close()
    assert only(captured).quantity == 100


def test_stream_that_raises_is_not_billed(captured: CapturingClient) -> None:
    response = Client().get("/stream-fails/", **CUSTOMER)
    with pytest.raises(RuntimeError):
        b"".join(response.streaming_content)
    assert len(captured.events) == 0


def test_file_response_is_billed_once_read(use_config: Use) -> None:
    captured = use_config(
        ENDPOINTS=[{"route": "/download", "meter": "bytes_out", "quantity": "response_bytes"}]
    )
    response = Client().get("/download/", **CUSTOMER)
    assert response["Content-Length"] == "10000"
    assert len(captured.events) == 0
    assert len(b"".join(response.streaming_content)) == 10_000
    assert only(captured).quantity == 10_000


def test_async_stream_under_the_asgi_handler(use_config: Use) -> None:
    captured = use_config(
        ENDPOINTS=[{"route": "/async-stream", "meter": "bytes_out", "quantity": "response_bytes"}]
    )

    async def fetch() -> bytes:
        response = await AsyncClient().get("/async-stream/", **ACUSTOMER)
        assert len(captured.events) == 0
        return b"".join([chunk async for chunk in response.streaming_content])

    assert len(async_to_sync(fetch)()) == STREAM_BYTES
    assert only(captured).quantity == STREAM_BYTES


@pytest.mark.django_db  # response.close() fires request_finished: Django checks its DB connections
def test_file_sent_by_the_wsgi_servers_file_wrapper_is_billed_on_close(use_config: Use) -> None:
    """gunicorn & co. send a FileResponse's file themselves (sendfile) through
    ``wsgi.file_wrapper`` and never iterate the content; they close it when done."""
    captured = use_config(
        ENDPOINTS=[{"route": "/download", "meter": "bytes_out", "quantity": "response_bytes"}]
    )
    environ: dict[str, Any] = {"PATH_INFO": "/download/", "HTTP_X_CUSTOMER_ID": "acme"}
    setup_testing_defaults(environ)
    environ["wsgi.file_wrapper"] = FileWrapper
    statuses: list[str] = []
    body = WSGIHandler()(environ, lambda status, headers: statuses.append(status))
    assert isinstance(body, FileWrapper)
    assert statuses == ["200 OK"]
    assert len(b"".join(body)) == 10_000
    assert len(captured.events) == 0
    body.close()
    assert only(captured).quantity == 10_000
