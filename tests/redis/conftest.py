"""A real ``redis-server`` for the scale-out tests (no fakes).

``redis_server``: one server per test session (per xdist worker) on a free loopback port, in a
temporary directory, without persistence (``--save '' --appendonly no``), stopped by its pid at
the end. ``redis_url``: the same server, emptied (``FLUSHALL``) before the test.
:class:`RedisServer` also starts servers of a test's own (with AOF, or to stop and restart).

When ``redis-server`` is not installed the session tries to install Debian's package (as root,
with apt-get); if that is impossible the tests are skipped with the reason, except under CI
(``CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from _redishelpers import RedisServer, install_redis  # noqa: E402


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = install_redis()
    if binary is None:
        reason = ("redis-server is not installed and could not be installed "
                  "(apt-get install redis-server, or make redis)")  # fmt: skip
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def redis_server(redis_binary: str) -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="fluxrate-redis-") as tmp:
        server = RedisServer(redis_binary, Path(tmp)).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a test stopped it
    with redis_server.client() as r:
        r.flushall()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield r
    finally:
        r.close()
