"""End to end: the example Django project (examples/django_app) served by a real uvicorn
subprocess (ASGI), real HTTP from httpx, events delivered by the real client to the devserver.

Sync views, an async view, a class-based view with ``method_decorator(meter(...))``, a streamed
CSV billed by bytes once sent, 4xx not billed, and the flush on SIGTERM (ASGI lifespan).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from fluxrate_web.devserver import DevServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django_app"
METERS = {"api_calls": "SUM", "reports": "SUM", "export_bytes": "SUM"}
TOKEN = "e2e-token-of-alice"


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(meters=METERS) as devserver:
        yield devserver


def example_env(server: DevServer, db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FLUXRATE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="fluxdemo.settings",
        FLUXDEMO_DB=str(db),
        FLUXRATE_API_KEY=server.api_key,
        FLUXRATE_BASE_URL=server.url,
        FLUXRATE_METER_API_CALLS=server.meter_token("api_calls"),
        FLUXRATE_METER_REPORTS=server.meter_token("reports"),
        FLUXRATE_METER_EXPORT_BYTES=server.meter_token("export_bytes"),
        PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(ROOT)]),
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


class Uvicorn:
    """``uvicorn fluxdemo.asgi:application`` on a socket this test bound (no port race)."""

    def __init__(self, env: dict[str, str], log: IO[bytes]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        fd = self.sock.fileno()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "fluxdemo.asgi:application",
                "--fd",
                str(fd),
                "--lifespan",
                "on",
                "--no-access-log",
            ],
            cwd=EXAMPLE,
            env=env,
            pass_fds=(fd,),
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not answer")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.sock.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def site(server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("fluxdemo")
    env = example_env(server, tmp / "db.sqlite3")
    manage(env, "migrate", "--verbosity", "0")
    manage(env, "seed_demo", "--org", "acme", "--user", "alice", "--token", TOKEN)
    log_path = tmp / "uvicorn.log"
    with open(log_path, "wb") as log:
        uv = Uvicorn(env, log)
        try:
            uv.wait_ready()
            yield uv, env, tmp
        finally:
            uv.stop()
    print(log_path.read_text(errors="replace")[-3000:])


def wait_for(
    server: DevServer, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    summary = server.summary()
    while not predicate(summary) and time.monotonic() < deadline:
        time.sleep(0.05)
        summary = server.summary()
    return summary


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_views_under_uvicorn_bill_the_organisation(server: DevServer, site: Any) -> None:
    server.reset()
    uv, _env, _tmp = site
    with httpx.Client(base_url=uv.url, headers=AUTH, timeout=10) as client:
        assert client.get("/api/forecast", params={"city": "lagos"}).status_code == 200
        assert client.get("/api/search", params={"q": "pa"}).json() == {"results": ["paris"]}
        assert client.get("/api/reports/").status_code == 200
        assert client.post("/api/reports/", json={"kind": "weekly"}).status_code == 202
        # not billed: 4xx, no token, excluded route
        assert client.get("/api/forecast", params={"city": "nowhere"}).status_code == 404
        assert client.post("/api/reports/", content=b"x").status_code == 415
        assert httpx.get(uv.url + "/api/forecast?city=lima").status_code == 401
        assert client.get("/health").status_code == 200
        with client.stream("GET", "/api/exports/2023.csv") as response:
            size = sum(len(chunk) for chunk in response.iter_raw())
    assert size > 10_000
    expected = {"acme": {"api_calls": 4.0, "reports": 1.0, "export_bytes": float(size)}}
    assert wait_for(server, lambda s: s == expected) == expected
    time.sleep(0.3)
    assert server.summary() == expected  # nothing billed twice or late


def test_events_in_flight_are_flushed_when_uvicorn_stops(
    server: DevServer, site: Any, tmp_path: Path
) -> None:
    """SIGTERM right after the responses: the exit flush delivers what is queued or in flight
    (the devserver answers slowly, so deliveries are still pending)."""
    server.reset()
    _uv, env, _tmp = site
    with open(tmp_path / "uvicorn.log", "wb") as log:
        uv = Uvicorn(env, log)
        try:
            uv.wait_ready()
            server.set_faults(latency_ms=300)
            with httpx.Client(base_url=uv.url, headers=AUTH, timeout=10) as client:
                for city in ("paris", "lagos", "lima"):
                    assert client.get("/api/forecast", params={"city": city}).status_code == 200
        finally:
            code = uv.stop()
            server.clear_faults()
    # uvicorn re-raises SIGTERM after its graceful shutdown: no atexit hook runs; the lifespan
    # shutdown of fluxrate_web.django.asgi.with_lifespan delivered the events.
    log_text = (tmp_path / "uvicorn.log").read_text(errors="replace")
    assert code in (0, -signal.SIGTERM), log_text
    assert "Waiting for application shutdown" in log_text
    assert server.summary() == {"acme": {"api_calls": 3.0}}
