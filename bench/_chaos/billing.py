"""The billing side: one devserver on a fixed loopback port with a SQLite ledger file, so it
can be stopped (connections refused) and started again (same URL, same keys, same meter tokens,
same ledger and idempotency keys)."""

from __future__ import annotations

import socket
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from fluxrate_web.devserver import DevServer

# every meter of the three example apps, all SUM
METERS = ("api_calls", "tokens", "stream_bytes", "reports", "export_bytes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Billing:
    """A restartable :class:`DevServer` (``--db`` file, fixed ``--port``)."""

    def __init__(self, workdir: Path, *, fault_seed: int = 12) -> None:
        self.workdir = workdir
        self.db = workdir / "ledger.sqlite3"
        self.port = free_port()
        self.fault_seed = fault_seed
        self.server: DevServer | None = None
        self._tokens: dict[str, str] = {}
        self._api_key = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Billing:
        if self.server is not None:
            return self
        server = DevServer(
            meters={name: "SUM" for name in METERS},
            db=self.db,
            fault_seed=self.fault_seed,
            extra_args=["--port", str(self.port)],
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                server.start()
                break
            except Exception:  # the port may still be held for a moment after a stop
                server.stop()
                if time.monotonic() > deadline:
                    raise
                server = DevServer(
                    meters={name: "SUM" for name in METERS},
                    db=self.db,
                    fault_seed=self.fault_seed,
                    extra_args=["--port", str(self.port)],
                )
                time.sleep(0.2)
        self.server = server
        self._tokens = {name: server.meter_token(name) for name in METERS}
        self._api_key = server.api_key
        return self

    def stop(self) -> None:
        """SIGTERM: the devserver commits its write-behind batch and exits."""
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def restart(self, down_seconds: float = 0.0) -> float:
        """Stop, stay down ``down_seconds``, start again; returns the time it was down."""
        began = time.monotonic()
        self.stop()
        time.sleep(max(0.0, down_seconds - (time.monotonic() - began)))
        self.start()
        return time.monotonic() - began

    def __enter__(self) -> Billing:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the apps need ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return self._api_key

    def token(self, meter: str) -> str:
        return self._tokens[meter]

    def meter_of_token(self) -> dict[str, str]:
        return {token: name for name, token in self._tokens.items()}

    @property
    def live(self) -> DevServer:
        if self.server is None:
            raise RuntimeError("the devserver is down")
        return self.server

    # -- admin -------------------------------------------------------------------------------

    def reset(self) -> None:
        self.live.reset()

    def set_faults(self, **faults: Any) -> None:
        self.live.set_faults(**faults)

    def clear_faults(self) -> None:
        self.live.clear_faults()

    def stats(self) -> dict[str, Any]:
        return self.live.stats()

    def stored(self) -> int:
        return int(self.stats()["events"])

    def events(self) -> list[dict[str, Any]]:
        return self.live.events()

    def ledger(self) -> dict[tuple[str, str], tuple[int, Decimal]]:
        """``{(customer, meter): (events, total quantity)}`` of the stored events."""
        result: dict[tuple[str, str], tuple[int, Decimal]] = {}
        for event in self.events():
            key = (event["customer_external_id"], event["meter"])
            count, total = result.get(key, (0, Decimal(0)))
            result[key] = (count + 1, total + Decimal(str(event["quantity"])))
        return result
