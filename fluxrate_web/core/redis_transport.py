"""The ``redis`` transport: the background worker appends events to a Redis stream.

With ``transport: redis`` the request path is unchanged (``track()`` queues in memory); the
dispatcher's workers hand each event to :class:`RedisSink` instead of the HTTP transport.
The sink looks like one HTTP attempt to the dispatcher (``deliver(event) -> Outcome``), so the
queue bound, retries with backoff, the spool and the failure log apply unchanged when Redis
cannot be reached. The events of one loop pass are appended in ONE round trip (a Lua script
doing the ``XADD``\\ s: about 6 us of client CPU per event in batches of a few hundred, against
30 us for a redis-py pipeline of ``XADD`` commands).

Each stream entry has two fields: ``idempotency_key`` and ``event`` (the JSON of
:meth:`UsageEvent.to_dict`, the failure log's format), so the key and timestamp fixed when the
event was created travel unchanged to ``fluxrate-web relay`` (:mod:`fluxrate_web.relay`),
which delivers them to Fluxrate.

Fleet-wide pre-aggregation: the aggregates a process emits for an aggregated meter (keys
``agg_...``) are not appended as events but *contributed* to one Redis hash per
(meter, customer, metadata, window), idempotently (a contribution is a hash field named by the
aggregate's own key: appending it twice changes nothing). A relay seals each window's hash once
it closed and appends ONE event for it, with a key derived from the group alone
(:func:`fleet_key`), whatever the number of processes. A contribution that arrives after its
window was sealed is appended as its own event (billed, not merged). See ``docs/scale-out.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from decimal import Context, Decimal, InvalidOperation
from typing import Any, Final

from fluxrate_web.core._log import logger
from fluxrate_web.core.aggregation import AggregationSpec, _epoch_ms
from fluxrate_web.core.errors import ConfigError
from fluxrate_web.core.events import MAX_QUANTITY, UsageEvent
from fluxrate_web.core.failures import FailureRecord
from fluxrate_web.core.transport import DEDUPLICATED, DELIVERED, PERMANENT, RETRY, Outcome

try:  # imported now, on the importing thread: never lazily on the dispatcher thread
    import redis.asyncio as _aioredis
    from redis.asyncio.retry import Retry as _Retry
    from redis.backoff import NoBackoff as _NoBackoff
except ImportError:  # pragma: no cover - exercised only without the redis extra
    _aioredis = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_REDIS_STREAM",
    "DEFAULT_REDIS_URL",
    "RedisSink",
    "check_redis_url",
    "dead_stream",
    "decode_entry",
    "encode_event",
    "fleet_key",
    "mask_redis_url",
]

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
DEFAULT_REDIS_STREAM: Final = "fluxrate:events"
FIELD_KEY: Final = "idempotency_key"
FIELD_EVENT: Final = "event"
MAX_BATCH: Final = 512  # events appended per round trip at most
# how long a sealed fleet aggregate remembers which contributions it holds (a retried append
# of one of them is then recognised); contributions to windows older than this minus an hour
# are appended as single events
SEALED_TTL: Final = 86_400
_LATE_SINGLE_MS: Final = (SEALED_TTL - 3600) * 1000
_DECIMAL: Final = Context(prec=60, traps=[InvalidOperation])
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)

# Append one batch. KEYS[1] the stream, KEYS[2] the sorted set of open fleet aggregates.
# ARGV: items, each either   'e', key, event_json   (an event: XADD)
#                       or   'a', key, event_json, group_hash, contribution, group_meta, score
# Reply per item: 1 appended, 2 already contributed (a retried append), 3 contributed after the
# window was sealed (appended as its own event), 4 contributed.
_APPEND_LUA: Final = """
local out = {}
local i = 1
local n = 0
while i <= #ARGV do
  n = n + 1
  if ARGV[i] == 'e' then
    redis.call('XADD', KEYS[1], '*', 'idempotency_key', ARGV[i+1], 'event', ARGV[i+2])
    out[n] = 1
    i = i + 3
  else
    local key, g = ARGV[i+1], ARGV[i+3]
    if redis.call('HEXISTS', g, key) == 1 then
      out[n] = 2
    elseif redis.call('HEXISTS', g, '_sealed') == 1 then
      redis.call('HSET', g, key, ARGV[i+4])
      redis.call('XADD', KEYS[1], '*', 'idempotency_key', key, 'event', ARGV[i+2])
      out[n] = 3
    else
      redis.call('HSET', g, key, ARGV[i+4])
      if redis.call('HSETNX', g, '_m', ARGV[i+5]) == 1 then
        redis.call('ZADD', KEYS[2], ARGV[i+6], g)
      end
      out[n] = 4
    end
    i = i + 7
  end
end
return out
"""


# --------------------------------------------------------------------------- URLs and names


def check_redis_url(url: object, what: str = "redis_url") -> str:
    """``redis://``, ``rediss://`` or ``unix://`` URL, else :class:`ConfigError`."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{what}: expected a redis:// URL, got {url!r}")
    url = url.strip()
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"{what}: expected a redis://, rediss:// or unix:// URL, got {mask_redis_url(url)!r}"
        )
    return url


def check_stream_name(name: object, what: str = "redis_stream") -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what}: expected a non-empty stream name, got {name!r}")
    if any(ord(c) < 0x20 for c in name):
        raise ConfigError(f"{what}: control characters are not allowed")
    return name.strip()


def mask_redis_url(url: str) -> str:
    """The URL without its password (``redis://user:***@host:6379/0``)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "redis://***"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def url_secrets(url: str) -> tuple[str, ...]:
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return ()
    return (password,) if password else ()


def dead_stream(stream: str) -> str:
    """The dead-letter stream of ``stream``: events the API refused for good."""
    return f"{stream}:dead"


def open_set(stream: str) -> str:
    """The sorted set of fleet aggregates not sealed yet (scored by window end, ms)."""
    return f"{stream}:agg:open"


def require_redis() -> Any:
    if _aioredis is None:  # pragma: no cover
        raise ConfigError(
            "transport: redis needs the redis package: pip install 'fluxrate-web[redis]'"
        )
    return _aioredis


def connect(url: str, *, timeout: float | None, retries: int = 0, **kwargs: Any) -> Any:
    """A ``redis.asyncio.Redis`` for ``url`` (no connection yet). ``retries=0``: a failed
    command fails at once (the caller has its own retry policy)."""
    aioredis = require_redis()
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=_Retry(_NoBackoff(), retries),
        decode_responses=True,
        **kwargs,
    )


# --------------------------------------------------------------------------- encoding


def encode_event(event: UsageEvent) -> str:
    """The ``event`` field of a stream entry: the failure log's JSON of the event."""
    return _compact.encode(event.to_dict())


def decode_entry(fields: Mapping[str, str]) -> UsageEvent:
    """The event of a stream entry (``ValueError`` / ``InvalidUsageError`` if unreadable)."""
    raw = fields.get(FIELD_EVENT)
    if raw is None:
        raise ValueError("no 'event' field")
    event = UsageEvent.from_dict(json.loads(raw))
    key = fields.get(FIELD_KEY)
    if key is not None and key != event.idempotency_key:
        raise ValueError("the idempotency_key field differs from the event's key")
    return event


def _quantity_text(quantity: int | float | Decimal) -> str:
    if isinstance(quantity, float):
        return repr(quantity)
    return str(quantity)


def group_id(meter: str, customer: str, meta: str, start_ms: int, window_ms: int) -> str:
    material = "\x1f".join((meter, customer, meta, str(start_ms), str(window_ms)))
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def fleet_key(meter: str, customer: str, meta: str, start_ms: int, window_ms: int) -> str:
    """The idempotency key of a fleet-wide aggregate: derived from its group alone (meter,
    customer, canonical metadata, window), so every relay would compute the same one."""
    material = "\x1f".join(("fleet", meter, customer, meta, str(start_ms), str(window_ms)))
    return "agg_" + hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _canonical_meta(event: UsageEvent) -> str:
    metadata = event.metadata
    return _canonical.encode(dict(metadata)) if metadata else ""


def contribution_args(
    stream: str, event: UsageEvent, spec: tuple[str, int], now_ms: int
) -> list[str] | None:
    """The ``'a'`` item of :data:`_APPEND_LUA` for a per-process aggregate, or ``None`` when it
    must be appended as a plain event (its window is too old to be merged safely)."""
    kind, window_ms = spec
    ts_ms = _epoch_ms(event.timestamp)
    start_ms = ts_ms - ts_ms % window_ms
    end_ms = start_ms + window_ms
    if end_ms < now_ms - _LATE_SINGLE_MS:
        return None
    meta = _canonical_meta(event)
    gid = group_id(event.meter_token, event.customer_external_id, meta, start_ms, window_ms)
    group_meta = _compact.encode(
        {
            "meter": event.meter_token,
            "customer": event.customer_external_id,
            "metadata": meta,
            "start": start_ms,
            "window": window_ms,
            "aggregation": kind,
        }
    )
    contribution = f"{event.timestamp}|{_quantity_text(event.quantity)}"
    return [
        "a",
        event.idempotency_key,
        encode_event(event),
        f"{stream}:agg:{gid}",
        contribution,
        group_meta,
        str(end_ms),
    ]


def merge_contributions(
    group_meta: Mapping[str, Any], contributions: Mapping[str, str]
) -> list[UsageEvent]:
    """The fleet aggregate of one sealed window: what Fluxrate itself would compute from the
    contributions (SUM: exact decimal sum; MAX: largest; LAST and UNIQUE_COUNT: the quantity
    with the latest timestamp, ties broken by contribution key). Usually one event; a SUM above
    the API's largest quantity is split into several, with keys derived from the group's."""
    kind = str(group_meta["aggregation"])
    meter = str(group_meta["meter"])
    customer = str(group_meta["customer"])
    meta = str(group_meta.get("metadata") or "")
    start_ms = int(group_meta["start"])
    window_ms = int(group_meta["window"])
    parsed: list[tuple[str, Decimal, str, str]] = []  # timestamp, value, text, key
    for name, contribution in contributions.items():
        stamp, _, text = contribution.partition("|")
        parsed.append((stamp, Decimal(text), text, name))
    if not parsed:
        return []
    latest = max(parsed, key=lambda p: (p[0], p[3]))
    timestamp = latest[0]
    key = fleet_key(meter, customer, meta, start_ms, window_ms)
    metadata = json.loads(meta) if meta else None
    quantities: list[Decimal]
    if kind == "SUM":
        total = Decimal(0)
        for p in parsed:
            total = _DECIMAL.add(total, p[1])
        quantities = []
        while total > MAX_QUANTITY:
            quantities.append(Decimal(MAX_QUANTITY))
            total = _DECIMAL.subtract(total, Decimal(MAX_QUANTITY))
        if total > 0 or not quantities:
            quantities.append(total)
    elif kind == "MAX":
        quantities = [max(parsed, key=lambda p: (p[1], p[3]))[1]]
    else:  # LAST, UNIQUE_COUNT
        quantities = [latest[1]]
    events = []
    for i, q in enumerate(quantities):
        value: int | Decimal = int(q) if q == q.to_integral_value() else q.normalize(_DECIMAL)
        events.append(
            UsageEvent(
                meter_token=meter,
                customer_external_id=customer,
                quantity=value,
                timestamp=timestamp,
                idempotency_key=key if i == 0 else f"{key}_{i}",
                metadata=metadata,
            )
        )
    return events


# --------------------------------------------------------------------------- the sink


class RedisSink:
    """Appends events to a Redis stream for the dispatcher: ``await deliver(event)`` answers
    DELIVERED (appended), DEDUPLICATED (an aggregate contribution Redis already holds), RETRY
    (Redis unreachable, timed out, out of memory, read-only replica...) or PERMANENT (an event
    that cannot be encoded). The ``deliver()`` calls of one loop pass share one round trip.

    Created on the dispatcher's loop thread (``Lane.start``): the connection pool belongs to
    that loop, and a forked child gets a sink of its own.
    """

    def __init__(
        self,
        url: str,
        stream: str = DEFAULT_REDIS_STREAM,
        *,
        timeout: float = 10.0,
        aggregation: Mapping[str, AggregationSpec] | None = None,
    ) -> None:
        self.url = url
        self.stream = stream
        self._open_set = open_set(stream)
        self._secrets = url_secrets(url)
        self._specs: dict[str, tuple[str, int]] = {
            token: (spec.aggregation, max(1, round(spec.window_seconds * 1000)))
            for token, spec in (aggregation or {}).items()
        }
        self._redis = connect(url, timeout=timeout, max_connections=64)
        self._script = self._redis.register_script(_APPEND_LUA)
        self._pending: list[tuple[UsageEvent, asyncio.Future[Outcome]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.appended = 0  # entries appended (benchmarks read it)
        self.round_trips = 0

    def __repr__(self) -> str:
        return f"RedisSink({mask_redis_url(self.url)!r}, stream={self.stream!r})"

    async def deliver(self, event: UsageEvent) -> Outcome:
        if self._closed:
            return Outcome(RETRY, None, error="redis transport closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._pending.append((event, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._launch)
        return await future

    def _launch(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        for i in range(0, len(pending), MAX_BATCH):
            task = loop.create_task(self._append(pending[i : i + MAX_BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _append(self, batch: list[tuple[UsageEvent, asyncio.Future[Outcome]]]) -> None:
        args: list[str] = []
        sent: list[asyncio.Future[Outcome]] = []
        now_ms = math.floor(time.time() * 1000)
        for event, future in batch:
            if future.done():  # cancelled (shutdown): not appended
                continue
            try:
                spec = self._specs.get(event.meter_token)
                item = None
                if spec is not None and event.idempotency_key.startswith("agg_"):
                    item = contribution_args(self.stream, event, spec, now_ms)
                if item is None:
                    item = ["e", event.idempotency_key, encode_event(event)]
            except Exception as exc:  # cannot happen for a valid UsageEvent
                future.set_result(Outcome(PERMANENT, None, error=f"cannot encode: {exc}"[:300]))
                continue
            args.extend(item)
            sent.append(future)
        if not sent:
            return
        try:
            replies = await self._script(keys=[self.stream, self._open_set], args=args)
        except asyncio.CancelledError:
            for future in sent:
                if not future.done():
                    future.cancel()
            raise
        except Exception as exc:
            error = self._redact(f"redis: {type(exc).__name__}: {exc}".rstrip(": "))[:500]
            outcome = Outcome(RETRY, None, error=error)
            for future in sent:
                if not future.done():
                    future.set_result(outcome)
            return
        self.round_trips += 1
        for future, reply in zip(sent, replies, strict=False):
            if reply in (1, 3):
                self.appended += 1
            if not future.done():
                future.set_result(Outcome(DEDUPLICATED if reply == 2 else DELIVERED, None))

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        if tasks:
            # appends already on the wire finish (their events are answered)
            done, _ = await asyncio.wait(tasks, timeout=2.0)
            for task in tasks:
                if task not in done:
                    task.cancel()
        for _event, future in self._pending:
            if not future.done():
                future.set_result(Outcome(RETRY, None, error="redis transport closed"))
        self._pending = []
        try:
            await self._redis.aclose()
        except Exception:  # pragma: no cover
            logger.debug("closing the redis connection pool failed", exc_info=True)


# --------------------------------------------------------------------------- dead letters


def is_redis_source(text: str) -> bool:
    """Whether ``fluxrate-web replay`` was given a Redis stream instead of a file."""
    return text.lower().startswith(("redis://", "rediss://", "unix://"))


def split_source(source: str) -> tuple[str, str]:
    """``redis://host:6379/0#fluxrate:events:dead`` -> (URL, stream); without a fragment the
    dead-letter stream of the default stream."""
    url, _, stream = source.partition("#")
    return check_redis_url(url, "source"), urllib.parse.unquote(stream) or dead_stream(
        DEFAULT_REDIS_STREAM
    )


def _sync_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=30, socket_connect_timeout=10
    )


def read_dead_letters(
    source: str, entry_ids: dict[str, list[str]]
) -> Iterable[tuple[int, str, FailureRecord | None, str | None]]:
    """The entries of a dead-letter stream as failure-log lines
    (:func:`~fluxrate_web.core.failures.read_failure_log`'s tuples); ``entry_ids`` receives the
    stream entry ids of each idempotency key (see :func:`delete_dead_letters`)."""
    url, stream = split_source(source)
    client = _sync_client(url)
    try:
        start = "-"
        number = 0
        while True:
            entries = client.xrange(stream, min=start, count=1000)
            if not entries:
                break
            for entry_id, fields in entries:
                number += 1
                raw = json.dumps({"entry": entry_id, **fields}, ensure_ascii=False)
                try:
                    event = decode_entry(fields)
                except Exception as exc:
                    yield number, raw, None, str(exc)[:200]
                    continue
                entry_ids.setdefault(event.idempotency_key, []).append(entry_id)
                status = fields.get("status")
                record = FailureRecord(
                    number,
                    event,
                    fields.get("reason") or "unknown",
                    int(status) if status and status.isdigit() else None,
                    fields.get("error"),
                    0,
                    fields.get("time"),
                )
                yield number, raw, record, None
            ms, _, seq = entries[-1][0].partition("-")
            start = f"{ms}-{int(seq) + 1}"
    finally:
        client.close()


def delete_dead_letters(source: str, entry_ids: Iterable[str]) -> int:
    """Remove replayed entries from the dead-letter stream (``XDEL``)."""
    url, stream = split_source(source)
    ids = list(entry_ids)
    client = _sync_client(url)
    try:
        removed = 0
        for i in range(0, len(ids), 1000):
            removed += int(client.xdel(stream, *ids[i : i + 1000]))
        return removed
    finally:
        client.close()
