"""The failure log: 0600 JSON lines, read back for replay, WARNING without a path."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from fluxrate_web.core._log import reset_limits, warn_limited
from fluxrate_web.core.events import UsageEvent
from fluxrate_web.core.failures import FailureLog, read_failure_log

KEY = "org_live_failure_log_secret_42"


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    reset_limits()


def test_lines_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "failed.jsonl"
    log = FailureLog(path, secrets=[KEY])
    event = UsageEvent.create("mt", "cust", 2, metadata={"user_id": "u"})
    log.add(event, "retries_exhausted", status=503, error=f"HTTP 503 key={KEY}", attempts=8)
    log.add(UsageEvent.create("mt", "c2"), "queue_full")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["reason"] == "retries_exhausted"
    assert first["status"] == 503
    assert first["attempts"] == 8
    assert first["v"] == 1
    assert first["time"].endswith("Z")
    assert first["event"] == event.to_dict()
    assert KEY not in path.read_text()
    records = [r for _n, _raw, r, _p in read_failure_log(path)]
    assert records[0] is not None
    assert records[0].event == event
    assert records[1] is not None
    assert records[1].reason == "queue_full"


def test_existing_file_is_narrowed_to_0600(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "failed.jsonl"
    path.write_text("")
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="fluxrate_web"):
        FailureLog(path).add(UsageEvent.create("mt", "c"), "rejected", status=422)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "0600" in caplog.text


def test_without_a_path_events_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    log = FailureLog(None, secrets=[KEY])
    with caplog.at_level(logging.WARNING, logger="fluxrate_web"):
        for i in range(5):
            log.add(UsageEvent.create("mt", f"c{i}"), "rejected", error=KEY)
    lines = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(lines) == 1  # rate-limited
    assert "c0" in lines[0].getMessage()
    assert KEY not in caplog.text


def test_unwritable_path_logs_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = FailureLog(tmp_path / "missing-dir" / "failed.jsonl")
    with caplog.at_level(logging.ERROR, logger="fluxrate_web"):
        log.add(UsageEvent.create("mt", "c"), "rejected")  # does not raise
    assert "cannot write the failure log" in caplog.text


def test_unreadable_lines_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    good = UsageEvent.create("mt", "c")
    path.write_text(
        json.dumps({"reason": "x", "event": good.to_dict()})
        + "\n\nnot json\n"
        + json.dumps({"event": {"quantity": 1}})
        + "\n"
    )
    rows = list(read_failure_log(path))
    assert [n for n, *_ in rows] == [1, 3, 4]
    assert rows[0][2] is not None
    assert rows[0][2].event == good
    assert rows[1][2] is None
    assert rows[2][2] is None
    assert rows[2][3]


def test_warn_limited_counts_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fluxrate_web"):
        assert warn_limited("k", "problem %s", 1, interval=0.0)
        assert warn_limited("k", "problem %s", 2, interval=0.0)
        assert not warn_limited("k2", "other", interval=60) or True
        assert not warn_limited("k2", "other", interval=60)
        assert not warn_limited("k2", "other", interval=60)
        assert warn_limited("k2", "other", interval=0.0)
    assert "2 similar messages suppressed" in caplog.text


def test_a_line_that_is_not_utf8_encodable_is_still_written(tmp_path: Path) -> None:
    # A lone surrogate (say, in a server's error text) has no UTF-8 form: the line falls back
    # to \uXXXX escapes instead of failing the write, and reads back to the same value.
    path = tmp_path / "failed.jsonl"
    log = FailureLog(path)
    event = UsageEvent.create("mt", "cust")
    log.add(event, "rejected", status=422, error="detail: bad \udc80 value")
    line = path.read_bytes().decode("utf-8")
    assert json.loads(line)["error"] == "detail: bad \udc80 value"
    assert json.loads(line)["event"] == event.to_dict()
