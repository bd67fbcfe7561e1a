"""When the Flask adapter enqueues: complete responses once Flask finished them (also when the
test never closes them), streamed ones when their body is exhausted or closed, exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, Response, abort, g, stream_with_context
from fluxrate_flask_support import CUSTOMER, AppFactory, RecordingClient

from fluxrate_web.flask import meter, record


def add_routes(app: Flask) -> None:
    @app.get("/items/<int:item_id>")
    @meter("api_calls")
    def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.post("/items")
    @meter("api_calls")
    @meter("bytes", quantity="request_bytes")
    def create() -> tuple[dict[str, bool], int]:
        return {"created": True}, 201

    @app.get("/missing")
    @meter("api_calls")
    def missing() -> None:
        abort(404)

    @app.get("/boom")
    @meter("api_calls")
    def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/stream")
    @meter("api_calls")
    @meter("bytes", quantity="response_bytes")
    def stream() -> Response:
        def body() -> Iterator[str]:
            yield "hello "
            yield "world"

        return Response(body())

    @app.get("/stream-tokens")
    @meter("api_calls")
    def stream_tokens() -> Response:
        @stream_with_context
        def body() -> Iterator[bytes]:
            for word in (b"a", b"b", b"c"):
                yield word
                record("tokens", 1)

        return Response(body())

    @app.get("/stream-fails")
    @meter("api_calls")
    def stream_fails() -> Response:
        def body() -> Iterator[bytes]:
            yield b"partial"
            raise RuntimeError("the model crashed")

        return Response(body())


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    app = make_app()
    add_routes(app)
    return app


def test_complete_response_billed_without_closing_it(app: Flask, recorder: RecordingClient) -> None:
    client = app.test_client()
    response = client.get("/items/7", headers=CUSTOMER)  # never closed, body never read
    assert response.status_code == 200
    assert recorder.billed() == [("api_calls", "cus_1", 1)]
    response.close()
    assert len(recorder.events) == 1  # closing it later does not bill again


def test_many_unclosed_responses_each_billed_once(app: Flask, recorder: RecordingClient) -> None:
    client = app.test_client()
    for _ in range(25):
        client.get("/items/1", headers=CUSTOMER)
    assert len(recorder.events) == 25
    assert len({e.idempotency_key for e in recorder.events}) == 25


def test_with_block_closes_and_bills_once(app: Flask, recorder: RecordingClient) -> None:
    with app.test_client() as client, client.get("/items/1", headers=CUSTOMER) as response:
        assert response.json == {"id": 1}
    assert len(recorder.events) == 1


def test_final_status_after_after_request_handlers(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app()
    add_routes(app)

    @app.after_request
    def deny(response: Response) -> Response:
        if g.get("deny"):
            response.status_code = 403
        return response

    @app.before_request
    def maybe_deny() -> None:
        from flask import request

        g.deny = request.args.get("deny") == "1"

    client = app.test_client()
    assert client.get("/items/1?deny=1", headers=CUSTOMER).status_code == 403
    assert recorder.events == []  # the final status (403) decided, not the view's 200
    assert client.get("/items/1", headers=CUSTOMER).status_code == 200
    assert len(recorder.events) == 1


def test_after_request_turning_an_error_into_success_is_billed(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app()
    add_routes(app)

    @app.after_request
    def soften(response: Response) -> Response:
        if response.status_code == 404:
            response.status_code = 200
        return response

    assert app.test_client().get("/missing", headers=CUSTOMER).status_code == 200
    assert recorder.billed() == [("api_calls", "cus_1", 1)]


def test_billed_after_request_finished_receivers(app: Flask, recorder: RecordingClient) -> None:
    from flask import request_finished

    seen: list[int] = []

    def receiver(sender: Flask, response: Response, **extra: object) -> None:
        seen.append(len(recorder.events))

    request_finished.connect(receiver, app)
    try:
        app.test_client().get("/items/1", headers=CUSTOMER)
    finally:
        request_finished.disconnect(receiver, app)
    assert seen == [0]  # not yet when the app's own receivers run
    assert len(recorder.events) == 1


def test_errors_are_not_billed(app: Flask, recorder: RecordingClient) -> None:
    client = app.test_client()
    assert client.get("/missing", headers=CUSTOMER).status_code == 404
    assert client.get("/nowhere", headers=CUSTOMER).status_code == 404
    assert client.post("/items/1", headers=CUSTOMER).status_code == 405
    assert recorder.events == []


def test_exception_propagating_in_testing_mode(app: Flask, recorder: RecordingClient) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        app.test_client().get("/boom", headers=CUSTOMER)
    assert recorder.events == []
    # the request scope was closed: the next request is billed normally
    app.test_client().get("/items/1", headers=CUSTOMER)
    assert len(recorder.events) == 1


def test_exception_turned_into_500(make_app: AppFactory, recorder: RecordingClient) -> None:
    app = make_app(testing=False)
    add_routes(app)
    app.logger.disabled = True
    assert app.test_client().get("/boom", headers=CUSTOMER).status_code == 500
    assert recorder.events == []


def test_bill_on_exception_bills_the_failed_request(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app(testing=False, bill_on="any", bill_on_exception=True)
    add_routes(app)
    app.logger.disabled = True
    assert app.test_client().get("/boom", headers=CUSTOMER).status_code == 500
    assert recorder.billed() == [("api_calls", "cus_1", 1)]


def test_request_bytes_from_content_length(app: Flask, recorder: RecordingClient) -> None:
    response = app.test_client().post("/items", data=b"x" * 1234, headers=CUSTOMER)
    assert response.status_code == 201
    assert sorted(recorder.billed()) == [("api_calls", "cus_1", 1), ("bytes", "cus_1", 1234)]


def test_stream_billed_when_read_with_data(app: Flask, recorder: RecordingClient) -> None:
    response = app.test_client().get("/stream", headers=CUSTOMER)
    assert recorder.events == []  # the body has not been sent yet
    assert response.data == b"hello world"
    assert sorted(recorder.billed()) == [("api_calls", "cus_1", 1), ("bytes", "cus_1", 11)]
    response.close()
    assert len(recorder.events) == 2  # exhausted, then closed: still once


def test_stream_billed_when_iterated(app: Flask, recorder: RecordingClient) -> None:
    response = app.test_client().get("/stream", headers=CUSTOMER)
    assert b"".join(response.iter_encoded()) == b"hello world"
    assert len(recorder.events) == 2


def test_stream_closed_early_is_a_disconnect(app: Flask, recorder: RecordingClient) -> None:
    response = app.test_client().get("/stream", headers=CUSTOMER)
    response.close()
    assert recorder.events == []  # bill_on_disconnect is off by default


def test_stream_closed_early_billed_with_bill_on_disconnect(
    make_app: AppFactory, recorder: RecordingClient
) -> None:
    app = make_app(bill_on_disconnect=True)
    add_routes(app)
    response = app.test_client().get("/stream", headers=CUSTOMER)
    response.close()
    # Werkzeug's test client reads the first chunk before returning
    assert sorted(recorder.billed()) == [("api_calls", "cus_1", 1), ("bytes", "cus_1", 6)]
    response.close()
    assert len(recorder.events) == 2


def test_stream_that_raises_is_not_billed(app: Flask, recorder: RecordingClient) -> None:
    response = app.test_client().get("/stream-fails", headers=CUSTOMER)
    with pytest.raises(RuntimeError, match="crashed"):
        _ = response.data
    response.close()
    assert recorder.events == []


def test_record_while_streaming(app: Flask, recorder: RecordingClient) -> None:
    response = app.test_client().get("/stream-tokens", headers=CUSTOMER)
    assert response.data == b"abc"
    assert sorted(recorder.billed()) == [
        ("api_calls", "cus_1", 1),
        ("tokens", "cus_1", 1),
        ("tokens", "cus_1", 1),
        ("tokens", "cus_1", 1),
    ]


def test_record_outside_a_stream_is_not_captured_by_an_unread_one(
    app: Flask, recorder: RecordingClient
) -> None:
    client = app.test_client()
    unread = client.get("/stream", headers=CUSTOMER)  # never read, never closed
    record("tokens", 5)  # outside any request: dropped, not added to the unread stream
    assert unread.data == b"hello world"
    assert [e.meter for e in recorder.events].count("tokens") == 0


def test_head_of_a_stream_billed_at_once(app: Flask, recorder: RecordingClient) -> None:
    response = app.test_client().head("/stream", headers=CUSTOMER)
    assert response.status_code == 200
    # Werkzeug sends no body for HEAD, so the stream is never iterated: billed at once, with
    # no response bytes (a quantity of 0 bills nothing)
    assert recorder.billed() == [("api_calls", "cus_1", 1)]


def test_streams_interleaved(app: Flask, recorder: RecordingClient) -> None:
    client = app.test_client()
    first = client.get("/stream-tokens", headers={"X-Customer-Id": "a"})
    second = client.get("/stream-tokens", headers={"X-Customer-Id": "b"})
    assert second.data == b"abc"
    assert first.data == b"abc"
    by_customer = sorted((e.customer, e.meter) for e in recorder.events)
    assert by_customer == [
        ("a", "api_calls"),
        ("a", "tokens"),
        ("a", "tokens"),
        ("a", "tokens"),
        ("b", "api_calls"),
        ("b", "tokens"),
        ("b", "tokens"),
        ("b", "tokens"),
    ]


def test_buffered_test_client_request(app: Flask, recorder: RecordingClient) -> None:
    response = app.test_client().open("/stream", headers=CUSTOMER, buffered=True)
    assert response.data == b"hello world"
    assert len(recorder.events) == 2


def test_send_file(make_app: AppFactory, recorder: RecordingClient, tmp_path: Path) -> None:
    from flask import send_file

    data = tmp_path / "report.csv"
    data.write_bytes(b"a,b\n" * 1000)
    app = make_app()

    @app.get("/metered-file")
    @meter("bytes", quantity="response_bytes")
    def metered_file() -> Response:
        return send_file(data)

    @app.get("/free-file")
    def free_file() -> Response:
        return send_file(data)

    from werkzeug.test import EnvironBuilder
    from werkzeug.wsgi import FileWrapper

    def served(path: str) -> object:
        environ = EnvironBuilder(path, headers=CUSTOMER).get_environ()
        body = app(environ, lambda status, headers, exc_info=None: None)
        kind = type(body)
        b"".join(body)  # type: ignore[call-overload]
        body.close()  # type: ignore[attr-defined]
        return kind

    assert served("/free-file") is FileWrapper  # untouched: a server may use sendfile()
    assert recorder.events == []
    assert served("/metered-file") is not FileWrapper
    assert recorder.billed() == [("bytes", "cus_1", 4000)]
