"""fork(): the child starts afresh (no inherited queue, lock or loop) and delivers; the parent
goes on delivering what it had queued."""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter

import pytest

from fluxrate_web.core import FluxrateClient
from fluxrate_web.devserver import DevServer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _fork() -> int:
    with warnings.catch_warnings():
        # 3.12+: "This process is multi-threaded, use of fork() may lead to deadlocks"
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def test_child_tracks_and_delivers_while_the_parent_goes_on(fluxrate_server: DevServer) -> None:
    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(
        fluxrate_server.api_key, fluxrate_server.url, backoff_base=0.01, backoff_max=0.05
    )
    try:
        client.track(token, "parent-before")
        assert client.flush(10)
        # events still queued in the parent at fork time: the child must not send them too
        for _ in range(300):
            client.track(token, "parent-queued")
        pid = _fork()
        if pid == 0:  # the child
            code = 10
            try:
                code = 11
                if client.stats.pending != 0 or client.stats.enqueued != 0:
                    os._exit(12)
                for _ in range(50):
                    client.track(token, "child")
                code = 13
                if client.flush(15) and client.stats.delivered == 50:
                    code = 0
                client.close()
            except BaseException as exc:
                sys.stderr.write(f"child failed: {exc!r}\n")
            finally:
                os._exit(code)
        for _ in range(100):
            client.track(token, "parent-after")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.flush(15)
        assert client.stats.delivered == 401
    finally:
        client.close()
    per_customer = Counter(e["customer_external_id"] for e in fluxrate_server.events())
    assert per_customer == {
        "parent-before": 1,
        "parent-queued": 300,
        "child": 50,
        "parent-after": 100,
    }
    keys = Counter(e["idempotency_key"] for e in fluxrate_server.events())
    assert max(keys.values()) == 1


def test_fork_without_the_hook_is_caught_by_the_pid_check(fluxrate_server: DevServer) -> None:
    """A fork the at-fork hook did not see (e.g. from C) is noticed on the next enqueue."""
    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(fluxrate_server.api_key, fluxrate_server.url)
    try:
        client.track(token, "a")
        assert client.flush(10)
        client._pid = -1  # what a child would see: a pid that is not its own
        assert client.track(token, "b") is not None
        assert client.stats.enqueued == 1  # fresh counters, fresh lane
        assert client.flush(10)
        assert client.stats.delivered == 1
    finally:
        client.close()
