"""``DevServer``: the devserver in a subprocess on a free loopback port, for tests and demos.

Imports only the standard library, so ``tests/conftest.py`` can import it in any
environment; talks to the server's ``/_dev`` admin endpoints with ``http.client``.
"""

from __future__ import annotations

import http.client
import json
import os
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import urlencode

from fluxrate_web.devserver import jwt
from fluxrate_web.devserver.models import DEFAULT_METERS, WRITE_SCOPE

READY_PREFIX = "FLUXRATE_DEVSERVER_READY "


def _terminate(process: subprocess.Popen[str], log: IO[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()
    log.close()


class DevServerError(RuntimeError):
    """The devserver did not start, or an admin call failed."""


class DevServer:
    """Run ``fluxrate-web devserver`` in a subprocess.

    ``meters`` maps name -> aggregation (default: api_calls SUM, peak MAX, seats
    UNIQUE_COUNT, level LAST). ``faults`` is applied at start (same keys as
    :meth:`set_faults`). ``api_keys`` maps key -> scopes (default: one key with both).
    """

    def __init__(
        self,
        meters: Mapping[str, str] | None = None,
        faults: Mapping[str, float] | None = None,
        *,
        api_keys: Mapping[str, Sequence[str]] | None = None,
        customers: Sequence[str] = (),
        strict_customers: bool = False,
        fault_seed: int | None = None,
        db: str | os.PathLike[str] | None = None,
        jwt_secret: str = jwt.DEFAULT_SECRET,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
    ) -> None:
        self.meters_config = dict(DEFAULT_METERS if meters is None else meters)
        self.faults_config = dict(faults or {})
        self.api_keys_config = {k: list(v) for k, v in (api_keys or {}).items()}
        self.customers_config = list(customers)
        self.strict_customers = strict_customers
        self.fault_seed = fault_seed
        self.db = None if db is None else os.fspath(db)
        self.jwt_secret = jwt_secret
        self.host = host
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.info: dict[str, Any] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "fluxrate_web.devserver", "--host", self.host]
        args += ["--port", "0", "--json", "--jwt-secret", self.jwt_secret]
        for name, aggregation in self.meters_config.items():
            args += ["--meter", f"{name}:{aggregation}"]
        for key, scopes in self.api_keys_config.items():
            args += ["--api-key", f"{key}:{','.join(scopes)}"]
        for customer in self.customers_config:
            args += ["--customer", customer]
        if self.strict_customers:
            args.append("--strict-customers")
        if self.faults_config:
            args += ["--fault", ",".join(f"{k}={v}" for k, v in self.faults_config.items())]
        if self.fault_seed is not None:
            args += ["--fault-seed", str(self.fault_seed)]
        if self.db is not None:
            args += ["--db", self.db]
        # FLUXRATE_DEVSERVER_ARGS: extra flags for every DevServer (e.g. "--loop asyncio")
        env_args = shlex.split(os.environ.get("FLUXRATE_DEVSERVER_ARGS", ""))
        return args + env_args + self.extra_args

    def start(self) -> Self:
        if self._process is not None:
            raise DevServerError("already started")
        self._log = tempfile.TemporaryFile(prefix="fluxrate-devserver-")  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        # a DevServer dropped without stop() must not leave an orphan server behind
        self._finalizer = weakref.finalize(self, _terminate, self._process, self._log)
        try:
            self.info = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdout is None:
            raise DevServerError("not started")
        deadline = time.monotonic() + self.startup_timeout
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DevServerError(f"devserver not ready after {self.startup_timeout} s")
                if not selector.select(remaining):
                    continue
                line = process.stdout.readline()
                if line.startswith(READY_PREFIX):
                    info: dict[str, Any] = json.loads(line[len(READY_PREFIX) :])
                    return info
                if not line:
                    process.wait(5)
                    raise DevServerError(
                        f"devserver exited with {process.returncode}:\n{self.log_text()}"
                    )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and close its pipes."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def log_text(self) -> str:
        """What the server wrote to stderr so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    # -- what it was started with -------------------------------------------------------------

    def _org(self, org: str = "default") -> dict[str, Any]:
        for item in self.info.get("organizations", []):
            if item["name"] == org:
                found: dict[str, Any] = item
                return found
        raise KeyError(f"no organization {org!r}")

    @property
    def url(self) -> str:
        url: str = self.info["url"]
        return url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def api_key(self) -> str:
        """An ``org_live_...`` key with ``usage.write`` of the default organisation."""
        for key in self._org()["api_keys"]:
            if WRITE_SCOPE in key["scopes"]:
                value: str = key["key"]
                return value
        raise DevServerError("no API key with usage.write was configured")

    def meter_token(self, meter: str, org: str = "default") -> str:
        token: str = self._org(org)["meters"][meter]["token"]
        return token

    def meter_id(self, meter: str, org: str = "default") -> str:
        mid: str = self._org(org)["meters"][meter]["id"]
        return mid

    def access_token(self, org: str = "default", ttl: float = jwt.DEFAULT_TTL) -> str:
        """A dashboard JWT for ``Cookie: access_token=...`` (``POST /api/v1/usage``)."""
        return jwt.mint(self.jwt_secret, org_id=self._org(org)["id"], ttl=ttl)

    # -- admin calls --------------------------------------------------------------------------

    def request(self, method: str, path: str, body: object = None, *, timeout: float = 10.0) -> Any:
        """A JSON call to the server; raises :class:`DevServerError` on a non-2xx answer."""
        if self._process is None:
            raise DevServerError("not started")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, payload, headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise DevServerError(f"{method} {path}: {response.status} {data[:500]!r}")
        return json.loads(data) if data else None

    def events(
        self, meter: str | None = None, *, customer: str | None = None, org: str = "default"
    ) -> list[dict[str, Any]]:
        """Stored events, oldest first (``quantity`` as the string the API answered)."""
        query: dict[str, str] = {"org": org}
        if meter is not None:
            query["meter"] = meter
        if customer is not None:
            query["customer"] = customer
        result: list[dict[str, Any]] = self.request("GET", f"/_dev/events?{urlencode(query)}")
        return result

    def summary(self, org: str = "default") -> dict[str, dict[str, float]]:
        """``{customer_external_id: {meter_name: billable total}}``."""
        result: dict[str, dict[str, float]] = self.request(
            "GET", f"/_dev/summary?{urlencode({'org': org})}"
        )
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/_dev/stats")
        return result

    def track_requests(self) -> int:
        """``POST /api/v1/sdk/track`` calls received since start/reset (any outcome)."""
        return int(self.stats()["track_requests"])

    def set_faults(
        self,
        error_rate: float = 0.0,
        status: int = 503,
        rate_limit_rate: float = 0.0,
        retry_after: float = 1,
        latency_ms: float = 0,
        drop_rate: float = 0.0,
        outage_seconds: float = 0,
        *,
        stored_drop_rate: float = 0.0,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Replace the fault settings (every omitted one goes back to its default)."""
        body: dict[str, Any] = {
            "error_rate": error_rate,
            "status": status,
            "rate_limit_rate": rate_limit_rate,
            "retry_after": retry_after,
            "latency_ms": latency_ms,
            "drop_rate": drop_rate,
            "outage_seconds": outage_seconds,
            "stored_drop_rate": stored_drop_rate,
        }
        if seed is not None:
            body["seed"] = seed
        result: dict[str, Any] = self.request("POST", "/_dev/faults", body)
        return result

    def clear_faults(self) -> None:
        self.request("DELETE", "/_dev/faults")

    def reset(self) -> None:
        """Forget events, auto-created customers, counters and faults (seeds stay)."""
        self.request("POST", "/_dev/reset")

    def seed(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Add organisations, keys, meters or customers at run time (seed-file format)."""
        state: dict[str, Any] = self.request("POST", "/_dev/seed", dict(data))
        self.info["organizations"] = state["organizations"]
        return state
