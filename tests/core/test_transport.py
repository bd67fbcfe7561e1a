"""The transport: request building, response classification, and the keep-alive pool over
real loopback sockets (plain, TLS, CONNECT proxy, both parsers)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import ssl
import time
from typing import Any

import pytest
from _corehelpers import ConnectProxy, ScriptedServer, make_certificate, scripted_server

from fluxrate_web.core.errors import (
    APIError,
    AuthenticationError,
    ConfigError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    ValidationError,
)
from fluxrate_web.core.events import UsageEvent
from fluxrate_web.core.transport import (
    DEDUPLICATED,
    DELIVERED,
    PERMANENT,
    RETRY,
    MissingCredentials,
    Proxy,
    Response,
    Transport,
    Wire,
    classify,
    classify_exception,
    error_for,
    make_ssl_context,
    mask,
    parse_base_url,
    parse_retry_after,
    proxy_for,
    redact,
)

KEY = "org_live_transport_test_key_0123456789"


# --------------------------------------------------------------------------- base URLs


def test_parse_base_url() -> None:
    endpoint = parse_base_url("https://api.fluxrate.co")
    assert (endpoint.host, endpoint.port, endpoint.base_path, endpoint.tls) == (
        "api.fluxrate.co",
        443,
        "",
        True,
    )
    assert parse_base_url("https://api.fluxrate.co/api/v1/").base_path == ""
    assert parse_base_url("http://127.0.0.1:8000/proxy/").base_path == "/proxy"
    assert parse_base_url("http://[::1]:9000").host_header == "[::1]:9000"
    assert parse_base_url("http://localhost:8000").origin == "http://localhost:8000"


@pytest.mark.parametrize(
    "url",
    ["http://api.fluxrate.co", "http://10.0.0.5:8000", "http://example.com/"],
)
def test_plain_http_refused_off_loopback(url: str) -> None:
    with pytest.raises(ConfigError, match="allow_insecure"):
        parse_base_url(url)
    assert parse_base_url(url, allow_insecure=True).scheme == "http"


@pytest.mark.parametrize(
    "url", ["ftp://x", "https://", "https://user:pw@h", "https://h/?q=1", "http://h x", ""]
)
def test_bad_base_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        parse_base_url(url)


def test_proxy_from_environment() -> None:
    endpoint = parse_base_url("https://api.fluxrate.co")
    env = {"HTTPS_PROXY": "http://user:p%40ss@proxy.internal:3128"}
    proxy = proxy_for(endpoint, env)
    assert proxy is not None
    assert (proxy.host, proxy.port) == ("proxy.internal", 3128)
    assert proxy.authorization == "Basic dXNlcjpwQHNz"  # user:p@ss
    assert proxy_for(endpoint, {**env, "NO_PROXY": "fluxrate.co"}) is None
    assert proxy_for(endpoint, {**env, "no_proxy": "*"}) is None
    assert proxy_for(endpoint, {**env, "NO_PROXY": "other.com,.fluxrate.co"}) is None
    assert proxy_for(endpoint, {**env, "NO_PROXY": "other.com"}) is not None
    assert proxy_for(endpoint, {"HTTP_PROXY": "http://p:1"}) is None  # wrong scheme
    assert proxy_for(parse_base_url("http://127.0.0.1:1"), {"HTTP_PROXY": "http://p:1"}) is None


# --------------------------------------------------------------------------- building


def test_wire_builds_one_complete_request() -> None:
    wire = Wire(parse_base_url("http://127.0.0.1:8000"), api_key=KEY)
    event = UsageEvent.create("mt", "cust", 3, idempotency_key="key-1")
    data = wire.build(event)
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /api/v1/sdk/track HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Host"] == "127.0.0.1:8000"
    assert headers["X-API-Key"] == KEY
    assert headers["Idempotency-Key"] == "key-1"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body)["idempotency_key"] == "key-1"


def test_wire_rest_route_and_missing_credentials() -> None:
    endpoint = parse_base_url("http://127.0.0.1:8000/base")
    both = Wire(endpoint, api_key=KEY, access_token="jwt.token.here")
    rest = UsageEvent.rest("m-id", "c-id", 2)
    data = both.build(rest)
    assert data.startswith(b"POST /base/api/v1/usage HTTP/1.1\r\n")
    assert b"Cookie: access_token=jwt.token.here\r\n" in data
    assert KEY.encode() not in data
    track = both.build(UsageEvent.create("mt", "c"))
    assert track.startswith(b"POST /base/api/v1/sdk/track ")
    with pytest.raises(MissingCredentials) as info:
        Wire(endpoint, api_key=None).build(UsageEvent.create("mt", "c"))
    assert info.value.reason == "no_api_key"
    with pytest.raises(MissingCredentials) as info:
        Wire(endpoint, api_key=KEY).build(rest)
    assert info.value.reason == "no_access_token"
    with pytest.raises(ConfigError, match="api_key") as bad:
        Wire(endpoint, api_key="abc\r\nX-Evil: 1")
    assert "abc" not in str(bad.value)


def test_plain_http_proxy_uses_absolute_target() -> None:
    endpoint = parse_base_url("http://api.example.com", allow_insecure=True)
    wire = Wire(endpoint, api_key=KEY, proxy=Proxy("proxy", 3128, "Basic eHg="))
    data = wire.build(UsageEvent.create("mt", "c"))
    assert data.startswith(b"POST http://api.example.com/api/v1/sdk/track HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic eHg=\r\n" in data


# --------------------------------------------------------------------------- classification


def _response(status: int, body: Any = None, **headers: str) -> Response:
    raw = json.dumps(body).encode() if body is not None else b""
    return Response(
        status, [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()], raw
    )


def test_classify_success_and_duplicates() -> None:
    created = classify(_response(201, {"id": "e1"}))
    assert created.kind == DELIVERED
    assert created.record == {"id": "e1"}
    replay = classify(_response(200, {"id": "e1"}))
    assert replay.kind == DEDUPLICATED
    assert replay.record == {"id": "e1"}
    header = classify(_response(201, {"id": "e1"}, Idempotent_Replayed="true"))
    assert header.kind == DEDUPLICATED
    assert classify(_response(409, {"detail": "duplicate"})).kind == DEDUPLICATED


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_classify_retryable(status: int) -> None:
    outcome = classify(_response(status, {"detail": "busy"}))
    assert outcome.kind == RETRY
    assert outcome.status == status
    assert "busy" in (outcome.error or "")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 413, 422, 301])
def test_classify_permanent(status: int) -> None:
    assert classify(_response(status, {"detail": "no"})).kind == PERMANENT


def test_retry_after_seconds_and_dates() -> None:
    assert classify(_response(429, {}, Retry_After="3")).retry_after == 3.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    parsed = parse_retry_after(when)
    assert parsed is not None
    assert 27 <= parsed <= 31
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("1e9") == 86400.0


def test_error_mapping() -> None:
    def err(status: int, **headers: str) -> Exception:
        return error_for(classify(_response(status, {"detail": "why"}, **headers)))

    assert isinstance(err(401), AuthenticationError)
    assert isinstance(err(403), AuthenticationError)
    assert isinstance(err(400), ValidationError)
    assert isinstance(err(422), ValidationError)
    assert isinstance(err(404), NotFoundError)
    limited = err(429, Retry_After="7")
    assert isinstance(limited, RateLimitedError)
    assert limited.retry_after == 7.0
    assert isinstance(err(503), ServerError)
    assert isinstance(err(408), ServerError)
    other = err(418)
    assert type(other) is APIError
    assert other.status == 418
    assert other.detail == "why"
    assert isinstance(error_for(classify_exception(OSError("reset"))), TransportError)


def test_list_details_and_non_json_bodies() -> None:
    outcome = classify(Response(422, [], b'{"detail":[{"loc":["quantity"],"msg":"bad"}]}'))
    assert outcome.detail is not None
    assert "quantity" in outcome.detail
    text = classify(Response(502, [], b"<html>Bad gateway</html>"))
    assert text.kind == RETRY
    assert "Bad gateway" in (text.error or "")


def test_secrets_are_redacted_from_details() -> None:
    outcome = classify(_response(401, {"detail": f"bad key {KEY}"}), secrets=[KEY])
    assert KEY not in (outcome.error or "")
    assert "***" in (outcome.detail or "")
    assert redact(f"x {KEY} y", [KEY, None]) == "x *** y"
    assert KEY not in mask(KEY)
    assert mask(KEY).startswith("'org_live_")


# --------------------------------------------------------------------------- live pool


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _event(i: int = 0) -> UsageEvent:
    return UsageEvent.create("mt", f"cust{i}", 1)


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_keep_alive_reuses_one_connection(parser: str) -> None:
    with scripted_server() as server:
        endpoint = parse_base_url(server.url)
        wire = Wire(endpoint, api_key=KEY)

        async def go() -> list[int]:
            transport = Transport(endpoint, parser=parser)
            try:
                statuses = []
                for i in range(20):
                    statuses.append((await transport.request(wire.build(_event(i)))).status)
                return statuses
            finally:
                await transport.aclose()

        assert _run(go()) == [201] * 20
        assert server.connections == 1
        assert server.requests[0].headers["x-api-key"] == KEY


def test_concurrent_requests_and_large_bodies() -> None:
    big = {"detail": "x" * 200_000}
    with scripted_server(script=lambda r: (201, {}, json.dumps(big).encode())) as server:
        endpoint = parse_base_url(server.url)
        wire = Wire(endpoint, api_key=KEY)

        async def go() -> list[Response]:
            transport = Transport(endpoint)
            try:
                return await asyncio.gather(
                    *(transport.request(wire.build(_event(i))) for i in range(16))
                )
            finally:
                await transport.aclose()

        responses = _run(go())
        assert all(json.loads(r.body) == big for r in responses)


def test_stale_keep_alive_connection_is_replaced() -> None:
    with scripted_server() as server:
        endpoint = parse_base_url(server.url)
        wire = Wire(endpoint, api_key=KEY)

        async def go() -> int:
            transport = Transport(endpoint)
            try:
                await transport.request(wire.build(_event(1)))
                server.drop_connections()
                await asyncio.sleep(0.05)
                return (await transport.request(wire.build(_event(2)))).status
            finally:
                await transport.aclose()

        assert _run(go()) == 201
        assert server.connections == 2


def test_connection_close_responses() -> None:
    with scripted_server(close_after_each=True) as server:
        endpoint = parse_base_url(server.url)
        wire = Wire(endpoint, api_key=KEY)

        async def go() -> list[int]:
            transport = Transport(endpoint)
            try:
                return [(await transport.request(wire.build(_event(i)))).status for i in range(3)]
            finally:
                await transport.aclose()

        assert _run(go()) == [201, 201, 201]
        assert server.connections == 3


def test_timeout_and_refused_connections() -> None:
    with scripted_server(delay=2.0) as server:
        endpoint = parse_base_url(server.url)
        wire = Wire(endpoint, api_key=KEY)

        async def slow() -> None:
            transport = Transport(endpoint, timeout=0.3)
            try:
                await transport.request(wire.build(_event()))
            finally:
                await transport.aclose()

        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            _run(slow())
        assert time.monotonic() - started < 1.5
        port = server.port
    refused = parse_base_url(f"http://127.0.0.1:{port}")

    async def nothing_there() -> None:
        transport = Transport(refused, timeout=2)
        try:
            await transport.request(Wire(refused, api_key=KEY).build(_event()))
        finally:
            await transport.aclose()

    with pytest.raises(TransportError, match="cannot connect"):
        _run(nothing_there())


def test_dropped_connection_mid_request() -> None:
    with scripted_server(script=[(-1, {}, b"")]) as server:
        endpoint = parse_base_url(server.url)

        async def go() -> None:
            transport = Transport(endpoint)
            try:
                await transport.request(Wire(endpoint, api_key=KEY).build(_event()))
            finally:
                await transport.aclose()

        with pytest.raises(TransportError, match="closed"):
            _run(go())


def test_localhost_name_resolves(tmp_path: Any) -> None:
    with scripted_server() as server:
        endpoint = parse_base_url(f"http://localhost:{server.port}")

        async def go() -> int:
            transport = Transport(endpoint)
            try:
                return (await transport.request(Wire(endpoint, api_key=KEY).build(_event()))).status
            finally:
                await transport.aclose()

        try:
            assert _run(go()) == 201
        except TransportError as exc:  # localhost may resolve to ::1 first with no v6 listener
            pytest.skip(f"localhost not reachable on 127.0.0.1 here: {exc}")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    pair = make_certificate(str(tmp_path_factory.mktemp("tls")))
    if pair is None:
        pytest.skip("openssl is not available to make a test certificate")
    return pair


def _tls_server(certificate: tuple[str, str]) -> ScriptedServer:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certificate)
    return ScriptedServer(ssl_context=ctx)


def test_tls_verifies_certificates(certificate: tuple[str, str]) -> None:
    with _tls_server(certificate) as server:
        endpoint = parse_base_url(server.url)
        wire = Wire(endpoint, api_key=KEY)

        async def go(ctx: ssl.SSLContext) -> int:
            transport = Transport(endpoint, ssl_context=ctx, timeout=5)
            try:
                return (await transport.request(wire.build(_event()))).status
            finally:
                await transport.aclose()

        assert _run(go(make_ssl_context(certificate[0]))) == 201
        with pytest.raises(TransportError, match=r"TLS|certificate"):
            _run(go(make_ssl_context(True)))  # the system store does not know our test CA
        assert _run(go(make_ssl_context(False))) == 201


def test_tls_through_connect_proxy(certificate: tuple[str, str]) -> None:
    with _tls_server(certificate) as server, ConnectProxy(require_auth="Basic dTpw") as proxy:
        endpoint = parse_base_url(server.url)
        wire = Wire(endpoint, api_key=KEY)

        async def go(auth: str | None) -> list[int]:
            transport = Transport(
                endpoint,
                ssl_context=make_ssl_context(certificate[0]),
                proxy=Proxy("127.0.0.1", proxy.port, auth),
                timeout=5,
            )
            try:
                return [(await transport.request(wire.build(_event(i)))).status for i in range(3)]
            finally:
                await transport.aclose()

        assert _run(go("Basic dTpw")) == [201, 201, 201]
        assert proxy.tunnels == [f"127.0.0.1:{server.port}"]  # one tunnel, kept alive
        with pytest.raises(TransportError, match="407"):
            _run(go(None))
