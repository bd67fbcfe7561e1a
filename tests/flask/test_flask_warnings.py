"""The extension adds no warnings: many Flask projects run their tests with ``-W error``.

In process (this suite already turns warnings into errors; here every warning is also recorded,
ResourceWarnings of collected sockets included) and in a subprocess started with
``python -W error -X dev``, with the real client delivering to the devserver.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

from flask import Flask, Response

from fluxrate_web.devserver import DevServer
from fluxrate_web.flask import Fluxrate, meter, record

REPO = Path(__file__).resolve().parents[2]


def build(server: DevServer) -> tuple[Flask, Fluxrate]:
    fluxrate = Fluxrate(
        api_key=server.api_key,
        base_url=server.url,
        meters={"api_calls": server.meter_token("api_calls")},
        customer="header:X-Customer-Id",
    )
    app = Flask("warnings_app")
    fluxrate.init_app(app)

    @app.get("/one")
    @meter("api_calls")
    def one() -> str:
        return "one"

    @app.get("/stream")
    @meter("api_calls")
    def stream() -> Response:
        def body() -> object:
            yield b"a"
            record("api_calls", 2)
            yield b"b"

        return Response(body())  # type: ignore[arg-type]

    @app.get("/async")
    @meter("api_calls")
    async def run_async() -> str:
        return "async"

    return app, fluxrate


def test_no_warnings_in_process(fluxrate_server: DevServer) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app, fluxrate = build(fluxrate_server)
        client = app.test_client()
        headers = {"X-Customer-Id": "cus_w"}
        client.get("/one", headers=headers)  # never closed
        assert client.get("/stream", headers=headers).data == b"ab"
        client.get("/stream", headers=headers)  # a stream never read, never closed
        client.get("/async", headers=headers)
        assert fluxrate.flush(10, app=app)
        fluxrate.state(app).metering.close(5)
        del client
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert fluxrate_server.summary() == {"cus_w": {"api_calls": 5.0}}


SCRIPT = """
import sys
from flask import Flask, Response
from fluxrate_web.flask import Fluxrate, meter, record

url, key, token = sys.argv[1:4]
fluxrate = Fluxrate(api_key=key, base_url=url, meters={"api_calls": token},
                    customer="header:X-Customer-Id")


def create_app():
    app = Flask("w")
    fluxrate.init_app(app)

    @app.get("/one")
    @meter("api_calls")
    def one():
        return {"ok": True}

    @app.get("/stream")
    @meter("api_calls")
    def stream():
        def body():
            yield "a"
            record("api_calls", 2)
            yield "b"
        return Response(body())

    @app.get("/async")
    @meter("api_calls")
    async def run_async():
        return "async"

    return app


app = create_app()
client = app.test_client()
headers = {"X-Customer-Id": "cus_sub"}
for _ in range(3):
    client.get("/one", headers=headers)
assert client.get("/stream", headers=headers).data == b"ab"
client.get("/stream", headers=headers)
client.get("/async", headers=headers)
print("requests done", flush=True)
# no flush, no close: the core's exit hook delivers what is queued
"""


def test_no_warnings_with_w_error_in_a_subprocess(
    fluxrate_server: DevServer, tmp_path: Path
) -> None:
    script = tmp_path / "w_error_app.py"
    script.write_text(textwrap.dedent(SCRIPT))
    server = fluxrate_server
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-X",
            "dev",
            str(script),
            server.url,
            server.api_key,
            server.meter_token("api_calls"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "requests done" in result.stdout
    assert "Warning" not in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    assert result.stderr == ""
    assert server.summary() == {"cus_sub": {"api_calls": 7.0}}
