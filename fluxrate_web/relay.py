"""``fluxrate-web relay``: deliver the events of a Redis stream to Fluxrate.

Apps configured with ``transport: redis`` append their events to a stream
(:mod:`fluxrate_web.core.redis_transport`); any number of relays, on any hosts, read it
through one consumer group and share the work::

    app processes ──XADD──> Redis stream ──XREADGROUP──> relays ──HTTP──> Fluxrate
                                  └── <stream>:dead (refused for good) ──> fluxrate-web replay

A relay:

* creates the group at the start of the stream (``XGROUP CREATE ... 0 MKSTREAM``), so events
  appended before any relay ran are delivered;
* reads through the group (``XREADGROUP``), at most ``window`` events held at once, and hands
  them to an ordinary :class:`~fluxrate_web.core.client.FluxrateClient`: its dispatcher does
  the retries, exponential backoff, ``Retry-After`` and concurrency (there is no second retry
  implementation here); the client's ``on_final`` callback reports each event's end;
* acknowledges (``XACK``) an entry only after the API accepted or deduplicated its event; an
  event refused for good (``4xx``) goes to the dead-letter stream ``<stream>:dead`` and is
  acknowledged in the same ``MULTI``; an event still failing after the retry budget is NOT
  acknowledged: it stays pending and is claimed again after ``claim_idle``;
* keeps the entries it holds fresh (``XCLAIM ... JUSTID`` every ``claim_idle / 3``) and claims
  those of relays that died (``XAUTOCLAIM`` of entries idle for more than ``claim_idle``,
  default 60 s);
* optionally limits the events per second sent to the API by all relays together
  (``relay_rate_limit``: a per-second counter in Redis, taken from Redis' clock);
* seals the fleet-wide aggregates whose window has closed and appends one event per
  (meter, customer, metadata, window) (see :mod:`fluxrate_web.core.redis_transport`);
* trims the stream below what every consumer group still needs, and forgets consumers that
  have been gone for an hour with nothing pending;
* on SIGTERM (or SIGINT) stops reading, lets in-flight deliveries finish (``shutdown_timeout``)
  and acknowledges them; what is not finished stays pending for the other relays.

Exactly once: the idempotency key fixed when the app created the event travels through the
stream unchanged, so a relay that dies after delivering and before ``XACK`` causes a
redelivery that Fluxrate answers as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from fluxrate_web.core._log import log_limited, logger
from fluxrate_web.core.client import FluxrateClient
from fluxrate_web.core.config import Config
from fluxrate_web.core.events import UsageEvent, utc_timestamp
from fluxrate_web.core.redis_transport import (
    FIELD_EVENT,
    FIELD_KEY,
    SEALED_TTL,
    connect,
    dead_stream,
    decode_entry,
    encode_event,
    mask_redis_url,
    merge_contributions,
    open_set,
)

__all__ = ["DEFAULT_GROUP", "Relay", "RelayStats", "trim_stream"]

DEFAULT_GROUP: Final = "fluxrate-relays"
# failure reasons that end in the dead-letter stream; any other (retries_exhausted,
# shutdown_deadline, ...) leaves the entry pending, to be claimed again after claim_idle
DEAD_REASONS: Final = frozenset({"rejected", "no_api_key", "no_access_token", "unreadable"})
_FORGET_CONSUMER_AFTER: Final = 3600.0  # seconds idle with nothing pending
_TRIM_EVERY: Final = 10.0

# Hand out up to ARGV[1] of ARGV[2] events per second (Redis' clock) shared by every relay.
# Returns {granted, microseconds until the next second, the second}.
_RATE_LUA: Final = """
local t = redis.call('TIME')
local key = KEYS[1] .. ':' .. t[1]
local used = tonumber(redis.call('GET', key) or '0')
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if grant <= 0 then return {0, 1000000 - tonumber(t[2]), t[1]} end
redis.call('INCRBY', key, grant)
redis.call('EXPIRE', key, 5)
return {grant, 1000000 - tonumber(t[2]), t[1]}
"""

# Give back tokens granted for a second and not used (fewer entries than asked for).
_REFUND_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECRBY', KEYS[1], ARGV[1]) end
return 0
"""

# Seal one fleet aggregate if nobody contributed since it was read, and append its event(s).
# KEYS: group hash, open set, stream. ARGV: expected HLEN, ttl, sealer, then key, event pairs.
_SEAL_LUA: Final = """
if redis.call('HEXISTS', KEYS[1], '_sealed') == 1 then
  redis.call('ZREM', KEYS[2], KEYS[1])
  return 0
end
if redis.call('HLEN', KEYS[1]) ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], '_sealed', ARGV[3])
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
for i = 4, #ARGV, 2 do
  redis.call('XADD', KEYS[3], '*', 'idempotency_key', ARGV[i], 'event', ARGV[i+1])
end
return 1
"""


@dataclass
class RelayStats:
    """Counters of one relay since it started."""

    read: int = 0  # entries read through the group (new)
    claimed: int = 0  # entries claimed: own backlog after a restart, dead relays', released
    acked: int = 0  # entries acknowledged after the API accepted them (or knew them)
    dead: int = 0  # entries moved to the dead-letter stream
    released: int = 0  # entries left pending (retry budget spent, shutdown): claimed later
    sealed: int = 0  # fleet aggregates sealed and appended
    rate_waits: int = 0  # times the global rate limit made this relay wait


class Relay:
    """One relay process's worker. ``await relay.run()`` until :meth:`stop`.

    ``config`` gives the API credentials and delivery settings (``api_key``, ``base_url``,
    ``max_in_flight``, ``max_attempts``, ``max_retry_age``, ``shutdown_timeout``...), the Redis
    URL and stream, ``relay_rate_limit`` and ``relay_claim_idle``. Keyword arguments override
    them; ``client_options`` are extra :class:`FluxrateClient` keyword arguments (tests pass
    short backoffs).
    """

    def __init__(
        self,
        config: Config,
        *,
        consumer: str | None = None,
        group: str = DEFAULT_GROUP,
        claim_idle: float | None = None,
        rate_limit: int | None = None,
        window: int | None = None,
        block: float = 1.0,
        aggregation_grace: float = 10.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.redis_url = config.redis_url
        self.stream = config.redis_stream
        self.dead_stream = dead_stream(self.stream)
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle = float(claim_idle if claim_idle is not None else config.relay_claim_idle)
        self.rate_limit = rate_limit if rate_limit is not None else config.relay_rate_limit
        self.window = window or max(256, 8 * config.max_in_flight)
        self.block = block
        self.aggregation_grace = aggregation_grace
        self.stats = RelayStats()
        kwargs = config.client_kwargs()
        for key in ("transport", "redis_url", "redis_stream", "aggregation", "durability",
                    "spool_path"):  # fmt: skip
            kwargs.pop(key, None)
        kwargs["max_queue_size"] = max(int(kwargs.get("max_queue_size") or 0), 2 * self.window)
        kwargs.update(client_options or {})
        # built now, so that a configuration problem is raised here (ConfigError); started by
        # run(). Its dispatcher reports each event's end to _on_final.
        self._client: FluxrateClient | None = FluxrateClient(**kwargs, on_final=self._on_final)
        self._redis: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        # held: entries handed to the client and not settled yet
        self._held: dict[int, tuple[str, UsageEvent]] = {}  # id(event) -> (entry id, event)
        self._held_ids: set[str] = set()
        self._to_ack: list[str] = []
        self._to_dead: list[tuple[str, dict[str, str]]] = []
        self._room: asyncio.Event | None = None
        self._ack_wake: asyncio.Event | None = None
        self._claim_cursor = "0-0"
        self._rate_key = f"{self.stream}:rate"
        self.client_stats: dict[str, Any] = {}
        self.failed = False  # run() stopped because of an unexpected error

    def __repr__(self) -> str:
        return (
            f"Relay({mask_redis_url(self.redis_url)!r}, stream={self.stream!r}, "
            f"group={self.group!r}, consumer={self.consumer!r})"
        )

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Stop reading, finish the deliveries in flight, acknowledge, return from run().
        Thread-safe; idempotent."""
        loop = self._loop
        if loop is None:
            self._stopping = True
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._request_stop)

    def _request_stop(self) -> None:
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        if self._room is not None:
            self._room.set()

    # ------------------------------------------------------------------ main

    async def run(self) -> RelayStats:
        """Relay until :meth:`stop` is called; returns the counters."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._room = asyncio.Event()
        self._ack_wake = asyncio.Event()
        if self._stopping:
            self._stop_event.set()
        timeout = self.config.request_timeout + self.block + 5.0
        self._redis = connect(self.redis_url, timeout=timeout, retries=0, max_connections=32)
        self._rate = self._redis.register_script(_RATE_LUA)
        self._refund_script = self._redis.register_script(_REFUND_LUA)
        self._seal = self._redis.register_script(_SEAL_LUA)
        assert self._client is not None
        self._client.start()
        logger.info(
            "relay %s: %s stream %s group %s (claim idle %.1f s, rate limit %s)",
            self.consumer, mask_redis_url(self.redis_url), self.stream, self.group,
            self.claim_idle, f"{self.rate_limit}/s" if self.rate_limit else "none",
        )  # fmt: skip
        acker = asyncio.create_task(self._acker(), name="fluxrate-relay-acker")
        upkeep = asyncio.create_task(self._upkeep(), name="fluxrate-relay-upkeep")
        reader = asyncio.create_task(self._reader(), name="fluxrate-relay-reader")
        stopper = asyncio.create_task(self._stop_event.wait())
        try:
            await asyncio.wait({stopper, acker, upkeep, reader}, return_when="FIRST_COMPLETED")
            for task in (acker, upkeep, reader):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self.failed = True  # a bug: stop cleanly, exit non-zero, let it restart
                    logger.error("relay %s: %s failed; stopping", self.consumer,
                                 task.get_name(), exc_info=task.exception())  # fmt: skip
            self._request_stop()
            # stop reading: the current read (at most `block` seconds) is admitted first
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(reader), self.block + 5.0)
            reader.cancel()
            upkeep.cancel()
            await asyncio.gather(reader, upkeep, return_exceptions=True)
            # the deliveries in flight finish (or stay pending for the other relays)
            client = self._client
            await asyncio.to_thread(client.close, self.config.shutdown_timeout)
            self.client_stats = client.stats.as_dict()
            await asyncio.sleep(0)  # the last on_final callbacks
            self._ack_wake.set()
            for _ in range(20):
                if not (self._to_ack or self._to_dead):
                    break
                await asyncio.sleep(0.05)
                self._ack_wake.set()
            acker.cancel()
            await asyncio.gather(acker, return_exceptions=True)
            if self._to_ack or self._to_dead:  # Redis is gone: they stay pending, claimed later
                await self._flush_acks(final=True)
            released = len(self._held)
            self.stats.released += released
            self._held.clear()
            self._held_ids.clear()
        finally:
            stopper.cancel()
            for task in (reader, upkeep, acker):
                task.cancel()
            if self._client is not None and not self._client.closed:
                await asyncio.to_thread(self._client.close, 0.0)
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        logger.info("relay %s stopped: %s", self.consumer, asdict(self.stats))
        return self.stats

    # ------------------------------------------------------------------ reading

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _reader(self) -> None:
        assert self._room is not None
        backoff = 0.0
        own_backlog: str | None = "0"  # our own pending entries first (a restart, same name)
        next_claim = 0.0
        group_ready = False
        while not self._stopping:
            room = self.window - len(self._held)
            if room <= 0:
                self._room.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 1.0)
                continue
            # the global rate limit is taken before reading: a relay never sits on entries
            # that another relay could deliver now
            granted, second = await self._acquire(room)
            if granted <= 0:
                continue
            entries: list[tuple[str, dict[str, str] | None]] = []
            try:
                if not group_ready:
                    await self._ensure_group()
                    group_ready = True
                claimed = False
                if own_backlog is not None:
                    reply = await self._redis.xreadgroup(
                        self.group, self.consumer, {self.stream: own_backlog}, count=granted
                    )
                    entries = reply[0][1] if reply else []
                    own_backlog = entries[-1][0] if entries else None
                    claimed = True
                elif time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + max(0.05, self.claim_idle / 4)
                    entries = await self._autoclaim(granted)
                    claimed = True
                else:
                    block = max(1, round(self.block * 1000))
                    if next_claim - time.monotonic() < self.block:
                        block = max(1, round((next_claim - time.monotonic()) * 1000))
                    reply = await self._redis.xreadgroup(
                        self.group, self.consumer, {self.stream: ">"}, count=granted,
                        block=block,
                    )  # fmt: skip
                    entries = reply[0][1] if reply else []
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):  # the stream or group is gone (a Redis restart
                    group_ready = False  # without persistence): create them again
                backoff = min(5.0, max(0.1, backoff * 2))
                log_limited(
                    logging.WARNING, "relay-read",
                    "relay %s: cannot read the stream %s (%s); retrying in %.1f s",
                    self.consumer, self.stream, exc, backoff,
                )  # fmt: skip
                await self._refund(granted, second)
                await self._sleep(backoff)
                continue
            if len(entries) < granted:
                await self._refund(granted - len(entries), second)
            if entries:
                self._admit(entries, claimed=claimed)

    async def _autoclaim(self, room: int) -> list[tuple[str, dict[str, str] | None]]:
        """Entries idle for more than claim_idle, whoever held them (a dead relay; or us,
        for entries released after their retry budget)."""
        min_idle = max(1, round(self.claim_idle * 1000))
        reply = await self._redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle, start_id=self._claim_cursor,
            count=room,
        )  # fmt: skip
        cursor = reply[0]
        entries = list(reply[1])
        deleted = list(reply[2]) if len(reply) > 2 else []
        self._claim_cursor = cursor if cursor and cursor != "0-0" else "0-0"
        if deleted:  # trimmed or deleted meanwhile: nothing left to deliver
            await self._redis.xack(self.stream, self.group, *deleted)
        return entries

    def _admit(self, entries: list[tuple[str, dict[str, str] | None]], *, claimed: bool) -> None:
        assert self._client is not None
        assert self._ack_wake is not None
        admitted = 0
        for entry_id, fields in entries:
            if entry_id in self._held_ids:
                continue  # already ours, in flight
            if not fields:
                self._to_ack.append(entry_id)  # deleted from the stream while pending
                continue
            try:
                event = decode_entry(fields)
            except Exception as exc:
                logger.error("relay: unreadable stream entry %s (%s): dead-lettered", entry_id, exc)
                self._to_dead.append((entry_id, self._dead_fields(None, fields, "unreadable",
                                                                  None, str(exc))))  # fmt: skip
                continue
            self._held[id(event)] = (entry_id, event)
            self._held_ids.add(entry_id)
            admitted += 1
            if not self._client.enqueue(event):
                self._release(event, entry_id)
        if claimed:
            self.stats.claimed += admitted
        else:
            self.stats.read += admitted
        if self._to_ack or self._to_dead:
            self._ack_wake.set()

    def _release(self, event: UsageEvent, entry_id: str) -> None:
        if self._held.pop(id(event), None) is not None:
            self._held_ids.discard(entry_id)
            self.stats.released += 1

    async def _acquire(self, n: int) -> tuple[int, str]:
        """Tokens of the global rate limit for up to ``n`` events, waiting for the next second
        when this one is used up: (granted, the second they belong to). 0 when stopping."""
        if not self.rate_limit:
            return n, ""
        while not self._stopping:
            try:
                granted, wait_us, second = await self._rate(
                    keys=[self._rate_key], args=[n, self.rate_limit]
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_limited(logging.WARNING, "relay-rate", "relay: rate limit unavailable: %s",
                            exc)  # fmt: skip
                await self._sleep(0.5)
                continue
            if int(granted) > 0:
                return int(granted), str(second)
            self.stats.rate_waits += 1
            await self._sleep(max(0.001, int(wait_us) / 1e6))
        return 0, ""

    async def _refund(self, n: int, second: str) -> None:
        if not second or n <= 0:
            return
        with contextlib.suppress(Exception):
            await self._refund_script(keys=[f"{self._rate_key}:{second}"], args=[n])

    async def _sleep(self, seconds: float) -> None:
        assert self._stop_event is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    # ------------------------------------------------------------------ settling

    def _on_final(
        self, event: UsageEvent, reason: str | None, status: int | None, error: str | None
    ) -> None:
        """The client's dispatcher thread: an event is settled."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # our loop is gone: the entry stays pending
            loop.call_soon_threadsafe(self._settled, event, reason, status, error)

    def _settled(
        self, event: UsageEvent, reason: str | None, status: int | None, error: str | None
    ) -> None:
        held = self._held.pop(id(event), None)
        if held is None:
            return
        entry_id = held[0]
        self._held_ids.discard(entry_id)
        if reason is None:
            self._to_ack.append(entry_id)
        elif reason in DEAD_REASONS:
            self._to_dead.append((entry_id, self._dead_fields(event, None, reason, status, error)))
        else:  # not acknowledged: claimed again (by any relay) after claim_idle
            self.stats.released += 1
            log_limited(
                logging.WARNING, f"relay-release:{reason}",
                "relay: an event was not delivered (%s: %s); it stays pending in %s and is "
                "retried after %.0f s", reason, error, self.stream, self.claim_idle,
            )  # fmt: skip
        assert self._room is not None
        assert self._ack_wake is not None
        self._room.set()
        self._ack_wake.set()

    def _dead_fields(
        self,
        event: UsageEvent | None,
        raw: Mapping[str, str] | None,
        reason: str,
        status: int | None,
        error: str | None,
    ) -> dict[str, str]:
        raw = raw or {}
        fields = {
            FIELD_KEY: event.idempotency_key if event is not None else raw.get(FIELD_KEY, ""),
            FIELD_EVENT: encode_event(event) if event is not None else raw.get(FIELD_EVENT, ""),
            "reason": reason,
            "time": utc_timestamp(),
            "relay": self.consumer,
        }
        if status is not None:
            fields["status"] = str(status)
        if error:
            fields["error"] = error[:500]
        return fields

    async def _acker(self) -> None:
        assert self._ack_wake is not None
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            if (self._to_ack or self._to_dead) and not await self._flush_acks():
                await asyncio.sleep(0.5)  # Redis unreachable: try again
                self._ack_wake.set()

    async def _flush_acks(self, *, final: bool = False) -> bool:
        acks, self._to_ack = self._to_ack, []
        dead, self._to_dead = self._to_dead, []
        try:
            pipe = self._redis.pipeline(transaction=True)
            for _entry_id, fields in dead:
                pipe.xadd(self.dead_stream, fields)
            ids = acks + [entry_id for entry_id, _ in dead]
            for i in range(0, len(ids), 1000):
                pipe.xack(self.stream, self.group, *ids[i : i + 1000])
            await pipe.execute()
        except asyncio.CancelledError:
            self._to_ack[:0] = acks
            self._to_dead[:0] = dead
            raise
        except Exception as exc:
            self._to_ack[:0] = acks
            self._to_dead[:0] = dead
            log_limited(
                logging.WARNING, "relay-ack",
                "relay %s: cannot acknowledge %d entr(ies) (%s)%s", self.consumer, len(ids),
                exc, "; they stay pending and are delivered again (deduplicated)" if final
                else "; retrying",
            )  # fmt: skip
            return False
        self.stats.acked += len(acks)
        self.stats.dead += len(dead)
        if dead:
            logger.warning(
                "relay: %d event(s) refused for good moved to %s (resend: fluxrate-web replay "
                "'%s#%s')", len(dead), self.dead_stream, mask_redis_url(self.redis_url),
                self.dead_stream,
            )  # fmt: skip
        return True

    # ------------------------------------------------------------------ upkeep

    async def _upkeep(self) -> None:
        """Heartbeat of held entries, fleet aggregates to seal, trimming, old consumers."""
        heartbeat_every = max(0.05, self.claim_idle / 3)
        seal_every = max(0.1, min(1.0, self.aggregation_grace / 4))
        next_heartbeat = next_seal = 0.0
        next_trim = time.monotonic() + 1.0
        while not self._stopping:
            now = time.monotonic()
            try:
                if now >= next_heartbeat:
                    next_heartbeat = now + heartbeat_every
                    await self._heartbeat()
                if now >= next_seal:
                    next_seal = now + seal_every
                    await self._seal_due()
                if now >= next_trim:
                    next_trim = now + _TRIM_EVERY
                    await self.trim()
                    await self._forget_consumers()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_limited(logging.WARNING, "relay-upkeep", "relay %s: upkeep failed: %s",
                            self.consumer, exc)  # fmt: skip
            await self._sleep(max(0.01, min(next_heartbeat, next_seal, next_trim) - now))

    async def _heartbeat(self) -> None:
        """Reset the idle time of the entries we hold, so no other relay claims them."""
        ids = list(self._held_ids)
        for i in range(0, len(ids), 500):
            await self._redis.xclaim(
                self.stream, self.group, self.consumer, 0, ids[i : i + 500], justid=True
            )

    async def _seal_due(self) -> None:
        """Seal the fleet aggregates whose window closed ``aggregation_grace`` seconds ago."""
        cutoff = math.floor((time.time() - self.aggregation_grace) * 1000)
        groups = await self._redis.zrangebyscore(open_set(self.stream), "-inf", cutoff,
                                                 start=0, num=200)  # fmt: skip
        for group in groups:
            data = await self._redis.hgetall(group)
            if not data or "_sealed" in data or "_m" not in data:
                await self._redis.zrem(open_set(self.stream), group)
                continue
            contributions = {k: v for k, v in data.items() if not k.startswith("_")}
            try:
                events = merge_contributions(json.loads(data["_m"]), contributions)
            except Exception:
                logger.exception("relay: cannot merge the fleet aggregate %s; left open", group)
                continue
            args: list[Any] = [len(data), SEALED_TTL, self.consumer]
            for event in events:
                args += [event.idempotency_key, encode_event(event)]
            result = await self._seal(keys=[group, open_set(self.stream), self.stream], args=args)
            if int(result) == 1:
                self.stats.sealed += 1

    async def trim(self) -> int:
        """Remove the entries every consumer group is done with (see :func:`trim_stream`)."""
        return await trim_stream(self._redis, self.stream)

    async def _forget_consumers(self) -> None:
        forget_after = max(_FORGET_CONSUMER_AFTER, 10 * self.claim_idle) * 1000
        for info in await self._redis.xinfo_consumers(self.stream, self.group):
            name = info.get("name")
            if (
                name != self.consumer
                and int(info.get("pending") or 0) == 0
                and int(info.get("idle") or 0) > forget_after
            ):
                await self._redis.xgroup_delconsumer(self.stream, self.group, name)


async def trim_stream(redis: Any, stream: str, *, approximate: bool = True) -> int:
    """``XTRIM MINID`` below what every consumer group of ``stream`` still needs: its oldest
    pending entry, or (nothing pending) its last delivered one. Entries appended later always
    have larger ids, so nothing undelivered is removed. Returns the entries removed."""
    groups = await redis.xinfo_groups(stream)
    if not groups:
        return 0
    floor: tuple[int, int] | None = None
    for info in groups:
        candidate = str(info.get("last-delivered-id") or "0-0")
        if int(info.get("pending") or 0) > 0:
            summary = await redis.xpending(stream, info["name"])
            candidate = str(summary.get("min") or candidate)
        parsed = _entry_id(candidate)
        if floor is None or parsed < floor:
            floor = parsed
    if floor is None or floor == (0, 0):
        return 0
    removed: int = await redis.xtrim(
        stream, minid=f"{floor[0]}-{floor[1]}", approximate=approximate
    )
    return removed


def _entry_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)
