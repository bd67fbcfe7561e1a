"""The API key (and the access token) never shows: logs, reprs, exceptions, failure log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from _corehelpers import scripted_server

from fluxrate_web.core import FluxrateClient, FluxrateError, UsageEvent
from fluxrate_web.core._log import reset_limits
from fluxrate_web.devserver import DevServer

KEY = "org_live_SECRETSECRETSECRET_0042"
TOKEN = "eyJhbGciOi.SECRET_JWT_PAYLOAD.sig"


@pytest.fixture(autouse=True)
def _fresh_limits() -> None:
    reset_limits()


def test_the_key_appears_nowhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fluxrate_server: DevServer
) -> None:
    failed = tmp_path / "failed.jsonl"
    texts: list[str] = []

    def echo_key(request: object) -> tuple[int, dict[str, str], bytes]:
        # a hostile or buggy server that echoes the credentials back
        body = json.dumps({"detail": f"bad key {KEY} / token {TOKEN}"}).encode()
        return 401, {"x-echo": KEY}, body

    caplog.set_level(logging.DEBUG)
    with scripted_server(script=echo_key) as server:
        client = FluxrateClient(
            KEY,
            server.url,
            access_token=TOKEN,
            failed_events_path=failed,
            max_attempts=2,
            backoff_base=0.01,
            backoff_max=0.02,
        )
        texts += [repr(client), str(client.stats), repr(client.stats)]
        for i in range(5):
            client.track("mt", f"c{i}")
        client.enqueue(UsageEvent.rest("m", "c"))
        assert client.flush(10)
        with pytest.raises(FluxrateError) as info:
            client.send(UsageEvent.create("mt", "c"))
        texts += [str(info.value), repr(info.value), str(getattr(info.value, "detail", ""))]
        client.close()
    # a real 401 and a refused connection too
    wrong = FluxrateClient(KEY, fluxrate_server.url, failed_events_path=failed)
    with pytest.raises(FluxrateError) as info:
        wrong.send(UsageEvent.create(fluxrate_server.meter_token("api_calls"), "c"))
    texts += [str(info.value), repr(wrong)]
    wrong.track("mt", "c")
    wrong.close()
    nowhere = FluxrateClient(
        KEY,
        f"http://127.0.0.1:{server.port}",
        failed_events_path=failed,
        max_attempts=1,
        request_timeout=1,
    )
    with pytest.raises(FluxrateError) as info:
        nowhere.send(UsageEvent.create("mt", "c"))
    texts.append(str(info.value))
    nowhere.track("mt", "c")
    nowhere.close()

    log_lines = [r.getMessage() for r in caplog.records]
    log_lines += [caplog.text]
    failure_log = failed.read_text()
    assert len(failure_log.splitlines()) == 8
    assert '"reason":"rejected"' in failure_log  # the echoing server's 401s were logged
    for text in [*texts, *log_lines, failure_log]:
        assert KEY not in text
        assert TOKEN not in text
    assert "***" in failure_log


def test_bad_key_characters_do_not_leak() -> None:
    with pytest.raises(FluxrateError) as info:
        FluxrateClient("org_live_abc\r\ndef", "http://127.0.0.1:1")
    assert "abc" not in str(info.value)
