"""The issue's fleet scenario, short: 4 uvicorn workers with ``transport: redis`` and 2 relays,
relay A SIGKILLed mid-load, every relay down for a while as the apps keep serving; the
devserver's ledger equals the load generator's record (``bench/redis_fleet.py``, whose full
run takes the relays down for 60 s and reports the figures of docs/scale-out.md)."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
from _redishelpers import REPO


def bench_module() -> ModuleType:
    path = REPO / "bench" / "redis_fleet.py"
    spec = importlib.util.spec_from_file_location("bench_redis_fleet", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_four_workers_two_relays_kill_and_outage_ledger_equals_record(
    redis_binary: str,
) -> None:
    pytest.importorskip("uvicorn")
    fleet_bench = bench_module()
    args = fleet_bench.main.__globals__["argparse"].Namespace(
        workers=4, customers=20, connections=16, rate=300.0, duration=16.0, kill_at=3.0,
        down_at=6.0, down=5.0, claim_idle=1.0, latency_ms=30, tp_requests=0, agg_requests=0,
        window=2.0,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fluxrate-fleet-") as tmp:
        fleet = fleet_bench.Fleet(Path(tmp), args)
        try:
            result = fleet.chaos()
        finally:
            fleet.close()
    assert result["errors"] == 0
    assert result["billed"] == result["requests"]
    assert result["lost"] == 0, result
    assert result["duplicated"] == 0, result
    assert result["repeated_keys"] == 0, result
    assert result["events"] == result["billed"]
    assert result["backlog_peak"] > 0  # the relays were really down while the apps served
