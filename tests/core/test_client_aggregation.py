"""Pre-aggregation wired into FluxrateClient (CONTRACT section 7), against the real devserver.

``track()`` folds usages of aggregated meters, the lane's tick sends closed windows, ``flush()``,
``close()`` and interpreter exit send the open ones, and the devserver bills exactly what it
bills for one event per usage.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _corehelpers import wait_until

from fluxrate_web.core import FluxrateClient, capture_events
from fluxrate_web.core.aggregation import AggregationSpec
from fluxrate_web.core.config import load_config
from fluxrate_web.core.metering import Metering
from fluxrate_web.devserver import DevServer

FAST: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05, "max_attempts": 20}
KINDS = {"api_calls": "SUM", "peak": "MAX", "seats": "UNIQUE_COUNT", "level": "LAST"}


def specs(server: DevServer, window: float) -> dict[str, AggregationSpec]:
    return {
        server.meter_token(meter): AggregationSpec(kind, window)  # type: ignore[arg-type]
        for meter, kind in KINDS.items()
    }


def usages(seed: int, n: int) -> list[tuple[str, str, Any, float, dict[str, Any] | None]]:
    """(meter, customer, quantity, epoch seconds, metadata): distinct recent timestamps."""
    rnd = random.Random(seed)
    now = time.time()
    offsets = rnd.sample(range(50, 4000), n)  # ms in the past, distinct (LAST ties)
    out = []
    for off in offsets:
        meter = rnd.choice(list(KINDS))
        quantity: Any = rnd.choice([1, rnd.randrange(1, 500), 0.1, Decimal("2.5")])
        meta: dict[str, Any] | None = rnd.choice([None, {"region": "eu"}])
        if meter == "seats":
            meta = {**(meta or {}), "user_id": rnd.choice(["u1", "u2", "u3", 7])}
        out.append((meter, f"cust-{rnd.randrange(5)}", quantity, now - off / 1000, meta))
    return out


def run(server: DevServer, batch: list[Any], **kwargs: Any) -> tuple[dict[str, Any], int]:
    server.reset()
    client = FluxrateClient(server.api_key, server.url, **FAST, **kwargs)
    try:
        for meter, customer, quantity, ts, meta in batch:
            assert client.track(
                server.meter_token(meter), customer, quantity, timestamp=ts, metadata=meta
            )
        assert client.flush(30)
        stats = client.stats.as_dict()
    finally:
        client.close()
    assert stats["failed"] == 0, stats
    assert stats["pending"] == 0, stats
    return server.summary(), server.track_requests()


def test_totals_identical_with_and_without_aggregation(devserver: DevServer) -> None:
    batch = usages(12, 400)
    single, single_requests = run(devserver, batch)
    folded, folded_requests = run(devserver, batch, aggregation=specs(devserver, 60))
    assert folded == single
    assert single_requests == 400
    # one request per meter, customer and metadata (which holds the seat's user) and window;
    # the batch spans 4 s, so it may straddle one minute boundary
    groups = {(m, c, repr(sorted((meta or {}).items()))) for m, c, _, _, meta in batch}
    assert folded_requests <= 2 * len(groups) < 400


def test_closed_windows_go_out_on_the_tick_and_stats(fluxrate_server: DevServer) -> None:
    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        aggregation={token: AggregationSpec("SUM", 0.2)},
        **FAST,
    )
    try:
        for _ in range(300):
            assert client.track(token, "tick-cust", 2) is not None
        stats = client.stats
        assert stats.folded == 300
        assert stats.aggregates_open >= 1
        assert fluxrate_server.track_requests() == 0  # nothing is sent per usage
        # no flush: the worker's tick sends each window once it closed (+1 s grace)
        assert wait_until(
            lambda: fluxrate_server.summary().get("tick-cust", {}).get("api_calls") == 600,
            timeout=10,
        )
        assert stats.aggregates_open == 0
        assert stats.aggregates == fluxrate_server.track_requests() <= 3
        assert stats.reduction_ratio >= 100
        values = stats.as_dict()
        assert values["folded"] == 300
        assert values["aggregates"] == stats.aggregates
        assert wait_until(lambda: client.stats.delivered == stats.aggregates)
    finally:
        client.close()


def test_keyed_usages_and_captures_are_never_folded(fluxrate_server: DevServer) -> None:
    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        aggregation={token: AggregationSpec("SUM", 60)},
        **FAST,
    )
    try:
        for i in range(5):  # a request's Idempotency-Key: the server must dedupe, not us
            assert client.track(token, "keyed", 1, idempotency_key=f"req-{i}")
            assert client.track(token, "keyed", 1, idempotency_key=f"req-{i}")
        with capture_events() as captured:
            client.track(token, "captured", 1)
            client.track(token, "captured", 1)
        assert len(captured) == 2  # tests see one event per usage
        other = fluxrate_server.meter_token("peak")  # not aggregated
        client.track(other, "plain", 3)
        assert client.flush(20)
        assert client.stats.folded == 0
        assert client.stats.deduplicated == 5
    finally:
        client.close()
    summary = fluxrate_server.summary()
    assert summary["keyed"]["api_calls"] == 5
    assert summary["plain"]["peak"] == 3
    assert "captured" not in summary


def test_close_sends_open_windows_and_later_usage_goes_to_the_failure_log(
    fluxrate_server: DevServer, tmp_path: Path
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    failed = tmp_path / "failed.jsonl"
    client = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        aggregation={token: AggregationSpec("SUM", 3600)},
        failed_events_path=failed,
        **FAST,
    )
    for _ in range(50):
        client.track(token, "closing", 1)
    client.close()
    assert fluxrate_server.summary()["closing"]["api_calls"] == 50
    assert fluxrate_server.track_requests() == 1
    assert client.track(token, "closing", 1) is None  # closed: not folded, not lost
    assert json.loads(failed.read_text())["reason"] == "client_closed"


def test_bad_aggregation_argument_is_a_config_error() -> None:
    from fluxrate_web.core import ConfigError

    with pytest.raises(ConfigError, match="aggregation"):
        FluxrateClient("k", "http://127.0.0.1:9", aggregation={"t": ("SUM", 60)})  # type: ignore[dict-item]


def test_metering_passes_the_config_aggregation(
    fluxrate_server: DevServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = fluxrate_server.meter_token("api_calls")
    path = tmp_path / "fluxrate.yaml"
    path.write_text(
        f"api_key: {fluxrate_server.api_key}\nbase_url: {fluxrate_server.url}\n"
        f"meters:\n  api_calls: {{token: {token}, aggregation: SUM, window: 30s}}\n"
    )
    metering = Metering.from_config(load_config(path))
    try:
        client = metering.client
        assert isinstance(client, FluxrateClient)
        assert client.aggregation == {token: AggregationSpec("SUM", 30.0)}
        assert "not supported" not in caplog.text
        for _ in range(20):
            client.track(token, "cfg", 1)
        assert metering.flush(10)
        assert client.stats.folded == 20
    finally:
        metering.close()
    assert fluxrate_server.summary()["cfg"]["api_calls"] == 20
    assert fluxrate_server.track_requests() == 1


EXIT_SCRIPT = textwrap.dedent(
    """
    import os
    from fluxrate_web.core import FluxrateClient
    from fluxrate_web.core.aggregation import AggregationSpec
    token = os.environ["TOKEN"]
    client = FluxrateClient(
        base_url=os.environ["URL"],
        aggregation={token: AggregationSpec("SUM", 3600)},
    )
    for i in range(int(os.environ["N"])):
        client.track(token, "exit-agg", 1)
    assert client.stats.aggregates_open == 1
    print("tracked", flush=True)
    # no flush, no close: the exit flush must send the open window
    """
)


def test_the_exit_flush_sends_open_windows(fluxrate_server: DevServer) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", EXIT_SCRIPT],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "URL": fluxrate_server.url,
            "FLUXRATE_API_KEY": fluxrate_server.api_key,
            "TOKEN": fluxrate_server.meter_token("api_calls"),
            "N": "1000",
        },
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tracked"
    assert result.stderr == ""
    assert fluxrate_server.summary()["exit-agg"]["api_calls"] == 1000
    assert fluxrate_server.track_requests() == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_inherit_open_windows(fluxrate_server: DevServer) -> None:
    token = fluxrate_server.meter_token("api_calls")
    client = FluxrateClient(
        fluxrate_server.api_key,
        fluxrate_server.url,
        aggregation={token: AggregationSpec("SUM", 3600)},
        **FAST,
    )
    try:
        for _ in range(10):
            client.track(token, "parent", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if client.stats.aggregates_open == 0 and client.stats.folded == 0:
                    code = 2
                    for _ in range(7):
                        client.track(token, "child", 1)
                    if client.flush(15) and client.stats.delivered == 1:
                        code = 0
                client.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.flush(15)
    finally:
        client.close()
    summary = fluxrate_server.summary()
    assert summary["parent"]["api_calls"] == 10
    assert summary["child"]["api_calls"] == 7
