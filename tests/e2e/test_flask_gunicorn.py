"""The Flask adapter under gunicorn, over real HTTP, delivering to the devserver.

* 2 sync workers, the app loaded in each worker;
* ``--preload`` with 2 workers: the app (and its client) built in the master before the fork;
  events from both workers are delivered exactly once (fork safety of the core);
* ``--preload`` after the master itself billed a request (its worker thread running at fork);
* the example app (``examples/flask_app``) under gunicorn.

Every event carries the pid of the worker that served it (metadata), so the tests see that both
workers billed; gunicorn is stopped with SIGTERM and each worker flushes at exit.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fluxrate_web.devserver import DevServer

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "flask_app"

APP_MODULE = """
import os

from flask import Flask, Response, g, request

from fluxrate_web.flask import Fluxrate, meter, record

fluxrate = Fluxrate()


def worker_pid(req, info):
    return {"pid": str(os.getpid())}


def create_app():
    app = Flask(__name__)
    fluxrate.init_app(app)  # FLUXRATE_CONFIG from the environment

    @app.before_request
    def authenticate():
        g.customer_id = request.headers.get("X-Customer-Id")

    @app.get("/work/<int:n>")
    @meter("api_calls", metadata=worker_pid)
    def work(n):
        return {"n": n, "pid": os.getpid()}

    @app.get("/stream/<int:n>")
    @meter("api_calls", metadata=worker_pid)
    def stream(n):
        def body():
            for i in range(n):
                yield f"{i}\\n"
            record("tokens", n, metadata=worker_pid(None, None))

        return Response(body(), headers={"X-Pid": str(os.getpid())})

    if os.environ.get("WARM_IN_MASTER"):
        # the master bills a request before gunicorn forks: its client's worker thread is
        # running (and may be sending) when the workers are forked
        response = app.test_client().get("/work/0", headers={"X-Customer-Id": "master"})
        assert response.status_code == 200
    return app
"""

CONFIG = """\
api_key: ${E2E_API_KEY}
base_url: ${E2E_BASE_URL}
meters:
  api_calls: ${E2E_API_CALLS}
  tokens: ${E2E_TOKENS}
customer: state:customer_id
"""

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gunicorn needs fork")


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(meters={"api_calls": "SUM", "tokens": "SUM"}) as devserver:
        yield devserver


@pytest.fixture
def fluxrate_devserver(server: DevServer) -> DevServer:
    server.reset()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(setting.name == name for setting in KNOWN_SETTINGS)


class Gunicorn:
    def __init__(
        self,
        app: str,
        chdir: Path,
        env: dict[str, str],
        log: Path,
        *,
        workers: int = 2,
        preload: bool = False,
    ) -> None:
        self.port = free_port()
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "--chdir",
            str(chdir),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--worker-class",
            "sync",
            "--graceful-timeout",
            "20",
            "--log-level",
            "info",
        ]
        if preload:
            args.append("--preload")
        if _has_setting("no_control_socket"):  # gunicorn >= 24: no shared ~/.gunicorn socket
            args.append("--no-control-socket")
        args.append(app)
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args,
            env={**os.environ, **env, "PYTHONPATH": str(REPO)},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.log.read_text()}")
            try:
                status, _headers, _body = self.get("/healthz-probe")
                if status:
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"gunicorn did not start:\n{self.log.read_text()}")

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def stop(self) -> str:
        """SIGTERM: graceful shutdown; each worker flushes its queue at exit."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log_file.close()
        return self.log.read_text()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "e2e_flask_app.py").write_text(textwrap.dedent(APP_MODULE))
    (tmp_path / "fluxrate.yaml").write_text(CONFIG)
    return tmp_path


def env_for(server: DevServer, config: Path) -> dict[str, str]:
    return {
        "FLUXRATE_CONFIG": str(config),
        "E2E_API_KEY": server.api_key,
        "E2E_BASE_URL": server.url,
        "E2E_API_CALLS": server.meter_token("api_calls"),
        "E2E_TOKENS": server.meter_token("tokens"),
    }


def hammer(gunicorn: Gunicorn, paths: list[str]) -> list[tuple[int, dict[str, str], bytes]]:
    def one(index_path: tuple[int, str]) -> tuple[int, dict[str, str], bytes]:
        index, path = index_path
        return gunicorn.get(path, {"X-Customer-Id": f"cus_{index % 3}"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, enumerate(paths)))


def wait_for_events(server: DevServer, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    events = server.events()
    while len(events) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        events = server.events()
    return events


def check_exactly_once(
    server: DevServer, expected_calls: int, expected_tokens: int, log: str
) -> list[dict[str, Any]]:
    events = wait_for_events(server, expected_calls + (1 if expected_tokens else 0))
    calls = server.events("api_calls")
    tokens = server.events("tokens")
    keys = [e["idempotency_key"] for e in events]
    assert len(keys) == len(set(keys)), "an idempotency key was stored twice"
    assert len(calls) == expected_calls, f"api_calls events: {len(calls)}\n{log}"
    total_tokens = sum(float(e["quantity"]) for e in tokens)
    assert total_tokens == expected_tokens, f"tokens: {total_tokens}\n{log}"
    assert "Traceback" not in log, log
    return events


def pids_of(events: list[dict[str, Any]]) -> set[str]:
    pids = set()
    for event in events:
        metadata = event.get("meta_data") or event.get("metadata") or {}
        if "pid" in metadata:
            pids.add(metadata["pid"])
    return pids


def run_and_check(
    server: DevServer, app_dir: Path, *, preload: bool, warm_in_master: bool = False
) -> None:
    env = env_for(server, app_dir / "fluxrate.yaml")
    if warm_in_master:
        env["WARM_IN_MASTER"] = "1"
    gunicorn = Gunicorn(
        "e2e_flask_app:create_app()",
        app_dir,
        env,
        app_dir / "gunicorn.log",
        workers=2,
        preload=preload,
    )
    try:
        paths = [f"/work/{i}" for i in range(120)] + [f"/stream/{i % 5 + 1}" for i in range(30)]
        results = hammer(gunicorn, paths)
        served_by = {str(json.loads(body)["pid"]) for _s, _h, body in results[:120]}
        served_by |= {headers["X-Pid"] for _s, headers, _b in results[120:]}
        for _ in range(10):  # both workers must have served something
            if len(served_by) >= 2:
                break
            more = hammer(gunicorn, [f"/work/{i}" for i in range(40)])
            paths += [f"/work/{i}" for i in range(40)]
            served_by |= {str(json.loads(body)["pid"]) for _s, _h, body in more}
        assert all(status == 200 for status, _h, _b in results)
    finally:
        log = gunicorn.stop()
    assert len(served_by) == 2, f"one worker served everything: {served_by}\n{log}"
    calls = sum(1 for p in paths if p.startswith(("/work/", "/stream/")))
    tokens = sum(int(p.rsplit("/", 1)[1]) for p in paths if p.startswith("/stream/"))
    if warm_in_master:
        calls += 1
    events = check_exactly_once(server, calls, tokens, log)
    assert pids_of(events) >= {str(pid) for pid in served_by}, "events of a worker are missing"
    if warm_in_master:
        assert len(server.events("api_calls")) == calls
        assert any(e["customer_external_id"] == "master" for e in server.events("api_calls"))


def test_gunicorn_two_workers(fluxrate_devserver: DevServer, app_dir: Path) -> None:
    run_and_check(fluxrate_devserver, app_dir, preload=False)


def test_gunicorn_preload_two_workers(fluxrate_devserver: DevServer, app_dir: Path) -> None:
    run_and_check(fluxrate_devserver, app_dir, preload=True)


def test_gunicorn_preload_after_the_master_billed(
    fluxrate_devserver: DevServer, app_dir: Path
) -> None:
    run_and_check(fluxrate_devserver, app_dir, preload=True, warm_in_master=True)


def test_example_app_under_gunicorn(fluxrate_devserver: DevServer, tmp_path: Path) -> None:
    server = fluxrate_devserver
    env = {
        "FLUXRATE_API_KEY": server.api_key,
        "FLUXRATE_BASE_URL": server.url,
        "ACME_METER_API_CALLS": server.meter_token("api_calls"),
        "ACME_METER_TOKENS": server.meter_token("tokens"),
    }
    gunicorn = Gunicorn(
        "acme_api:create_app()", EXAMPLE, env, tmp_path / "gunicorn.log", preload=True
    )
    try:
        alice = {"Authorization": "Bearer tok_alice"}
        status, _h, _body = gunicorn.get("/v1/items", alice)
        assert status == 200
        conn = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=10)
        try:
            payload = json.dumps({"prompt": "hello there", "stream": True})
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=payload,
                headers={**alice, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        assert text.endswith("data: [DONE]\n\n")
        assert gunicorn.get("/v1/items")[0] == 401  # no token: not billed
        assert gunicorn.get("/healthz")[0] == 200  # excluded
    finally:
        log = gunicorn.stop()
    events = wait_for_events(server, 3)
    assert server.summary() == {"cus_alice": {"api_calls": 2.0, "tokens": 4.0}}, log
    assert len(events) == 3
