"""The example Django project under gunicorn (WSGI), over real HTTP, delivering to the devserver.

``--preload --workers 2``: Django (and the metering core, started by ``AppConfig.ready``) is
loaded in the master before the fork; each worker bills its own requests, and on SIGTERM each
worker flushes what it still holds at exit. Every event arrives exactly once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from fluxrate_web.devserver import DevServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django_app"
TOKEN = "e2e-gunicorn-token"

pytest.importorskip("gunicorn")


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(meters={"api_calls": "SUM", "reports": "SUM", "export_bytes": "SUM"}) as dev:
        yield dev


def test_preloaded_gunicorn_workers_bill_exactly_once(server: DevServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FLUXRATE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="fluxdemo.settings",
        FLUXDEMO_DB=str(tmp_path / "db.sqlite3"),
        FLUXRATE_API_KEY=server.api_key,
        FLUXRATE_BASE_URL=server.url,
        FLUXRATE_METER_API_CALLS=server.meter_token("api_calls"),
        FLUXRATE_METER_REPORTS=server.meter_token("reports"),
        FLUXRATE_METER_EXPORT_BYTES=server.meter_token("export_bytes"),
        PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(ROOT)]),
    )
    for args in (("migrate", "--verbosity", "0"), ("seed_demo", "--token", TOKEN)):
        subprocess.run(
            [sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env, check=True, timeout=60
        )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "fluxdemo.wsgi:application",
                "--bind",
                f"fd://{sock.fileno()}",
                "--workers",
                "2",
                "--preload",
                "--graceful-timeout",
                "15",
            ],
            cwd=EXAMPLE,
            env=env,
            pass_fds=(sock.fileno(),),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log_path.read_text(errors="replace"))
                time.sleep(0.05)
            server.set_faults(latency_ms=200)  # deliveries still in flight at SIGTERM

            def call(i: int) -> int:
                with httpx.Client(base_url=url, timeout=10) as client:
                    response = client.get(
                        "/api/forecast",
                        params={"city": "paris"},
                        headers={"Authorization": f"Bearer {TOKEN}"},
                    )
                    return response.status_code

            with ThreadPoolExecutor(8) as pool:
                assert list(pool.map(call, range(24))) == [200] * 24
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            sock.close()
            server.clear_faults()
    assert process.returncode == 0, log_path.read_text(errors="replace")
    assert server.summary() == {"acme": {"api_calls": 24.0}}
    keys = [event["idempotency_key"] for event in server.events()]
    assert len(keys) == len(set(keys)) == 24
