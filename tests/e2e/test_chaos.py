"""The chaos suite, short versions: the example apps under real servers (FastAPI under uvicorn,
Django under uvicorn, Flask under gunicorn ``--preload`` with 2 workers), loaded by a generator
that keeps its own record of every billable answer, while the devserver fails in the ways
Fluxrate could. The ledger must match the record: 0 lost, 0 duplicated.

The scenarios live in ``bench/_chaos/scenarios.py``; ``bench/chaos.py`` runs the full versions
(minutes instead of seconds) and prints the table of ``docs/reliability.md``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from _chaos.billing import Billing  # noqa: E402
from _chaos.scenarios import Context, Result, run_scenario  # noqa: E402

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="process trees and RSS from /proc"),
]
pytest.importorskip("gunicorn")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    """One devserver for the module (restartable: fixed port, database file)."""
    workdir = tmp_path_factory.mktemp("chaos")
    with Billing(workdir) as billing:
        yield Context(billing, workdir, short=True)


def explain(result: Result) -> str:
    lines = [f"{result.scenario} on {result.app}:"]
    lines += [f"  FAILED: {problem}" for problem in result.problems]
    lines += [f"  note: {note}" for note in result.notes]
    if result.tally is not None:
        lines.append(f"  tally: {result.tally.describe()}")
    if result.log_tail:
        lines.append("  app log (tail):\n" + result.log_tail)
    return "\n".join(lines)


def run(chaos: Context, scenario: str, app: str) -> Result:
    # the devserver may have been left down or faulty by a failed scenario
    if chaos.billing.server is None:
        chaos.billing.start()
    result = run_scenario(chaos, scenario, app)
    assert result.ok, explain(result)
    assert result.sent > 0
    assert result.lost == 0
    assert result.duplicated == 0
    return result


@pytest.mark.slow
def test_30_percent_5xx_loses_and_duplicates_nothing(chaos: Context) -> None:
    """Flask, 2 preloaded gunicorn workers; 30 % of the API's answers are 503."""
    run(chaos, "5xx", "flask")


@pytest.mark.slow
def test_429_storm_honours_retry_after(chaos: Context) -> None:
    """FastAPI; every answer 429 (Retry-After: 2) for 4 s, then 30 %: at most max_in_flight
    requests per Retry-After window reach the API; nothing lost or duplicated."""
    result = run(chaos, "429", "fastapi")
    assert any("storm" in note for note in result.notes)


@pytest.mark.slow
def test_outage_beyond_the_retry_budget_memory_mode_replay(chaos: Context) -> None:
    """Django under uvicorn; the devserver down 5 s with a 2 s retry budget: the requests are
    unaffected, every undelivered event is in the failure log, replay delivers them once."""
    result = run(chaos, "outage-memory", "django")
    assert result.kept > 0


def test_devserver_restarted_mid_load(chaos: Context) -> None:
    """Flask; the devserver is stopped and started again on the same port and ledger."""
    run(chaos, "restart", "flask")


@pytest.mark.slow
def test_two_seconds_of_billing_latency_leave_the_app_latency_alone(chaos: Context) -> None:
    """FastAPI; 2 s added to every API call: the app's p99 stays within noise of the
    baseline measured in the same run."""
    run(chaos, "latency", "fastapi")


def test_sigterm_mid_load_delivers_within_the_deadline(chaos: Context) -> None:
    """SIGTERM to uvicorn (Django, ASGI lifespan) while deliveries take 300 ms: delivered
    before the process exits."""
    run(chaos, "sigterm", "django")


@pytest.mark.slow
def test_sigterm_during_an_outage_keeps_the_rest_in_the_failure_log(chaos: Context) -> None:
    """SIGTERM to the gunicorn master (Flask, the exit hook of each worker) while the API is
    down: the workers exit within shutdown_timeout and what they could not deliver is in the
    failure log (replay delivers it)."""
    result = run(chaos, "sigterm-outage", "flask")
    assert result.kept > 0


def test_wrong_api_key(chaos: Context) -> None:
    """Flask, 2 workers, a key the API refuses: all answers as usual, every event in the
    failure log (401), the warning once per process, replay with the right key delivers."""
    run(chaos, "401", "flask")


def test_sigkill_with_strict_durability_loses_nothing(chaos: Context) -> None:
    """Flask, 2 workers, ``durability: strict``: SIGKILL to master and workers mid-load with
    deliveries pending; the restarted app adopts the spools and delivers them."""
    run(chaos, "sigkill-strict", "flask")


@pytest.mark.slow
def test_outage_with_spool_keeps_memory_flat_and_delivers_after(chaos: Context) -> None:
    """FastAPI, ``durability: spool``: a 10 s outage at steady load (5 s of it on disk, after
    the spool grace); RSS flat; everything delivered once the devserver is back."""
    run(chaos, "long-outage-spool", "fastapi")
