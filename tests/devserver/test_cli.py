"""Start-up: flags, seed files, --db persistence, the banner, module isolation, one send."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fluxrate_web.cli import main
from fluxrate_web.devserver import DevServer, DevServerError
from fluxrate_web.devserver.models import DEFAULT_API_KEY

from .conftest import TRACK

SEED = """
organizations:
  - name: default
    api_keys:
      - org_live_seeded_writer
      - {key: org_live_seeded_reader, scopes: [usage.read]}
    meters:
      calls: SUM
      seats: UNIQUE_COUNT
    customers: [acme]
  - name: umbrella
    api_keys: [org_live_umbrella]
    meters:
      - {name: calls, aggregation: MAX, token: 11111111-2222-3333-4444-555555555555}
"""


def body(server: DevServer, meter: str = "calls", org: str = "default") -> dict[str, object]:
    return {
        "meter_token": server.meter_token(meter, org=org),
        "customer_external_id": "acme",
        "quantity": 2,
    }


def test_seed_file_with_two_organizations(tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED)
    with DevServer(meters={}, extra_args=["--seed", str(seed)]) as server:
        assert server.api_key == "org_live_seeded_writer"
        assert server.meter_token("calls", org="umbrella") == (
            "11111111-2222-3333-4444-555555555555"
        )
        state = server.request("GET", "/_dev/state")
        assert [o["name"] for o in state["organizations"]] == ["default", "umbrella"]
        with httpx.Client(base_url=server.url) as http:
            ok = http.post(TRACK, json=body(server), headers={"X-API-Key": server.api_key})
            assert ok.status_code == 201
            umbrella = http.post(
                TRACK,
                json=body(server, org="umbrella"),
                headers={"X-API-Key": "org_live_umbrella"},
            )
            assert umbrella.status_code == 201
            reader = http.post(
                TRACK, json=body(server), headers={"X-API-Key": "org_live_seeded_reader"}
            )
            assert reader.status_code == 403
        assert server.summary() == {"acme": {"calls": 2}}
        assert server.summary(org="umbrella") == {"acme": {"calls": 2}}


def test_ids_and_tokens_are_stable_across_restarts() -> None:
    with DevServer(meters={"api_calls": "SUM"}) as one:
        first = (one.meter_token("api_calls"), one.meter_id("api_calls"), one.api_key)
    with DevServer(meters={"api_calls": "SUM"}) as two:
        assert (two.meter_token("api_calls"), two.meter_id("api_calls"), two.api_key) == first
    assert first[2] == DEFAULT_API_KEY


def test_db_file_keeps_events_and_idempotency_keys(tmp_path: Path) -> None:
    db = tmp_path / "devserver.sqlite3"
    event = {**{"idempotency_key": "persisted"}, "customer_external_id": "acme", "quantity": 4}
    with DevServer(meters={"api_calls": "SUM"}, db=db) as server, httpx.Client() as http:
        headers = {"X-API-Key": server.api_key}
        event["meter_token"] = server.meter_token("api_calls")
        first = http.post(server.url + TRACK, json=event, headers=headers)
        assert first.status_code == 201
    assert db.exists()
    with DevServer(meters={"api_calls": "SUM"}, db=db) as server, httpx.Client() as http:
        assert server.summary() == {"acme": {"api_calls": 4}}
        again = http.post(server.url + TRACK, json=event, headers={"X-API-Key": server.api_key})
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize(
    "args",
    [
        ["--meter", "calls:COUNT"],
        ["--meter", "calls"],
        ["--fault", "error_rate=2"],
        ["--fault", "error_rate"],
        ["--fault", "nonsense=1"],
        ["--api-key", ":usage.write"],
        ["--seed", "/nonexistent/seed.yaml"],
    ],
)
def test_bad_flags_exit_2_before_serving(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["devserver", "--port", "0", *args]) == 2
    assert "fluxrate-web devserver:" in capsys.readouterr().err


def test_busy_port_fails_cleanly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = DevServer(extra_args=["--port", str(port)])
        with pytest.raises(DevServerError, match="exited with 1"):
            server.start()
        assert not server.running


def test_text_banner_prints_key_and_tokens() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluxrate_web.devserver", "--port", "0", "--meter", "calls:SUM"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    text = "".join(lines)
    assert "Fluxrate devserver on http://127.0.0.1:" in text
    assert f"X-API-Key: {DEFAULT_API_KEY}" in text
    assert "meter calls" in text
    assert "meter_token=" in text


def test_devserver_never_imports_the_client_core() -> None:
    code = (
        "import sys\n"
        "import fluxrate_web.devserver.server, fluxrate_web.devserver.cli\n"
        "import fluxrate_web.devserver.token_cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('fluxrate_web.core')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.replace("'", '"')) == []


def test_a_response_is_written_in_one_send(devserver: DevServer) -> None:
    """Head and body arrive together: one recv() gets the whole response."""
    payload = json.dumps(
        {"meter_token": "unknown", "customer_external_id": "acme", "quantity": 1}
    ).encode()
    request = (
        f"POST {TRACK} HTTP/1.1\r\nHost: x\r\nX-API-Key: {devserver.api_key}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with socket.create_connection((devserver.host, devserver.port), timeout=5) as sock:
        for _ in range(3):  # keep-alive: the same connection each time
            sock.sendall(request)
            data = sock.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 404")
            assert rest == b'{"detail":"Meter not found"}'


def test_a_forgotten_devserver_is_killed_when_collected() -> None:
    server = DevServer(meters={"api_calls": "SUM"}).start()
    pid = server.pid
    assert pid is not None
    del server
    gc.collect()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
