"""A process that tracks and exits has its events delivered by the atexit flush, within
shutdown_timeout; what cannot be delivered in time goes to the failure log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from _corehelpers import scripted_server

from fluxrate_web.devserver import DevServer

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from fluxrate_web.core import FluxrateClient
    client = FluxrateClient(
        base_url=os.environ["URL"],
        shutdown_timeout=float(os.environ.get("SHUTDOWN", "5")),
        failed_events_path=os.environ.get("FAILED") or None,
    )
    for i in range(int(os.environ["N"])):
        client.track(os.environ["TOKEN"], "exit-cust", 1)
    print("tracked", flush=True)
    # no flush, no close: the atexit hook must deliver
    """
)


def _run(
    env: dict[str, str], timeout: float = 30
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
    )
    return result, time.monotonic() - started


def test_events_tracked_before_exit_are_delivered(fluxrate_server: DevServer) -> None:
    result, elapsed = _run(
        {
            "URL": fluxrate_server.url.replace("127.0.0.1", "localhost"),  # DNS at exit too
            "FLUXRATE_API_KEY": fluxrate_server.api_key,
            "TOKEN": fluxrate_server.meter_token("api_calls"),
            "N": "500",
        }
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tracked"
    assert result.stderr == ""  # no warning of any kind (dev mode, warnings as errors)
    assert elapsed < 5 + 5, elapsed  # shutdown_timeout, plus interpreter start-up
    assert fluxrate_server.summary()["exit-cust"]["api_calls"] == 500
    assert len(fluxrate_server.events()) == 500


def test_exit_deadline_writes_the_rest_to_the_failure_log(tmp_path: Path) -> None:
    failed = tmp_path / "failed.jsonl"
    with scripted_server(delay=10) as server:
        result, elapsed = _run(
            {
                "URL": server.url,
                "FLUXRATE_API_KEY": "org_live_exit_test_key",
                "TOKEN": "mt",
                "N": "40",
                "SHUTDOWN": "0.5",
                "FAILED": str(failed),
            }
        )
    assert result.returncode == 0, result.stderr
    assert elapsed < 5, elapsed
    lines = [json.loads(x) for x in failed.read_text().splitlines()]
    assert len(lines) == 40
    assert {x["reason"] for x in lines} == {"shutdown_deadline"}
    assert "not delivered before the shutdown deadline" in result.stderr


LATE = textwrap.dedent(
    """
    import atexit, os

    def late():  # registered before fluxrate_web is imported: runs after its exit flush
        client.track("mt", "late-cust", 1)

    atexit.register(late)
    from fluxrate_web.core import FluxrateClient
    client = FluxrateClient(
        "org_live_k", os.environ["URL"], failed_events_path=os.environ["FAILED"]
    )
    client.track("mt", "early-cust", 1)
    """
)


def test_tracking_after_the_exit_flush_is_not_lost(tmp_path: Path) -> None:
    failed = tmp_path / "failed.jsonl"
    with scripted_server() as server:
        result = subprocess.run(
            [sys.executable, "-X", "dev", "-W", "error", "-c", LATE],
            capture_output=True,
            text=True,
            env={**os.environ, "URL": server.url, "FAILED": str(failed)},
            timeout=30,
            check=False,
        )
        delivered = [r.json()["customer_external_id"] for r in server.requests]
    assert result.returncode == 0, result.stderr
    assert delivered == ["early-cust"]
    line = json.loads(failed.read_text())
    assert line["reason"] == "shutdown_deadline"
    assert line["event"]["customer_external_id"] == "late-cust"
