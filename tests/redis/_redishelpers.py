"""Helpers of the scale-out tests: a real ``redis-server`` process, configs, relay commands,
and waiting."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from fluxrate_web.core.config import load_config
from fluxrate_web.devserver import DevServer

REPO = Path(__file__).resolve().parents[2]


def install_redis() -> str | None:
    """``redis-server``'s path, installing Debian's package if needed and possible."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.environ.get("FLUXRATE_NO_INSTALL"):
        return None
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-qq", "redis-server"],
                    ["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "redis-server"]):  # fmt: skip
            subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False)
            found = shutil.which("redis-server")
            if found:
                return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on a loopback port, in its own directory."""

    def __init__(
        self, binary: str, directory: Path, *, port: int | None = None, aof: bool = False
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.directory), "--loglevel", "warning"]  # fmt: skip
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.directory
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as r:
                    if r.ping():
                        return self
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server did not start: {err}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()

    def client(self, **kwargs: Any) -> Any:
        return redis.Redis(port=self.port, decode_responses=True, **kwargs)


def write_config(
    path: Path, server: DevServer, redis_url: str, *, stream: str = "fluxrate:events",
    **extra: Any,
) -> Path:  # fmt: skip
    """A fluxrate.yaml for apps and relays: the devserver's key and URL, the redis transport."""
    import yaml

    data = {
        "api_key": server.api_key,
        "base_url": server.url,
        "transport": "redis",
        "redis_url": redis_url,
        "redis_stream": stream,
        **extra,
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    load_config(path)  # fails early on a bad key
    return path


def relay_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "fluxrate_web", "relay", "--config", str(config), *args]


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class RelayThread:
    """A :class:`~fluxrate_web.relay.Relay` running on a thread of the test process (its own
    event loop); ``stop()`` is what SIGTERM does in ``fluxrate-web relay``."""

    def __init__(self, config: Any, **kwargs: Any) -> None:
        import threading

        from fluxrate_web.relay import Relay

        kwargs.setdefault("client_options", {"backoff_base": 0.005, "backoff_max": 0.05})
        kwargs.setdefault("block", 0.2)
        self.relay = Relay(config, **kwargs)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-relay", daemon=True)

    def _run(self) -> None:
        import asyncio

        try:
            asyncio.run(self.relay.run())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def start(self) -> RelayThread:
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.relay.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the relay did not stop"
        if self.error is not None:
            raise self.error

    def __enter__(self) -> RelayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
