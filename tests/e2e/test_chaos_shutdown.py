"""Chaos scenarios of stopping servers, beside ``test_chaos.py`` (which holds the other short
scenarios): SIGTERM to uvicorn/FastAPI while the API is down (it lost its queue until
e1254a9), and ``manage.py runserver`` (it answered 500 from its async views while its exit
flush ran during interpreter shutdown, until ``fluxrate_web/django/apps.py`` stopped the server
and flushed before exiting).

Reproduce with ``bench/chaos.py`` (``--short`` for these durations), e.g.
``.venv/bin/python bench/chaos.py --short --scenario sigterm --app django-runserver``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from _chaos.billing import Billing  # noqa: E402
from _chaos.scenarios import Context, run_scenario  # noqa: E402

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="process trees and RSS from /proc"),
]
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    workdir = tmp_path_factory.mktemp("chaos-shutdown")
    with Billing(workdir) as billing:
        yield Context(billing, workdir, short=True)


def run(chaos: Context, scenario: str, app: str) -> None:
    if chaos.billing.server is None:
        chaos.billing.start()
    result = run_scenario(chaos, scenario, app)
    assert result.ok, "; ".join(result.problems)


@pytest.mark.slow
def test_sigterm_during_an_outage_fastapi(chaos: Context) -> None:
    """FastAPI under uvicorn, the API down, SIGTERM; SIGKILL 8 s later (a grace period): the
    lifespan shutdown flushes within shutdown_timeout and fails the rest to the failure log."""
    run(chaos, "sigterm-outage", "fastapi")


def test_sigterm_to_django_runserver(chaos: Context) -> None:
    """``manage.py runserver --noreload``, SIGTERM mid-load while deliveries take 300 ms: it
    stops accepting, lets the requests in flight finish, delivers (or failure-logs) the queue
    and exits within shutdown_timeout + 3 s; no request is answered 5xx meanwhile."""
    run(chaos, "sigterm", "django-runserver")
