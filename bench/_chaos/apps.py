"""The three example apps, each served by a real server in its own process group.

================ ============================== =============================================
app              server                         example
================ ============================== =============================================
fastapi          uvicorn (1 process)            ``examples/fastapi_app`` (``create_app(config)``)
django           uvicorn (1 process, ASGI)      ``examples/django_app`` (``fluxdemo.asgi``)
django-wsgi      gunicorn ``--preload``, 2 wkrs ``examples/django_app`` (``fluxdemo.wsgi``)
django-runserver ``manage.py runserver``        ``examples/django_app`` (``--noreload``)
flask            gunicorn ``--preload``, 2 wkrs ``examples/flask_app`` (``acme_api:create_app()``)
================ ============================== =============================================

Each app runs unchanged; its own ``fluxrate.yaml`` is copied with the chaos settings added
(``failed_events_path``, ``durability``, ``spool_path``, retry budget, ...) and handed over the
way the example allows: ``FLUXRATE_CONFIG`` (Flask), a settings module that extends
``fluxdemo.settings`` (Django), ``create_app(config)`` through a uvicorn factory (FastAPI, whose
``main:app`` reads its ``fluxrate.yaml`` next to it). The listening socket is bound here and
passed to the server (``--fd`` / ``fd://``), so a restarted app serves the same port and no port
is raced for.

Every spec knows its request mix (:meth:`AppSpec.next_call`) and what a response bills
(:meth:`AppSpec.bills`): that is the load generator's own record, independent of fluxrate-web.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from _chaos.billing import Billing, free_port
from _chaos.procs import descendants

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BENCH = REPO / "bench"

Bill = tuple[str, str, int]  # (customer, meter, quantity)


@dataclass(frozen=True, slots=True)
class Call:
    """One request of the mix."""

    kind: str
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None = None
    customer: str | None = None  # billed when the answer is 2xx; None: never billable


def _json(data: object) -> bytes:
    return json.dumps(data).encode()


def _gunicorn_flags() -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "no_control_socket" in names else []


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a YAML double-quoted scalar


def with_settings(text: str, settings: Mapping[str, object]) -> str:
    """The example's ``fluxrate.yaml`` with top-level ``settings`` set (replaced or added)."""
    extra: list[str] = []
    for key, value in settings.items():
        line = f"{key}: {_yaml_scalar(value)}"
        pattern = re.compile(rf"^{re.escape(key)}:.*$", re.MULTILINE)
        if pattern.search(text):
            text = pattern.sub(line, text, count=1)
        else:
            extra.append(line)
    if extra:
        text = text.rstrip("\n") + "\n\n# added by the chaos suite (bench/_chaos)\n"
        text += "\n".join(extra) + "\n"
    return text


def base_env() -> dict[str, str]:
    """This environment without FLUXRATE_*/DJANGO_*/ACME_* (nothing leaks into the app)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLUXRATE_", "DJANGO_", "ACME_", "CHAOS_", "EXAMPLE_"))
    }


class AppSpec:
    """What differs between the example apps."""

    name = ""
    example = EXAMPLES
    health = "/health"
    meters: tuple[str, ...] = ()
    customers: Mapping[str, str] = {}  # credential -> customer external id
    client_processes = 1  # processes that each run a delivery client
    preload = False
    binds_itself = False  # the server binds its port (no inherited socket)

    @property
    def cwd(self) -> Path:
        return self.example

    def prepare(self, workdir: Path, billing: Billing) -> None:
        """One-time set-up (Django: a migrated, seeded database to copy)."""

    def config_text(self, settings: Mapping[str, object]) -> str:
        return with_settings((self.example / "fluxrate.yaml").read_text(), settings)

    def command(self, fd: int, port: int) -> list[str]:
        raise NotImplementedError

    def env(self, billing: Billing, config: Path, api_key: str, run_dir: Path) -> dict[str, str]:
        raise NotImplementedError

    def next_call(self, rng: random.Random, state: dict[str, Any]) -> Call:
        raise NotImplementedError

    def bills(self, call: Call, status: int, body: bytes) -> tuple[Bill, ...]:
        raise NotImplementedError

    def seen(self, call: Call, status: int, body: bytes, state: dict[str, Any]) -> None:
        """Remember what the app answered (ids of created objects, ...)."""

    # the meters each kind of call bills when it succeeds
    kind_meters: Mapping[str, tuple[str, ...]] = {}

    def may_bill(self, call: Call) -> tuple[tuple[str, str], ...]:
        """``(customer, meter)`` pairs a call may have billed although its answer never
        arrived (the server was killed while sending it)."""
        if call.customer is None:
            return ()
        return tuple((call.customer, meter) for meter in self.kind_meters.get(call.kind, ()))

    # shared by the servers
    def uvicorn(self, target: str, fd: int, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            *extra,
            "--fd",
            str(fd),
            "--lifespan",
            "on",
            "--no-access-log",
            "--log-level",
            "warning",
        ]

    def gunicorn(self, target: str, fd: int, workers: int = 2) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gunicorn",
            target,
            "--bind",
            f"fd://{fd}",
            "--workers",
            str(workers),
            "--worker-class",
            "sync",
            "--preload",
            "--graceful-timeout",
            "30",
            "--timeout",
            "60",
            "--log-level",
            "warning",
            *_gunicorn_flags(),
        ]


# -- FastAPI -------------------------------------------------------------------------------------


class FastAPIApp(AppSpec):
    """``examples/fastapi_app`` under uvicorn. ``X-API-Key`` names the customer;
    ``POST /v1/chat`` bills 1 ``api_calls`` + the ``tokens`` it answers, ``GET /v1/stream``
    1 ``api_calls`` + the bytes streamed, ``GET /v1/search`` 1 ``api_calls``."""

    name = "fastapi"
    example = EXAMPLES / "fastapi_app"
    meters = ("api_calls", "tokens", "stream_bytes")
    customers = {"key-acme-123": "acme", "key-globex-456": "globex", "key-initech-789": "initech"}
    admin_token = "chaos-admin-token"
    kind_meters = {
        "chat": ("api_calls", "tokens"),
        "search": ("api_calls",),
        "stream": ("api_calls", "stream_bytes"),
    }

    def command(self, fd: int, port: int) -> list[str]:
        return self.uvicorn("_chaos.factories:fastapi_app", fd, "--factory")

    def env(self, billing: Billing, config: Path, api_key: str, run_dir: Path) -> dict[str, str]:
        return {
            **base_env(),
            "CHAOS_FLUXRATE_CONFIG": str(config),
            "FLUXRATE_API_KEY": api_key,
            "FLUXRATE_BASE_URL": billing.url,
            "FLUXRATE_ALLOW_INSECURE": "true",
            "FLUXRATE_METER_API_CALLS": billing.token("api_calls"),
            "FLUXRATE_METER_TOKENS": billing.token("tokens"),
            "FLUXRATE_METER_STREAM_BYTES": billing.token("stream_bytes"),
            "EXAMPLE_ADMIN_TOKEN": self.admin_token,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(EXAMPLES), str(BENCH)]),
        }

    @property
    def cwd(self) -> Path:
        return REPO

    def next_call(self, rng: random.Random, state: dict[str, Any]) -> Call:
        key = rng.choice(list(self.customers))
        customer = self.customers[key]
        headers = {"X-API-Key": key}
        draw = rng.random()
        if draw < 0.45:
            prompt = " ".join(rng.choice(["bill", "me", "once", "please"]) for _ in range(4))
            body = _json({"prompt": prompt, "max_tokens": rng.randint(1, 16)})
            headers["Content-Type"] = "application/json"
            return Call("chat", "POST", "/v1/chat", headers, body, customer)
        if draw < 0.80:
            return Call(
                "search", "GET", f"/v1/search?q=q{rng.randint(0, 99)}", headers, None, customer
            )
        if draw < 0.90:
            words = rng.randint(5, 40)
            return Call("stream", "GET", f"/v1/stream?words={words}", headers, None, customer)
        if draw < 0.95:
            return Call("health", "GET", "/health", {})
        return Call("no-key", "GET", "/v1/search?q=x", {})  # 401: not billed

    def bills(self, call: Call, status: int, body: bytes) -> tuple[Bill, ...]:
        if call.customer is None or not 200 <= status < 300:
            return ()
        c = call.customer
        if call.kind == "chat":
            return ((c, "api_calls", 1), (c, "tokens", int(json.loads(body)["tokens"])))
        if call.kind == "stream":
            return ((c, "api_calls", 1), (c, "stream_bytes", len(body)))
        return ((c, "api_calls", 1),)


# -- Django --------------------------------------------------------------------------------------


class DjangoApp(AppSpec):
    """``examples/django_app`` (fluxdemo) under uvicorn (ASGI, ``with_lifespan``).

    Two organisations are seeded, each with a user and a bearer token; the customer is the
    organisation (``user:profile.organisation.external_id``)."""

    name = "django"
    example = EXAMPLES / "django_app"
    meters = ("api_calls", "reports", "export_bytes")
    customers = {"chaos-token-alice": "dj_acme", "chaos-token-bob": "dj_globex"}
    _users = {"chaos-token-alice": "alice", "chaos-token-bob": "bob"}
    kind_meters = {
        "forecast": ("api_calls",),
        "reports": ("api_calls",),
        "report": ("reports",),
        "search": ("api_calls",),
        "export": ("api_calls", "export_bytes"),
    }
    _template: Path | None = None

    @property
    def cwd(self) -> Path:
        return self.example

    def _example_env(self, billing: Billing, db: Path) -> dict[str, str]:
        return {
            **base_env(),
            "FLUXDEMO_DB": str(db),
            "FLUXRATE_BASE_URL": billing.url,
            "FLUXRATE_METER_API_CALLS": billing.token("api_calls"),
            "FLUXRATE_METER_REPORTS": billing.token("reports"),
            "FLUXRATE_METER_EXPORT_BYTES": billing.token("export_bytes"),
            "PYTHONPATH": os.pathsep.join([str(self.example), str(REPO), str(BENCH)]),
        }

    def prepare(self, workdir: Path, billing: Billing) -> None:
        template = workdir / "fluxdemo-template.sqlite3"
        if template.exists():  # migrated and seeded by an earlier run (any Django spec)
            self._template = template
            return
        partial = workdir / "fluxdemo-template.partial.sqlite3"
        partial.unlink(missing_ok=True)
        env = {
            **self._example_env(billing, partial),
            "DJANGO_SETTINGS_MODULE": "fluxdemo.settings",
            "FLUXRATE_API_KEY": billing.api_key,
        }
        commands = [["migrate", "--verbosity", "0"]]
        for token, org in self.customers.items():
            commands.append(["seed_demo", "--org", org, "--user", self._users[token]])
            commands[-1] += ["--token", token]
        for args in commands:
            result = subprocess.run(
                [sys.executable, "manage.py", *args],
                cwd=self.example,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if result.returncode != 0:
                raise RuntimeError(f"manage.py {' '.join(args)}:\n{result.stderr}")
        partial.rename(template)
        self._template = template

    def env(self, billing: Billing, config: Path, api_key: str, run_dir: Path) -> dict[str, str]:
        assert self._template is not None, "prepare() first"
        db = run_dir / "fluxdemo.sqlite3"
        if not db.exists():
            shutil.copyfile(self._template, db)
        return {
            **self._example_env(billing, db),
            "DJANGO_SETTINGS_MODULE": "_chaos.django_settings",
            "CHAOS_FLUXRATE_CONFIG": str(config),
            "FLUXRATE_API_KEY": api_key,
        }

    def command(self, fd: int, port: int) -> list[str]:
        return self.uvicorn("fluxdemo.asgi:application", fd)

    def next_call(self, rng: random.Random, state: dict[str, Any]) -> Call:
        token = rng.choice(list(self.customers))
        customer = self.customers[token]
        headers = {"Authorization": f"Bearer {token}"}
        draw = rng.random()
        if draw < 0.33:
            city = rng.choice(["paris", "lagos", "lima"])
            return Call("forecast", "GET", f"/api/forecast?city={city}", headers, None, customer)
        if draw < 0.53:
            return Call("reports", "GET", "/api/reports/", headers, None, customer)
        if draw < 0.68:
            post = {**headers, "Content-Type": "application/json"}
            body = _json({"kind": "weekly"})
            return Call("report", "POST", "/api/reports/", post, body, customer)
        if draw < 0.88:
            return Call("search", "GET", "/api/search?q=li", headers, None, customer)
        if draw < 0.90:
            return Call("export", "GET", "/api/exports/2024.csv", headers, None, customer)
        if draw < 0.94:
            return Call("nowhere", "GET", "/api/forecast?city=nowhere", headers, None, customer)
        if draw < 0.97:
            return Call("health", "GET", "/health", {})
        return Call("no-token", "GET", "/api/forecast?city=lima", {})  # 401: not billed

    def bills(self, call: Call, status: int, body: bytes) -> tuple[Bill, ...]:
        if call.customer is None or not 200 <= status < 300:
            return ()
        c = call.customer
        if call.kind == "report":
            return ((c, "reports", 1),)
        if call.kind == "export":
            return ((c, "api_calls", 1), (c, "export_bytes", len(body)))
        return ((c, "api_calls", 1),)


class DjangoWsgiApp(DjangoApp):
    """The same Django project under gunicorn (WSGI, ``--preload``, 2 sync workers)."""

    name = "django-wsgi"
    client_processes = 2
    preload = True

    def command(self, fd: int, port: int) -> list[str]:
        return self.gunicorn("fluxdemo.wsgi:application", fd)


class DjangoRunserverApp(DjangoApp):
    """The same Django project under ``manage.py runserver --noreload`` (the development
    server; it binds its port itself)."""

    name = "django-runserver"
    binds_itself = True

    def command(self, fd: int, port: int) -> list[str]:
        return [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]


# -- Flask ---------------------------------------------------------------------------------------


class FlaskApp(AppSpec):
    """``examples/flask_app`` (Acme API) under gunicorn ``--preload`` with 2 sync workers.

    ``/v1/items`` calls bill 1 ``api_calls`` (``PUT`` 5), chat completions 1 ``api_calls`` +
    the ``tokens`` produced (also when streamed). Items live in each worker's memory, so a
    ``PUT`` that reaches the other worker answers 404 and bills nothing: the record follows
    the answers."""

    name = "flask"
    example = EXAMPLES / "flask_app"
    health = "/healthz"
    meters = ("api_calls", "tokens")
    customers = {"tok_alice": "cus_alice", "tok_bob": "cus_bob"}
    client_processes = 2
    preload = True
    kind_meters = {
        "list": ("api_calls",),
        "create": ("api_calls",),
        "update": ("api_calls",),
        "delete": ("api_calls",),
        "chat": ("api_calls", "tokens"),
        "stream": ("api_calls", "tokens"),
    }

    def env(self, billing: Billing, config: Path, api_key: str, run_dir: Path) -> dict[str, str]:
        return {
            **base_env(),
            "FLUXRATE_CONFIG": str(config),
            "FLUXRATE_API_KEY": api_key,
            "FLUXRATE_BASE_URL": billing.url,
            "ACME_METER_API_CALLS": billing.token("api_calls"),
            "ACME_METER_TOKENS": billing.token("tokens"),
            "PYTHONPATH": os.pathsep.join([str(self.example), str(REPO)]),
        }

    def command(self, fd: int, port: int) -> list[str]:
        return self.gunicorn("acme_api:create_app()", fd)

    def next_call(self, rng: random.Random, state: dict[str, Any]) -> Call:
        token = rng.choice(list(self.customers))
        customer = self.customers[token]
        headers = {"Authorization": f"Bearer {token}"}
        json_headers = {**headers, "Content-Type": "application/json"}
        draw = rng.random()
        ids: list[int] = state.setdefault(customer, [])
        if draw < 0.28:
            return Call("list", "GET", "/v1/items", headers, None, customer)
        if draw < 0.46:
            body = _json({"name": f"item-{rng.randint(0, 999)}"})
            return Call("create", "POST", "/v1/items", json_headers, body, customer)
        if draw < 0.58 and ids:
            item = rng.choice(ids)
            body = _json({"name": "renamed"})
            return Call("update", "PUT", f"/v1/items/{item}", json_headers, body, customer)
        if draw < 0.62 and ids:
            item = ids.pop(rng.randrange(len(ids)))
            return Call("delete", "DELETE", f"/v1/items/{item}", headers, None, customer)
        if draw < 0.82:
            words = " ".join("w" for _ in range(rng.randint(1, 6)))
            body = _json({"prompt": words})
            return Call("chat", "POST", "/v1/chat/completions", json_headers, body, customer)
        if draw < 0.94:
            words = " ".join("s" for _ in range(rng.randint(1, 6)))
            body = _json({"prompt": words, "stream": True})
            return Call("stream", "POST", "/v1/chat/completions", json_headers, body, customer)
        if draw < 0.97:
            return Call("health", "GET", "/healthz", {})
        return Call("no-token", "GET", "/v1/items", {})  # 401: not billed

    def seen(self, call: Call, status: int, body: bytes, state: dict[str, Any]) -> None:
        if call.kind == "create" and status == 201 and call.customer is not None:
            state.setdefault(call.customer, []).append(int(json.loads(body)["id"]))

    def bills(self, call: Call, status: int, body: bytes) -> tuple[Bill, ...]:
        if call.customer is None or not 200 <= status < 300:
            return ()
        c = call.customer
        if call.kind == "update":
            return ((c, "api_calls", 5),)
        if call.kind == "chat":
            return ((c, "api_calls", 1), (c, "tokens", int(json.loads(body)["usage"]["tokens"])))
        if call.kind == "stream":
            text = body.decode()
            tokens = sum(1 for line in text.splitlines() if line.startswith("data: "))
            return ((c, "api_calls", 1), (c, "tokens", tokens - ("data: [DONE]" in text)))
        return ((c, "api_calls", 1),)


APPS: dict[str, type[AppSpec]] = {
    "fastapi": FastAPIApp,
    "django": DjangoApp,
    "django-wsgi": DjangoWsgiApp,
    "django-runserver": DjangoRunserverApp,
    "flask": FlaskApp,
}


# -- a running app -------------------------------------------------------------------------------


@dataclass
class RunningApp:
    """An app server in its own process group, on a socket bound here.

    ``settings`` are the chaos keys added to the example's ``fluxrate.yaml``; ``api_key``
    replaces the devserver's key (the wrong-key scenario). ``keep_socket``: keep the listening
    socket open here too, so :meth:`restart` serves the same port (requests wait in the
    backlog meanwhile); otherwise it is closed once the server has it, and connections are
    refused as soon as the server stops listening."""

    spec: AppSpec
    billing: Billing
    run_dir: Path
    settings: Mapping[str, object] = field(default_factory=dict)
    api_key: str | None = None
    keep_socket: bool = False
    process: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    port: int = 0
    starts: int = 0
    _log: IO[bytes] | None = None

    @property
    def failure_log(self) -> Path:
        return self.run_dir / "failed-events.jsonl"

    @property
    def spool_dir(self) -> Path:
        return self.run_dir / "spool"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "server.log"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "fluxrate.yaml"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> RunningApp:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = {"failed_events_path": str(self.failure_log), **self.settings}
        if settings.get("durability") in ("spool", "strict") and "spool_path" not in settings:
            settings["spool_path"] = str(self.spool_dir)
        self.config_path.write_text(self.spec.config_text(settings))
        if self.spec.binds_itself:
            self.port = self.port or free_port()
        elif self.sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(256)
            self.sock = sock
            self.port = sock.getsockname()[1]
        self._spawn()
        return self

    def _spawn(self) -> None:
        fd = -1 if self.sock is None else self.sock.fileno()
        env = self.spec.env(
            self.billing, self.config_path, self.api_key or self.billing.api_key, self.run_dir
        )
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap()
        self._log.write(f"--- start {self.starts + 1} ---\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            self.spec.command(fd, self.port),
            cwd=self.spec.cwd,
            env=env,
            pass_fds=(fd,) if fd >= 0 else (),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: workers are signalled with it
        )
        self.starts += 1
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        if not self.keep_socket and self.sock is not None:
            self.sock.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._exited():
                raise RuntimeError(f"{self.spec.name} exited:\n{self.log_text()[-4000:]}")
            try:
                status = self.get(self.spec.health, timeout=2)
                if status == 200:
                    if self.spec.client_processes > 1:
                        self._wait_workers(deadline)
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.spec.name} did not answer:\n{self.log_text()[-4000:]}")

    def _wait_workers(self, deadline: float) -> None:
        while time.monotonic() < deadline and self.pid is not None:
            if len(descendants(self.pid)) > self.spec.client_processes:
                return
            time.sleep(0.05)

    def get(self, path: str, headers: Mapping[str, str] | None = None, timeout: float = 10) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=dict(headers or {}))
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def get_json(self, path: str, headers: Mapping[str, str]) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers=dict(headers))
            response = conn.getresponse()
            return json.loads(response.read())
        finally:
            conn.close()

    def client_stats(self) -> dict[str, int] | None:
        """The delivery counters, where the example exposes them (FastAPI ``/admin/stats``)."""
        if not isinstance(self.spec, FastAPIApp):
            return None
        try:
            stats: dict[str, int] = self.get_json(
                "/admin/stats", {"X-Admin-Token": self.spec.admin_token}
            )
            return stats
        except (OSError, ValueError):
            return None

    # -- signals -----------------------------------------------------------------------------
    #
    # The server is only reaped (``Popen.wait``) after its process group was cleaned up: while
    # the leader is unreaped its pid, hence the group id, cannot be reused by another process.

    def _exited(self) -> bool:
        """True once the server exited (not reaped yet)."""
        if self.process is None or self.process.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    @property
    def running(self) -> bool:
        return not self._exited()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server process (the master, for gunicorn)."""
        if self.process is not None and not self._exited():
            os.kill(self.process.pid, signum)

    def wait_exit(self, timeout: float) -> float | None:
        """Seconds until the server exited, or ``None`` if it still runs after ``timeout``."""
        began = time.monotonic()
        while not self._exited():
            if time.monotonic() - began > timeout:
                return None
            time.sleep(0.01)
        return time.monotonic() - began

    def _kill_group(self) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _reap(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self._kill_group()  # what is left of the group (a worker that outlived its master)
            self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL to the whole process group (master and workers), no goodbye."""
        self._kill_group()
        self._reap()

    def restart(self) -> None:
        """Start the server again on the same socket (``keep_socket=True``)."""
        if not self._exited():
            raise RuntimeError("still running")
        self._reap()
        if not self.spec.binds_itself and (self.sock is None or self.sock.fileno() < 0):
            raise RuntimeError("restart() needs keep_socket=True")
        self._spawn()

    def stop(self, timeout: float = 40.0) -> float | None:
        """SIGTERM (graceful: the app flushes), SIGKILL to the group after ``timeout``.
        Returns the seconds the graceful stop took, ``None`` if it had to be killed."""
        took: float | None = 0.0
        if self.process is not None and not self._exited():
            self.process.send_signal(signal.SIGTERM)
            took = self.wait_exit(timeout)
        self._reap()
        return took

    def close(self) -> None:
        """Stop (if needed) and release the socket."""
        self.stop()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> RunningApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
