"""Durability modes against the real devserver: ``spool`` survives outages longer than the
retry budget with bounded memory, ``strict`` survives SIGKILL, processes sharing a spool
directory hand each other their events, and every event is recorded exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _corehelpers import wait_until

from fluxrate_web.core import FluxrateClient
from fluxrate_web.core._log import reset_limits
from fluxrate_web.core.config import load_config
from fluxrate_web.core.metering import Metering
from fluxrate_web.core.spool import list_spool_files
from fluxrate_web.devserver import DevServer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX spool files")

FAST: dict[str, Any] = {
    "backoff_base": 0.01,
    "backoff_max": 0.05,
    "max_attempts": 3,
    "max_retry_age": 0.3,  # a retry budget far shorter than the outages below
    "spool_grace": 0.2,
}


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    reset_limits()


def ledger(server: DevServer) -> Counter[str]:
    return Counter(e["idempotency_key"] for e in server.events())


def spool_client(server: DevServer, path: Path, **kwargs: Any) -> FluxrateClient:
    return FluxrateClient(
        server.api_key,
        server.url,
        durability=kwargs.pop("durability", "spool"),
        spool_path=path,
        **{**FAST, **kwargs},
    )


# --------------------------------------------------------------------------- spool mode


def test_spool_delivers_everything_after_an_outage_beyond_the_retry_budget(
    fluxrate_server: DevServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    client = spool_client(fluxrate_server, tmp_path, max_queue_size=2000)
    peak = 0
    try:
        client.track(token, "before", 1)
        assert client.flush(10)
        fluxrate_server.set_faults(outage_seconds=2.0)  # every call answered 503 for 2 s

        def producer(n: int) -> None:
            for i in range(500):
                assert client.track(token, f"cust-{n}", 1 + i % 3) is not None

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, client.stats.pending)
            time.sleep(0.001)
        for t in threads:
            t.join()
        # the outage outlives max_retry_age (0.3 s) several times: nothing is failed
        assert wait_until(lambda: client.stats.spool_backlog == 2000, timeout=5)
        stats = client.stats
        assert stats.pending <= 1  # at most the probe is in memory
        assert stats.failed == 0
        assert stats.spooled == 2000
        assert len(ledger(fluxrate_server)) == 1
        # the outage ends by itself: a probe notices, the backlog goes out
        assert client.flush(30)
        stats = client.stats
        assert stats.delivered == 2001
        assert stats.failed == 0
        assert stats.spool_backlog == 0
    finally:
        client.close()
    assert peak <= 2000  # the in-memory queue stays within its bound
    keys = ledger(fluxrate_server)
    assert len(keys) == 2001
    assert max(keys.values()) == 1
    summary = fluxrate_server.summary()
    for n in range(4):
        assert summary[f"cust-{n}"]["api_calls"] == sum(1 + i % 3 for i in range(500))
    assert "events wait in the spool" in caplog.text
    assert "answers again" in caplog.text
    assert list(tmp_path.iterdir()) == []  # an empty spool leaves no file


def test_memory_stays_bounded_while_the_api_is_down(
    fluxrate_server: DevServer, tmp_path: Path
) -> None:
    """10,000 events into a 500-event queue during an outage: none is failed, none is lost,
    the in-memory queue never exceeds its bound and ends empty (all of it on disk)."""
    token = fluxrate_server.meter_token("api_calls")
    fluxrate_server.set_faults(error_rate=1.0)
    client = spool_client(fluxrate_server, tmp_path, max_queue_size=500)
    peak = 0
    try:
        for i in range(10_000):
            assert client.track(token, "bounded", 1) is not None
            if i % 50 == 0:
                assert client._lane is not None
                peak = max(peak, len(client._lane.queue))
        ok = wait_until(lambda: client.stats.spool_backlog == 10_000, timeout=10)
        assert ok, client.stats
        assert client.stats.failed == 0
        assert client.stats.pending <= 1  # at most the probe
        fluxrate_server.clear_faults()
        assert client.flush(60)
    finally:
        client.close()
    assert peak <= 500
    keys = ledger(fluxrate_server)
    assert len(keys) == 10_000
    assert max(keys.values()) == 1


def test_exhausted_retries_wait_in_the_spool_and_go_out_later(
    fluxrate_server: DevServer, tmp_path: Path
) -> None:
    """Sporadic failures (no outage: most calls succeed) exhaust some events' retries: they
    are kept on disk and sent on a later pass, never written to the failure log."""
    token = fluxrate_server.meter_token("api_calls")
    failed = tmp_path / "failed.jsonl"
    fluxrate_server.set_faults(error_rate=0.5, stored_drop_rate=0.1)
    client = spool_client(
        fluxrate_server,
        tmp_path / "spool",
        max_attempts=2,
        spool_grace=30.0,
        failed_events_path=failed,
    )
    try:
        for _ in range(300):
            client.track(token, "flaky", 1)
        assert wait_until(lambda: client.stats.spooled > 0, timeout=10)
        fluxrate_server.clear_faults()
        assert client.flush(30)
        assert client.stats.failed == 0
    finally:
        client.close()
    assert not failed.exists()
    keys = ledger(fluxrate_server)
    assert len(keys) == 300
    assert max(keys.values()) == 1
    assert fluxrate_server.summary()["flaky"]["api_calls"] == 300


def test_permanent_rejections_still_go_to_the_failure_log(
    fluxrate_server: DevServer, tmp_path: Path
) -> None:
    failed = tmp_path / "failed.jsonl"
    client = spool_client(fluxrate_server, tmp_path / "spool", failed_events_path=failed)
    try:
        client.track("00000000-0000-0000-0000-000000000000", "nobody", 1)  # 404: no such meter
        client.track(fluxrate_server.meter_token("api_calls"), "ok", 1)
        assert client.flush(10)
        assert client.stats.spooled == 0
    finally:
        client.close()
    lines = [json.loads(x) for x in failed.read_text().splitlines()]
    assert [(x["reason"], x["status"]) for x in lines] == [("rejected", 404)]
    assert list((tmp_path / "spool").iterdir()) == []


def test_durability_comes_from_the_configuration(
    fluxrate_server: DevServer, tmp_path: Path
) -> None:
    config = tmp_path / "fluxrate.yaml"
    config.write_text(
        f"api_key: {fluxrate_server.api_key}\nbase_url: {fluxrate_server.url}\n"
        f"durability: strict\nspool_path: {tmp_path / 'spool'}\n"
    )
    metering = Metering.from_config(load_config(config))
    client = metering.client
    assert isinstance(client, FluxrateClient)
    assert client.durability == "strict"
    assert client.spool_path == str(tmp_path / "spool")
    assert "durability='strict'" in repr(client)
    client.track(fluxrate_server.meter_token("api_calls"), "from-config", 1)
    assert metering.flush(10)
    assert client.stats.as_dict()["spool_backlog"] == 0
    metering.close()
    assert fluxrate_server.summary()["from-config"]["api_calls"] == 1


# --------------------------------------------------------------------------- processes

CHILD = textwrap.dedent(
    """
    import os, sys
    from fluxrate_web.core import FluxrateClient
    client = FluxrateClient(
        base_url=os.environ["URL"],
        durability=os.environ["MODE"],
        spool_path=os.environ["SPOOL"],
        backoff_base=0.01, backoff_max=0.05, max_attempts=3, max_retry_age=0.3,
        spool_grace=0.2, shutdown_timeout=float(os.environ.get("SHUTDOWN", "5")),
    )
    for i in range(int(os.environ["N"])):
        assert client.track(os.environ["TOKEN"], os.environ["CUSTOMER"], 1) is not None
    print("tracked", flush=True)
    if os.environ.get("WAIT") == "stdin":
        sys.stdin.read()   # until the test closes our stdin (or kills us)
    # then a normal exit: the exit flush runs
    """
)


def start_child(
    server: DevServer, spool: Path, mode: str, customer: str, n: int, **env: str
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-X", "dev", "-W", "error", "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "URL": server.url,
            "FLUXRATE_API_KEY": server.api_key,
            "TOKEN": server.meter_token("api_calls"),
            "SPOOL": str(spool),
            "MODE": mode,
            "CUSTOMER": customer,
            "N": str(n),
            "WAIT": "stdin",
            **env,
        },
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "tracked":  # pragma: no cover - diagnostics
        proc.kill()
        raise AssertionError(proc.communicate(timeout=10)[1])
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)


@pytest.mark.parametrize("phase", ["outage", "delivering"])
def test_strict_survives_sigkill_and_the_successor_delivers_exactly_once(
    fluxrate_server: DevServer, tmp_path: Path, phase: str
) -> None:
    n = 400
    if phase == "outage":  # nothing can be delivered before the kill
        fluxrate_server.set_faults(error_rate=1.0)
    else:  # killed while delivering: some events are acknowledged, some not, some in flight
        fluxrate_server.set_faults(latency_ms=5)
    proc = start_child(fluxrate_server, tmp_path, "strict", "killed", n)
    kill(proc)
    before = len(ledger(fluxrate_server))
    assert before < n
    if phase == "outage":
        assert before == 0
    fluxrate_server.clear_faults()
    [orphan] = list_spool_files(tmp_path)
    assert not orphan.live
    successor = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        durability="strict",
        spool_path=tmp_path,
        **FAST,
    )
    try:  # adopts at start, without tracking anything itself
        assert wait_until(lambda: len(ledger(fluxrate_server)) == n, timeout=20)
        assert successor.flush(10)
        stats = successor.stats
        # adopted: every row left on disk, including events delivered just before the kill
        # whose acknowledgement was not written yet; those come back as duplicates
        assert stats.adopted == stats.delivered + stats.deduplicated
        assert stats.delivered == n - before
    finally:
        successor.close()
    keys = ledger(fluxrate_server)
    assert len(keys) == n
    assert max(keys.values()) == 1
    assert fluxrate_server.summary()["killed"]["api_calls"] == n
    assert list(tmp_path.iterdir()) == []


def test_two_processes_share_a_spool_directory(fluxrate_server: DevServer, tmp_path: Path) -> None:
    """A and B track during an outage, each into its own file. A is SIGKILLed; B adopts A's
    file (by its lock: A's is free once A is dead) and, when the API is back, delivers both."""
    fluxrate_server.set_faults(error_rate=1.0)
    a = start_child(fluxrate_server, tmp_path, "strict", "proc-a", 150)
    b = start_child(fluxrate_server, tmp_path, "spool", "proc-b", 250)
    try:
        # (spool mode opens its file on the dispatcher thread, right after the first event)
        assert wait_until(lambda: len(list_spool_files(tmp_path)) == 2, timeout=5)
        assert all(f.live for f in list_spool_files(tmp_path))
        kill(a)
        # A's file is an orphan now: B adopts it (at once if its start-up scan runs late,
        # else before it exits); either way B delivers A's events
        fluxrate_server.clear_faults()
        _, err = b.communicate("", timeout=30)  # B exits normally: its exit flush runs
        assert b.returncode == 0, err
        assert "Traceback" not in err
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                kill(proc)
    keys = ledger(fluxrate_server)
    assert len(keys) == 400
    assert max(keys.values()) == 1
    summary = fluxrate_server.summary()
    assert summary["proc-a"]["api_calls"] == 150
    assert summary["proc-b"]["api_calls"] == 250
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["spool", "strict"])
def test_the_exit_flush_keeps_undelivered_events_for_the_next_process(
    fluxrate_server: DevServer, tmp_path: Path, mode: str
) -> None:
    fluxrate_server.set_faults(error_rate=1.0)
    proc = start_child(fluxrate_server, tmp_path, mode, f"exit-{mode}", 200, SHUTDOWN="1")
    started = time.monotonic()
    _, err = proc.communicate("", timeout=30)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 1 + 3  # shutdown_timeout (outage: less) + exit
    assert "in the spool" in err  # the warning names where they are
    [orphan] = list_spool_files(tmp_path)
    assert not orphan.live
    fluxrate_server.clear_faults()
    successor = spool_client(fluxrate_server, tmp_path)
    try:
        assert successor.flush(20)
        assert successor.stats.adopted == 200
    finally:
        successor.close()
    keys = ledger(fluxrate_server)
    assert len(keys) == 200
    assert max(keys.values()) == 1


def _fork() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def test_a_forked_child_gets_its_own_spool_file(fluxrate_server: DevServer, tmp_path: Path) -> None:
    token = fluxrate_server.meter_token("api_calls")
    client = spool_client(fluxrate_server, tmp_path, durability="strict")
    try:
        client.track(token, "parent-before", 1)
        assert client.flush(10)
        parent_file = client._spool.db_path if client._spool else ""
        pid = _fork()
        if pid == 0:
            code = 1
            try:
                client.track(token, "child", 1)
                child_file = client._spool.db_path if client._spool else ""
                if child_file != parent_file and client.flush(10):
                    code = 0 if client.stats.delivered == 1 else 3
                client.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for _ in range(20):  # the parent's spool still works after the child closed its own
            client.track(token, "parent-after", 1)
        assert client.flush(10)
        assert client.stats.delivered == 21
    finally:
        client.close()
    keys = ledger(fluxrate_server)
    assert len(keys) == 22
    assert max(keys.values()) == 1
    assert list(tmp_path.iterdir()) == []
