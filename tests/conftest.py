"""Shared fixtures: a real devserver over loopback HTTP.

``devserver``: one server per test session (per xdist worker) with the four meters
api_calls (SUM), peak (MAX), seats (UNIQUE_COUNT) and level (LAST).
``fluxrate_server``: the same server, reset (no events, customers, counters or faults)
before the test; its faults are cleared again after it, so a test that injects faults
never leaks them into a test that uses ``devserver`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from fluxrate_web.devserver import DevServer

# CI explores the same examples every run (a red build is then reproducible from its log);
# locally each run explores new ones. HYPOTHESIS_PROFILE overrides either.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

DEVSERVER_METERS = {
    "api_calls": "SUM",
    "peak": "MAX",
    "seats": "UNIQUE_COUNT",
    "level": "LAST",
}


@pytest.fixture(scope="session")
def devserver() -> Iterator[DevServer]:
    with DevServer(meters=DEVSERVER_METERS) as server:
        yield server
        log = server.log_text()
    # a request that crashed the server's handler is a devserver bug, whatever test sent it
    assert "Traceback" not in log, f"the devserver logged an exception:\n{log}"


@pytest.fixture
def fluxrate_server(devserver: DevServer) -> Iterator[DevServer]:
    devserver.reset()
    yield devserver
    devserver.clear_faults()


# ``make test`` runs the suite on two xdist workers with ``--dist loadgroup``. A module stays on
# one worker (its module-scoped servers, apps and wheels are built once), except the chaos
# scenarios: each takes seconds of wall-clock time, mostly waiting, so they are dealt out
# one by one to balance the two workers.
_SPREAD_ONE_BY_ONE = ("tests/e2e/test_chaos.py",)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers
        return
    root = config.rootpath
    for item in items:
        module = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        if module in _SPREAD_ONE_BY_ONE:
            continue
        if not any(mark.name == "xdist_group" for mark in item.iter_markers()):
            item.add_marker(pytest.mark.xdist_group(module or str(item.path)))
