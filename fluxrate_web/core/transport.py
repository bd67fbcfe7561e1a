"""HTTP/1.1 delivery: request building and response classification (sans-IO), and a lean
keep-alive connection pool on asyncio.

The sans-IO half is the one implementation shared by the background dispatcher, ``send()`` and
``send_async()``:

* :meth:`Wire.build` turns a :class:`UsageEvent` into the bytes of one HTTP request (headers and
  body, written to the socket in ONE call);
* :func:`classify` turns a :class:`Response` into an :class:`Outcome` (delivered, deduplicated,
  retry later, permanent failure) and :func:`error_for` into the exception ``send()`` raises.

The I/O half, :class:`Transport`, keeps a pool of keep-alive connections built on
``asyncio.Protocol`` (no stream objects per request), parses responses with ``httptools``
(llhttp, the parser of Node.js) or, when that is not installed, ``h11``, encrypts with the
stdlib ``ssl`` module (verification on by default), honours ``HTTPS_PROXY``/``HTTP_PROXY``/
``NO_PROXY`` (CONNECT tunnel, then TLS) and enforces a per-request timeout with one watchdog
timer per pool instead of one timer per request. The choice was measured: see
``bench/transports.py`` and ``docs/core.md``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import encodings.idna  # noqa: F401  # imported now: a lazy import in the worker breaks after fork
import importlib
import ipaddress
import json
import math
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, Final

from fluxrate_web._version import __version__
from fluxrate_web.core.errors import (
    APIError,
    AuthenticationError,
    ConfigError,
    FluxrateError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    ValidationError,
)
from fluxrate_web.core.events import UsageEvent

# The response parser: httptools (C, llhttp) when installed, h11 (pure Python) otherwise.
# Both are imported here, at import time: a lazy import on the worker thread can be caught
# half-done by fork() and break every delivery in the child.
_httptools: Any
_h11: Any
try:
    _httptools = importlib.import_module("httptools")
except ImportError:  # pragma: no cover - exercised only where httptools is missing
    _httptools = None
try:
    _h11 = importlib.import_module("h11")
except ImportError:  # pragma: no cover
    _h11 = None

__all__ = [
    "DEFAULT_BASE_URL",
    "Endpoint",
    "Outcome",
    "Response",
    "Transport",
    "Wire",
    "classify",
    "classify_exception",
    "error_for",
    "is_loopback_host",
    "make_ssl_context",
    "parse_base_url",
    "redact",
]

DEFAULT_BASE_URL: Final = "https://api.fluxrate.co"
TRACK_PATH: Final = "/api/v1/sdk/track"
REST_PATH: Final = "/api/v1/usage"
MAX_RESPONSE_BYTES: Final = 1 << 20
USER_AGENT: Final = f"fluxrate-web/{__version__}"

# Outcome kinds
DELIVERED: Final = 1
DEDUPLICATED: Final = 2
RETRY: Final = 3
PERMANENT: Final = 4

# --------------------------------------------------------------------------- secrets


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (API key, access token) replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return text


def mask(secret: str | None) -> str:
    """A printable hint of a secret: ``org_live_…a1b2`` style, never the whole value."""
    if not secret:
        return "None"
    if len(secret) <= 12:
        return "'***'"
    prefix = secret[: secret.rfind("_") + 1] if "_" in secret[:12] else ""
    return f"'{prefix}***'"


# --------------------------------------------------------------------------- endpoint


def is_loopback_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.", "ip6-localhost") or host.lower().endswith(
        ".localhost"
    ):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed base URL."""

    scheme: str  # "http" or "https"
    host: str  # without brackets
    port: int
    base_path: str  # "" or "/prefix" (no trailing slash)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host_header}"

    def __str__(self) -> str:
        return self.origin + self.base_path


def parse_base_url(url: str, *, allow_insecure: bool = False) -> Endpoint:
    """Parse and check a base URL (``https://api.fluxrate.co``, ``http://127.0.0.1:8000``).

    Plain ``http://`` is refused for non-loopback hosts unless ``allow_insecure``: the API key
    would cross the network in clear text. Raises :class:`ConfigError`.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("base_url: expected a URL such as https://api.fluxrate.co")
    text = url.strip()
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise ConfigError("base_url: contains spaces or control characters")
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(f"base_url: expected http:// or https://, got {text!r}")
    if parts.username or parts.password:
        raise ConfigError("base_url: must not contain credentials")
    if parts.query or parts.fragment:
        raise ConfigError("base_url: must not contain a query or fragment")
    host = parts.hostname
    if not host:
        raise ConfigError(f"base_url: no host in {text!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"base_url: bad port in {text!r}") from None
    path = parts.path.rstrip("/")
    if path.endswith("/api/v1"):  # accept the API root as well as the origin
        path = path[: -len("/api/v1")]
    if scheme == "http" and not allow_insecure and not is_loopback_host(host):
        raise ConfigError(
            f"base_url: plain http:// to {host} would send the API key unencrypted; "
            "use https:// or pass allow_insecure=True"
        )
    try:
        host.encode("idna")
    except UnicodeError:
        raise ConfigError(f"base_url: bad host name {host!r}") from None
    return Endpoint(scheme, host, port, path)


def make_ssl_context(verify: bool | str | ssl.SSLContext = True) -> ssl.SSLContext:
    """``True``: the system trust store; a path: a CA bundle (file or directory); ``False``:
    no verification (development only); or a ready ``SSLContext``."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is True:
        return ssl.create_default_context()
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if isinstance(verify, str):
        import os

        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    raise ConfigError(f"verify: expected a bool, a CA bundle path or an SSLContext, got {verify!r}")


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # "Basic ..." or None


def proxy_for(endpoint: Endpoint, env: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy to use for ``endpoint`` from ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``
    (upper or lower case). Loopback hosts never go through a proxy."""
    if is_loopback_host(endpoint.host):
        return None
    if env is None:
        proxies = urllib.request.getproxies_environment()
    else:
        proxies = {k.lower()[:-6]: v for k, v in env.items() if k.lower().endswith("_proxy") and v}
    url: str | None
    url = proxies.get(endpoint.scheme)
    if not url:
        return None
    no_proxy = proxies.get("no")
    if no_proxy:
        if no_proxy.strip() == "*":
            return None
        host = endpoint.host.lower()
        for entry in no_proxy.split(","):
            entry = entry.strip().lower().lstrip(".")
            if entry.startswith("*."):
                entry = entry[2:]
            name, _, only_port = entry.partition(":")
            if only_port and only_port != str(endpoint.port):
                continue
            if name and (host == name or host.endswith("." + name)):
                return None
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return None
    auth = None
    if parts.username:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return Proxy(parts.hostname, port, auth)


# --------------------------------------------------------------------------- building requests


def _quantity_json(quantity: int | float | Decimal) -> str:
    if type(quantity) is int:
        return str(quantity)
    if type(quantity) is float:
        return repr(quantity)  # finite: repr() is a valid JSON number
    return str(quantity)  # Decimal: finite and > 0, str() is a valid JSON number


def track_body(event: UsageEvent) -> bytes:
    """The JSON body of ``POST /api/v1/sdk/track`` for ``event``."""
    meta = event.metadata_json
    return (
        '{"meter_token":'
        + _json_str(event.meter_token)
        + ',"customer_external_id":'
        + _json_str(event.customer_external_id)
        + ',"quantity":'
        + _quantity_json(event.quantity)
        + ',"timestamp":"'
        + event.timestamp
        + '","idempotency_key":'
        + _json_str(event.idempotency_key)
        + ("}" if meta is None else ',"metadata":' + meta + "}")
    ).encode()


def rest_body(event: UsageEvent) -> bytes:
    """The JSON body of ``POST /api/v1/usage`` for ``event``."""
    meta = event.metadata_json
    return (
        '{"meter_id":'
        + _json_str(event.meter_id or "")
        + ',"customer_id":'
        + _json_str(event.customer_id or "")
        + ',"quantity":'
        + _quantity_json(event.quantity)
        + ',"timestamp":"'
        + event.timestamp
        + '","idempotency_key":'
        + _json_str(event.idempotency_key)
        + ("}" if meta is None else ',"metadata":' + meta + "}")
    ).encode()


class MissingCredentials(FluxrateError):
    """Raised by :meth:`Wire.build` when the event cannot be sent with the credentials held.
    ``reason`` is the failure-log reason (``no_api_key`` or ``no_access_token``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_header_value(name: str, value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or not value.isascii():
        raise ConfigError(f"{name}: contains characters that cannot go in an HTTP header")
    return value


class Wire:
    """Request building for one endpoint and set of credentials: precomputed header blocks,
    then per event only the body, its length and one concatenation."""

    __slots__ = ("_rest_head", "_track_head", "endpoint", "proxy", "secrets")

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        api_key: str | None,
        access_token: str | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.proxy = proxy
        self.secrets: tuple[str, ...] = tuple(s for s in (api_key, access_token) if s)
        # plain-http proxies take the absolute URL as the request target
        target_base = (
            endpoint.origin + endpoint.base_path
            if proxy is not None and not endpoint.tls
            else endpoint.base_path
        )
        common = (
            f"Host: {endpoint.host_header}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Accept: application/json\r\n"
            "Content-Type: application/json\r\n"
        )
        if proxy is not None and not endpoint.tls and proxy.authorization:
            common += f"Proxy-Authorization: {proxy.authorization}\r\n"
        self._track_head: bytes | None = None
        self._rest_head: bytes | None = None
        if api_key:
            _check_header_value("api_key", api_key)
            self._track_head = (
                f"POST {target_base}{TRACK_PATH} HTTP/1.1\r\n{common}"
                f"X-API-Key: {api_key}\r\nContent-Length: "
            ).encode("ascii")
        if access_token:
            _check_header_value("access_token", access_token)
            self._rest_head = (
                f"POST {target_base}{REST_PATH} HTTP/1.1\r\n{common}"
                f"Cookie: access_token={access_token}\r\nContent-Length: "
            ).encode("ascii")

    @property
    def has_api_key(self) -> bool:
        return self._track_head is not None

    def build(self, event: UsageEvent) -> bytes:
        """The complete request (head and body) for ``event``. Raises
        :class:`MissingCredentials` when neither route can carry it."""
        if event.meter_id is not None and self._rest_head is not None:
            body = rest_body(event)
            head = self._rest_head
        elif self._track_head is not None and event.meter_token and event.customer_external_id:
            body = track_body(event)
            head = self._track_head
        elif event.meter_id is not None and not event.meter_token:
            raise MissingCredentials(
                "no_access_token", "a REST event (meter_id/customer_id) needs access_token"
            )
        else:
            raise MissingCredentials(
                "no_api_key", "no API key configured (api_key= or FLUXRATE_API_KEY)"
            )
        return b"%b%d\r\nIdempotency-Key: %b\r\n\r\n%b" % (
            head,
            len(body),
            event.idempotency_key.encode(),
            body,
        )


# --------------------------------------------------------------------------- classification


class Response:
    """A parsed HTTP response."""

    __slots__ = ("body", "headers", "keep_alive", "status")

    def __init__(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool = True
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("ascii")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None


class Outcome:
    """What one attempt came to. ``kind`` is DELIVERED, DEDUPLICATED, RETRY or PERMANENT."""

    __slots__ = ("detail", "error", "kind", "record", "retry_after", "status")

    def __init__(
        self,
        kind: int,
        status: int | None = None,
        *,
        record: dict[str, Any] | None = None,
        error: str | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.kind = kind
        self.status = status
        self.record = record
        self.error = error
        self.detail = detail
        self.retry_after = retry_after

    @property
    def ok(self) -> bool:
        return self.kind == DELIVERED or self.kind == DEDUPLICATED

    def __repr__(self) -> str:
        names = {DELIVERED: "delivered", DEDUPLICATED: "deduplicated", RETRY: "retry"}
        return (
            f"Outcome({names.get(self.kind, 'permanent')}, status={self.status}, "
            f"error={self.error!r})"
        )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date. ``None`` if absent
    or unreadable; never negative; capped at one day."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), 86400.0)


def _detail(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    if not body:
        return None, None
    try:
        data = json.loads(body)
    except ValueError:
        text = body[:300].decode("utf-8", "replace").strip()
        return None, text or None
    if not isinstance(data, dict):
        return None, None
    detail = data.get("detail", data.get("message"))
    if detail is None:
        return data, None
    text = detail if isinstance(detail, str) else json.dumps(detail, default=str)
    return data, text[:500]


_DEDUP_HEADERS = (b"idempotent-replayed", b"x-idempotent-replayed", b"x-idempotent-replay")


def classify(
    response: Response, *, secrets: Iterable[str | None] = (), want_record: bool = True
) -> Outcome:
    """Sort a response: 201 (and other 2xx) delivered; 200 with the original record, or a
    ``*Idempotent-Replay*: true`` header, or 409 deduplicated; 408/429/5xx retry (with
    ``Retry-After``); any other status permanent. ``want_record=False`` skips decoding the
    JSON body of a success (the dispatcher only needs the verdict)."""
    status = response.status
    if 200 <= status < 300:
        record: dict[str, Any] | None = None
        if want_record:  # the background path does not need the server's record
            try:
                data = json.loads(response.body) if response.body else {}
            except ValueError:
                data = {}
            record = data if isinstance(data, dict) else {"data": data}
        replayed = any(
            k.lower() in _DEDUP_HEADERS and v.strip().lower() in (b"true", b"1")
            for k, v in response.headers
        )
        kind = DEDUPLICATED if status == 200 or replayed else DELIVERED
        return Outcome(kind, status, record=record)
    _data, detail = _detail(response.body)
    if detail is not None:
        detail = redact(detail, secrets)
    if status == 409:  # the key was seen before: the event is already recorded
        return Outcome(DEDUPLICATED, status, record=_data or {}, detail=detail)
    error = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status in (408, 429) or 500 <= status <= 599:
        retry_after = parse_retry_after(response.header("retry-after"))
        return Outcome(RETRY, status, error=error, detail=detail, retry_after=retry_after)
    return Outcome(PERMANENT, status, error=error, detail=detail)


def classify_exception(exc: BaseException, *, secrets: Iterable[str | None] = ()) -> Outcome:
    """A network failure: always worth a retry (the idempotency key makes resending safe)."""
    text = redact(f"{type(exc).__name__}: {exc}".rstrip(": "), secrets)
    return Outcome(RETRY, None, error=text[:500])


def error_for(outcome: Outcome) -> FluxrateError:
    """The exception ``send()`` raises for a failed outcome."""
    status = outcome.status
    message = outcome.error or "delivery failed"
    if status is None:
        return TransportError(message)
    if status in (401, 403):
        return AuthenticationError(message, status=status, detail=outcome.detail)
    if status in (400, 422):
        return ValidationError(message, status=status, detail=outcome.detail)
    if status == 404:
        return NotFoundError(message, status=status, detail=outcome.detail)
    if status == 429:
        return RateLimitedError(
            message, status=status, detail=outcome.detail, retry_after=outcome.retry_after
        )
    if status == 408 or status >= 500:
        return ServerError(message, status=status, detail=outcome.detail)
    return APIError(message, status=status, detail=outcome.detail)


# --------------------------------------------------------------------------- connections


class _ConnectionClosed(TransportError):
    """The connection closed. ``before_response``: no byte of the response had arrived."""

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, parser: str) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.requests = 0
        self.deadline = math.inf
        self.idle_since = time.monotonic()
        self._got_bytes = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._h11: Any = None
        self._status = 0
        self._parser: Any
        if parser == "httptools":
            self._parser = _httptools.HttpResponseParser(self)
        else:
            self._parser = None
            self._h11 = _h11.Connection(_h11.CLIENT)

    # asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self.waiter is None:  # nothing asked: the server misbehaves
            self.abort()
            return
        try:
            if self._parser is not None:
                self._parser.feed_data(data)
            else:
                self._feed_h11(data)
        except Exception as exc:  # parser errors and oversize bodies
            self._fail(TransportError(f"bad HTTP response: {type(exc).__name__}: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and self._parser is not None and self._got_bytes:
            # a response delimited by the end of the connection
            try:
                self._parser.feed_data(b"")
            except Exception:
                pass
        reason = f": {exc}" if exc else ""
        self._fail(
            _ConnectionClosed(
                f"connection closed by the server{reason}", before_response=not self._got_bytes
            )
        )

    # httptools callbacks -----------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_RESPONSE_BYTES:
            raise TransportError("response body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        self._complete(parser.get_status_code(), parser.should_keep_alive())

    # h11 fallback --------------------------------------------------------
    def _feed_h11(self, data: bytes) -> None:
        conn = self._h11
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is _h11.NEED_DATA:
                return
            kind = type(event)
            if kind is _h11.Response:
                self._status = event.status_code
                self._headers = list(event.headers)
            elif kind is _h11.Data:
                self.on_body(bytes(event.data))
            elif kind is _h11.EndOfMessage:
                keep = conn.our_state is _h11.DONE and conn.their_state is _h11.DONE
                self._complete(self._status, keep)
                if keep:
                    conn.start_next_cycle()
                return
            elif kind is _h11.ConnectionClosed:
                return

    def _prime_h11(self) -> None:
        # h11 parses a response only after it has "sent" a request; it sends a stand-in whose
        # bytes are discarded (the real request is serialised by Wire).
        conn = self._h11
        conn.send(
            _h11.Request(
                method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]
            )
        )
        conn.send(_h11.EndOfMessage())

    # helpers -------------------------------------------------------------
    def _complete(self, status: int, keep_alive: bool) -> None:
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        response = Response(status, self._headers, body, keep_alive)
        self._headers = []
        self._body = []
        self._size = 0
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes, deadline: float) -> asyncio.Future[Response]:
        transport = self.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self.waiter = waiter
        self._got_bytes = False
        self.deadline = deadline
        self.requests += 1
        if self._h11 is not None:
            self._prime_h11()
        transport.write(data)  # one write: head and body together (TCP_NODELAY is set)
        return waiter


# --------------------------------------------------------------------------- DNS


class _Resolver:
    """getaddrinfo on a short-lived daemon thread, cached for ``ttl`` seconds.

    Not ``loop.getaddrinfo``: that uses the default executor, which refuses work once the
    interpreter has begun to exit, exactly when the exit flush needs to connect.
    """

    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self._cache: dict[tuple[str, int], tuple[float, list[tuple[Any, ...]]]] = {}

    async def resolve(self, host: str, port: int) -> list[tuple[Any, ...]]:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
        key = (host, port)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[tuple[Any, ...]]] = loop.create_future()

        def work() -> None:
            try:
                result: Any = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                ok = True
            except BaseException as exc:
                result, ok = exc, False

            def deliver() -> None:
                if future.done():
                    return
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(result)

            try:
                loop.call_soon_threadsafe(deliver)
            except RuntimeError:  # loop closed meanwhile
                pass

        try:
            threading.Thread(target=work, name="fluxrate-dns", daemon=True).start()
        except RuntimeError:  # no new threads (interpreter shutting down): resolve inline
            work()
        infos = await future
        self._cache[key] = (now + self.ttl, infos)
        return infos


# --------------------------------------------------------------------------- the pool


def _default_parser() -> str:
    if _httptools is not None:
        return "httptools"
    if _h11 is not None:  # pragma: no cover
        return "h11"
    raise ImportError("fluxrate-web needs httptools or h11")  # pragma: no cover


class Transport:
    """A pool of keep-alive connections to one endpoint, bound to the running event loop.

    ``request(data)`` writes one complete HTTP request and returns the parsed
    :class:`Response`, or raises :class:`TransportError` (connect, TLS, proxy, timeout,
    connection reset). A request on a reused connection that the server had already closed is
    resent once on a fresh connection (idempotency keys make that safe).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        ssl_context: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
        timeout: float = 10.0,
        max_idle: int = 32,
        parser: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.proxy = proxy
        self.timeout = timeout
        self.max_idle = max_idle
        self.parser = parser or _default_parser()
        if self.parser == "httptools" and _httptools is None:  # pragma: no cover
            raise ImportError("httptools is not installed")
        if self.parser == "h11" and _h11 is None:  # pragma: no cover
            raise ImportError("h11 is not installed")
        if endpoint.tls and ssl_context is None:
            ssl_context = make_ssl_context(True)
        self.ssl_context = ssl_context if endpoint.tls else None
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._resolver = _Resolver()
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self.connections_opened = 0

    # -- public -----------------------------------------------------------
    async def request(self, data: bytes) -> Response:
        if self._closed:
            raise TransportError("transport closed")
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            conn = self._idle.pop() if self._idle else None
            while conn is not None and conn.closed:
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            self._busy.add(conn)
            if self._watchdog is None:
                self._arm_watchdog(loop)
            try:
                response = await conn.send(data, loop.time() + self.timeout)
            except _ConnectionClosed as exc:
                self._busy.discard(conn)
                conn.close()
                if reused and exc.before_response and attempt == 0:
                    continue  # a stale keep-alive connection: once more, on a fresh one
                raise
            except BaseException:
                self._busy.discard(conn)
                conn.abort()
                raise
            self._busy.discard(conn)
            if response.keep_alive and not conn.closed and len(self._idle) < self.max_idle:
                conn.deadline = math.inf
                self._idle.append(conn)
            else:
                conn.close()
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close every connection (idle and busy) and stop the watchdog."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        conns = [*self._idle, *self._busy]
        self._idle.clear()
        self._busy.clear()
        for conn in conns:
            conn._fail(TransportError("transport closed"))
            conn.abort()
        if conns:
            await asyncio.sleep(0)  # let the transports run connection_lost and close sockets

    def close_nowait(self) -> None:
        """Synchronous close (loop thread only): abort every connection."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for conn in [*self._idle, *self._busy]:
            conn._fail(TransportError("transport closed"))
            conn.abort()
        self._idle.clear()
        self._busy.clear()

    @property
    def open_connections(self) -> int:
        return len(self._idle) + len(self._busy)

    # -- internals ----------------------------------------------------------
    def _arm_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        tick = max(0.05, min(1.0, self.timeout / 4))
        self._watchdog = loop.call_later(tick, self._check_deadlines, loop)

    def _check_deadlines(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchdog = None
        now = loop.time()
        for conn in list(self._busy):
            if conn.deadline <= now:
                self._busy.discard(conn)
                conn._fail(TransportError(f"timed out after {self.timeout:g} s"))
                conn.abort()
        # idle connections unused for a while are closed (servers drop them anyway)
        mono = time.monotonic()
        if self._idle and mono - self._idle[0].idle_since > 60.0:
            keep = [c for c in self._idle if mono - c.idle_since <= 60.0 and not c.closed]
            for conn in self._idle:
                if conn not in keep:
                    conn.close()
            self._idle[:] = keep
        if self._busy and not self._closed:
            self._arm_watchdog(loop)

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._open()
        except TimeoutError:
            raise TransportError(
                f"connecting to {self.endpoint.origin} timed out after {self.timeout:g} s"
            ) from None
        except ssl.SSLError as exc:
            raise TransportError(f"TLS error with {self.endpoint.origin}: {exc}") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {self._target_text()}: {exc}") from None
        self.connections_opened += 1
        return conn

    def _target_text(self) -> str:
        if self.proxy is not None:
            return f"{self.endpoint.origin} via proxy {self.proxy.host}:{self.proxy.port}"
        return self.endpoint.origin

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        host, port = (
            (self.proxy.host, self.proxy.port) if self.proxy else (endpoint.host, endpoint.port)
        )
        infos = await self._resolver.resolve(host, port)
        last_exc: BaseException | None = None
        for family, type_, proto, _canon, address in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                if family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
            except BaseException as exc:
                sock.close()
                last_exc = exc
                if not isinstance(exc, OSError):
                    raise
                continue
            break
        else:
            raise last_exc if last_exc else OSError(f"no address for {host}")
        try:
            if self.proxy is not None and endpoint.tls:
                return await self._tunnel(loop, sock)
            conn = _Connection(self.parser)
            await loop.create_connection(
                lambda: conn,
                sock=sock,
                ssl=self.ssl_context,
                server_hostname=endpoint.host if self.ssl_context else None,
            )
            return conn
        except BaseException:
            sock.close()
            raise

    async def _tunnel(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> _Connection:
        assert self.proxy is not None
        endpoint = self.endpoint
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        authority = f"{host}:{endpoint.port}"
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {USER_AGENT}"]
        if self.proxy.authorization:
            lines.append(f"Proxy-Authorization: {self.proxy.authorization}")
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise TransportError("the proxy closed the connection during CONNECT")
            head += chunk
            if len(head) > 65536:
                raise TransportError("the proxy sent an oversized CONNECT response")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit() or not 200 <= int(parts[1]) < 300:
            raise TransportError(f"the proxy refused CONNECT {authority}: {status_line}")
        # anything after the head belongs to TLS; a proxy does not send that before we speak
        conn = _Connection(self.parser)
        transport, _ = await loop.create_connection(lambda: conn, sock=sock)
        assert self.ssl_context is not None
        try:
            tls = await loop.start_tls(
                transport, conn, self.ssl_context, server_hostname=endpoint.host
            )
        except BaseException:
            transport.abort()
            raise
        if tls is None:  # pragma: no cover
            transport.abort()
            raise TransportError("TLS over the proxy tunnel could not start")
        conn.transport = tls
        return conn
