"""The spool files themselves: SQLite rows, locks, adoption, permissions, the CLI."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fluxrate_web.core import FluxrateClient
from fluxrate_web.core.events import UsageEvent
from fluxrate_web.core.spool import Spool, claim, count_rows, has_spool_files, list_spool_files
from fluxrate_web.core.spool_cli import configure, run
from fluxrate_web.devserver import DevServer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX spool files")


def ev(customer: str = "c", quantity: int = 1, key: str | None = None) -> UsageEvent:
    return UsageEvent.create("meter-token", customer, quantity, idempotency_key=key)


def modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


def cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    configure(parser)
    out = io.StringIO()
    code = run(parser.parse_args(list(argv)), out=out)
    return code, out.getvalue()


def test_rows_states_and_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    try:
        a, b, c = ev("a"), ev("b"), ev("c")
        assert spool.append(a)  # strict: state 0, queued in memory too
        assert spool.backlog() == 0
        assert spool.rows() == 1
        assert spool.spill([(b, "outage"), (c, "outage")]) == 2
        assert spool.spill([(a, "shutdown_deadline")]) == 1  # replaces its state-0 row
        assert spool.rows() == 3
        rows = spool.load(0, 10)
        assert [r[1] for r in rows] == [b.idempotency_key, c.idempotency_key, a.idempotency_key]
        assert UsageEvent.from_dict(json.loads(rows[0][2])) == b
        assert spool.load(rows[1][0], 10)[0][1] == a.idempotency_key
        spool.ack([b.idempotency_key, a.idempotency_key])
        assert spool.backlog() == 1
        assert spool.append(a)  # the same key again: one row
        assert spool.append(a)
        assert spool.rows() == 2
    finally:
        assert spool.close() == 2  # kept for the next process
    assert len(list_spool_files(tmp_path / "spool")) == 1


def test_files_are_0600_whatever_the_umask_and_hold_no_key(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        client = FluxrateClient(
            "org_live_SECRET_spool_key_123",
            "http://127.0.0.1:9",
            durability="strict",
            spool_path=tmp_path / "spool",
            backoff_base=0.01,
            backoff_max=0.02,
        )
        for i in range(20):
            assert client.track("meter-token", f"c{i}", metadata={"n": i})
        files = modes(tmp_path / "spool")
        assert {name.rsplit(".", 1)[-1] for name in files} >= {"lock", "sqlite3", "sqlite3-wal"}
        assert set(files.values()) == {0o600}, files
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
        client.close(0.2)  # port 9: nothing answers; the events stay in the spool
    finally:
        os.umask(old)
    files = modes(tmp_path / "spool")
    assert files
    assert set(files.values()) == {0o600}, files
    for path in (tmp_path / "spool").iterdir():
        data = path.read_bytes()
        assert b"org_live_SECRET" not in data, path.name
        assert b"SECRET_spool_key" not in data, path.name


def test_an_empty_spool_leaves_no_files(tmp_path: Path, fluxrate_server: DevServer) -> None:
    client = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        durability="strict",
        spool_path=tmp_path,
    )
    client.track(fluxrate_server.meter_token("api_calls"), "x")
    assert client.flush(10)
    assert has_spool_files(tmp_path)
    client.close()
    assert list(tmp_path.iterdir()) == []


LOCKER = textwrap.dedent(
    """
    import sys, time
    from fluxrate_web.core.spool import Spool
    from fluxrate_web.core.events import UsageEvent
    spool = Spool(sys.argv[1])
    spool.spill([(UsageEvent.create("m", "c%d" % i, 1), "outage") for i in range(5)])
    print(spool.stem, flush=True)
    if sys.argv[2] == "hold":
        time.sleep(60)
    # "exit": leave without close(): the kernel drops the lock, the file stays
    """
)


def test_adoption_by_lock_not_by_pid(tmp_path: Path) -> None:
    live = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(tmp_path), "hold"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert live.stdout is not None
        live_stem = live.stdout.readline().strip()
        dead = subprocess.run(
            [sys.executable, "-c", LOCKER, str(tmp_path), "exit"],
            capture_output=True,
            text=True,
            check=True,
        )
        dead_stem = dead.stdout.strip()
        files = {f.stem: f for f in list_spool_files(tmp_path)}
        assert files[live_stem].live
        assert not files[dead_stem].live
        code, text = cli("status", str(tmp_path))
        assert code == 0
        assert "orphan" in text
        assert "live" in text
        assert "total: 10 event(s) waiting" in text

        ours = Spool(tmp_path)
        try:
            assert ours.adopt() == 5  # the dead one only
            assert ours.backlog() == 5
            assert ours.adopt() == 0  # once
            remaining = {f.stem for f in list_spool_files(tmp_path)}
            assert remaining == {live_stem, ours.stem}
            with claim(str(tmp_path), live_stem) as db_path:
                assert db_path is None  # a live process's file is never taken
        finally:
            ours.close()
    finally:
        live.kill()
        live.wait()
        if live.stdout is not None:
            live.stdout.close()
    # the killed process's file is an orphan now; a new spool adopts it and the rows we kept
    again = Spool(tmp_path)
    try:
        assert again.adopt() == 10
    finally:
        again.close()


def test_a_crash_between_copy_and_delete_is_adopted_once_per_key(tmp_path: Path) -> None:
    """An adopter that died after copying but before deleting leaves the rows twice on disk;
    a successor that adopts both keeps each key once."""
    first = Spool(tmp_path / "a")
    events = [ev(f"c{i}") for i in range(4)]
    first.spill([(e, "outage") for e in events])
    first.close()
    for path in (tmp_path / "a").iterdir():  # the same rows in a second (lock-less) file
        target = path.name.replace(first.stem, first.stem[:-8] + "0" * 8)
        (tmp_path / "a" / target).write_bytes(path.read_bytes())
    successor = Spool(tmp_path / "a")
    try:
        assert successor.adopt() == 4
        keys = [r[1] for r in successor.load(0, 100)]
        assert sorted(keys) == sorted(e.idempotency_key for e in events)
        assert [f.stem for f in list_spool_files(tmp_path / "a")] == [successor.stem]
    finally:
        successor.close()


def test_an_unreadable_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "spool-1-deadbeef.sqlite3").write_bytes(b"not a database" * 100)
    spool = Spool(tmp_path)
    try:
        assert spool.adopt() == 0
    finally:
        spool.close()
    names = os.listdir(tmp_path)
    assert any(".corrupt-" in name for name in names)
    assert "cannot be read" in caplog.text


def test_an_unusable_directory_falls_back_to_the_failure_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    failed = tmp_path / "failed.jsonl"
    client = FluxrateClient(
        "org_live_k",
        "http://127.0.0.1:9",
        durability="spool",
        spool_path=blocker / "spool",  # a path under a regular file: cannot be created
        failed_events_path=failed,
        backoff_base=0.01,
        backoff_max=0.02,
        max_attempts=2,
    )
    assert client.track("m", "c") is not None
    client.close(2)
    assert "cannot use the spool directory" in caplog.text
    assert [
        json.loads(x)["event"]["customer_external_id"] for x in failed.read_text().splitlines()
    ] == ["c"]


def test_cli_export_then_replay_and_drain(tmp_path: Path, fluxrate_server: DevServer) -> None:
    token = fluxrate_server.meter_token("api_calls")
    for _ in range(2):  # two ended processes
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\n"
                "from fluxrate_web.core.spool import Spool\n"
                "from fluxrate_web.core.events import UsageEvent\n"
                "s = Spool(sys.argv[1])\n"
                "s.spill([(UsageEvent.create(sys.argv[2], 'cli-cust', 1), 'outage')"
                " for _ in range(3)])\n",
                str(tmp_path / "spool"),
                token,
            ],
            check=True,
        )
    export = tmp_path / "export.jsonl"
    code, text = cli("export", str(tmp_path / "spool"), "--output", str(export), "--keep")
    assert code == 0, text
    assert "exported 6 event(s) from 2 file(s)" in text
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    lines = [json.loads(x) for x in export.read_text().splitlines()]
    assert {x["reason"] for x in lines} == {"outage"}
    assert len({x["event"]["idempotency_key"] for x in lines}) == 6

    from fluxrate_web.core import replay

    parser = argparse.ArgumentParser()
    replay.configure(parser)
    args = parser.parse_args(
        [str(export), "--api-key", fluxrate_server.api_key, "--base-url", fluxrate_server.url]
    )
    assert replay.run(args, out=io.StringIO()) == 0
    assert fluxrate_server.summary()["cli-cust"]["api_calls"] == 6

    # the files were kept: drain delivers the same events, which are duplicates now
    code, text = cli(
        "drain",
        str(tmp_path / "spool"),
        "--api-key",
        fluxrate_server.api_key,
        "--base-url",
        fluxrate_server.url,
        "--timeout",
        "20",
    )
    assert code == 0, text
    assert "adopted 6 event(s) from 2 file(s)" in text
    assert "already there (deduplicated) 6" in text
    assert fluxrate_server.summary()["cli-cust"]["api_calls"] == 6
    assert list((tmp_path / "spool").iterdir()) == []
    code, text = cli("export", str(tmp_path / "spool"))
    assert "nothing to export" in text


def test_cli_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUXRATE_CONFIG", raising=False)
    assert cli("status")[0] == 2
    assert cli("status", str(tmp_path / "nope"))[0] == 2
    config = tmp_path / "fluxrate.yaml"
    config.write_text(f"durability: spool\nspool_path: {tmp_path}\n")
    code, text = cli("status", "--config", str(config))
    assert code == 0
    assert str(tmp_path) in text
    assert count_rows(str(tmp_path / "missing.sqlite3")) == (0, None)


def test_a_stale_temporary_lock_is_cleaned_up(tmp_path: Path) -> None:
    stale = tmp_path / ".spool-1-0123abcd.lock.tmp"
    fresh = tmp_path / ".spool-2-0123abcd.lock.tmp"
    stale.write_text("pid=1\n")
    fresh.write_text("pid=2\n")
    os.utime(stale, (1, 1))
    spool = Spool(tmp_path)
    try:
        spool.adopt()
    finally:
        spool.close()
    assert not stale.exists()
    assert fresh.exists()  # may belong to a process creating its spool right now


def test_start_opens_the_strict_spool(tmp_path: Path) -> None:
    client = FluxrateClient(
        "org_live_k", "http://127.0.0.1:9", durability="strict", spool_path=tmp_path
    )
    try:
        client.start()
        assert any(p.suffix == ".sqlite3" for p in tmp_path.iterdir())
    finally:
        client.close(0)
    assert list(tmp_path.iterdir()) == []
