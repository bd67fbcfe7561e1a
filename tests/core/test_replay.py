"""fluxrate-web replay: dry run, delivery with original keys, what still fails, bad lines."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fluxrate_web.cli import main as cli_main
from fluxrate_web.core.events import UsageEvent
from fluxrate_web.core.failures import FailureLog
from fluxrate_web.devserver import DevServer


def _write_log(path: Path, events: list[UsageEvent], reason: str = "retries_exhausted") -> None:
    log = FailureLog(path)
    for event in events:
        log.add(event, reason, status=503, error="HTTP 503", attempts=8)


def test_dry_run_counts_and_sends_nothing(
    tmp_path: Path, fluxrate_server: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "failed.jsonl"
    token = fluxrate_server.meter_token("api_calls")
    _write_log(path, [UsageEvent.create(token, f"c{i}") for i in range(3)])
    code = cli_main(["replay", str(path), "--dry-run", "--base-url", fluxrate_server.url])
    out = capsys.readouterr().out
    assert code == 0
    assert "read 3 event(s)" in out
    assert "retries_exhausted=3" in out
    assert "dry run" in out
    assert fluxrate_server.events() == []


def test_replay_keeps_keys_and_timestamps(
    tmp_path: Path,
    fluxrate_server: DevServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FLUXRATE_API_KEY", fluxrate_server.api_key)
    token = fluxrate_server.meter_token("api_calls")
    events = [
        UsageEvent.create(token, "r1", 2, timestamp="2026-01-02T03:04:05.678Z"),
        UsageEvent.create(token, "r2", 3),
    ]
    path = tmp_path / "failed.jsonl"
    _write_log(path, [*events, events[0]])  # the same event twice: sent once
    code = cli_main(["replay", str(path), "--base-url", fluxrate_server.url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 repeated line(s) skipped" in out
    stored = {e["idempotency_key"]: e for e in fluxrate_server.events()}
    assert set(stored) == {e.idempotency_key for e in events}
    assert stored[events[0].idempotency_key]["timestamp"].startswith("2026-01-02T03:04:05")


def test_what_still_fails_goes_to_a_new_file(
    tmp_path: Path,
    fluxrate_server: DevServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FLUXRATE_API_KEY", fluxrate_server.api_key)
    token = fluxrate_server.meter_token("api_calls")
    good = UsageEvent.create(token, "ok")
    unknown = UsageEvent.create("no-such-meter", "x")
    path = tmp_path / "failed.jsonl"
    _write_log(path, [good, unknown])
    with path.open("a") as fh:
        fh.write("this line is not JSON\n")
    output = tmp_path / "still.jsonl"
    code = cli_main(
        ["replay", str(path), "--base-url", fluxrate_server.url, "--output", str(output)]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "1 unreadable line(s)" in out
    assert "2 event(s) still failing" in out
    lines = output.read_text().splitlines()
    assert json.loads(lines[0])["event"]["idempotency_key"] == unknown.idempotency_key
    assert json.loads(lines[0])["status"] == 404
    assert lines[1] == "this line is not JSON"
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o600
    assert [e["customer_external_id"] for e in fluxrate_server.events()] == ["ok"]


def test_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUXRATE_API_KEY", raising=False)
    assert cli_main(["replay", str(tmp_path / "missing.jsonl")]) == 2
    path = tmp_path / "f.jsonl"
    _write_log(path, [UsageEvent.create("m", "c")])
    assert cli_main(["replay", str(path), "--base-url", "http://127.0.0.1:1"]) == 2  # no key
    assert (
        cli_main(["replay", str(path), "--api-key", "k", "--base-url", "http://example.com"]) == 2
    )  # insecure
    assert cli_main(["replay", str(path), "--api-key", "k", "--output", str(path)]) == 2
