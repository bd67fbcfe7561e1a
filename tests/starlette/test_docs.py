"""The quickstarts of docs/starlette.md and docs/fastapi.md, followed word for word.

For each page: the devserver is started with the meters of the page's ``fluxrate-web
devserver`` command; the files the page writes (``<!-- file: NAME -->`` before a code block)
are written to a fresh directory; ``fluxrate-web check`` runs if the page runs it; the app is
served by ``uvicorn`` (a subprocess, as the page says) with the page's environment variables;
the page's ``curl`` calls are made; the devserver must have billed what the page says; the
page's test file passes under ``pytest``; and every other Python block of the page runs.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fluxrate_web.devserver import DevServer

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(
    r"(?:<!-- file: (?P<file>[\w./-]+) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S
)
BIN = Path(sys.executable).parent

# page -> (the module uvicorn serves, what the devserver must hold after the curl calls)
PAGES: dict[str, tuple[str, dict[str, dict[str, float]]]] = {
    "starlette.md": ("app", {"acme": {"api_calls": 1}}),
    "fastapi.md": ("main", {"acme": {"api_calls": 2, "tokens": 5}}),
}


def blocks(page: str) -> list[tuple[str | None, str, str]]:
    text = (DOCS / page).read_text()
    return [(m["file"], m["lang"], m["code"]) for m in BLOCK.finditer(text)]


def shell_commands(code: str) -> list[list[str]]:
    lines = code.replace("\\\n", " ").splitlines()
    return [argv for line in lines if (argv := shlex.split(line, comments=True))]


def devserver_meters(page_blocks: list[tuple[str | None, str, str]]) -> dict[str, str]:
    for _file, lang, code in page_blocks:
        for argv in shell_commands(code) if lang == "bash" else []:
            if argv[:2] == ["fluxrate-web", "devserver"]:
                flags = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--meter"]
                return {f.split(":")[0]: ":".join(f.split(":")[1:]) for f in flags}
    raise AssertionError("the page starts no devserver")


def curl(argv: list[str], port: int) -> httpx.Response:
    headers: dict[str, str] = {}
    data = None
    url = ""
    args = iter(argv[1:])
    for arg in args:
        if arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(args)
        elif not arg.startswith("-"):
            url = arg
    url = url.replace(":8000", f":{port}")
    method = "POST" if data is not None else "GET"
    return httpx.request(method, url, headers=headers, content=data, timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("page", sorted(PAGES))
def test_quickstart_word_for_word(page: str, tmp_path: Path) -> None:
    module, expected = PAGES[page]
    page_blocks = blocks(page)
    meters = devserver_meters(page_blocks)
    with DevServer(meters=meters) as server:
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        env.pop("FLUXRATE_CONFIG", None)
        for file, _lang, code in page_blocks:
            if file is not None:
                (tmp_path / file).write_text(code)
        commands = [argv for _f, lang, code in page_blocks if lang == "bash"
                    for argv in shell_commands(code)]  # fmt: skip
        for argv in commands:
            if argv[0] == "export":
                name, _, value = argv[1].partition("=")
                env[name] = value
        env["FLUXRATE_BASE_URL"] = server.url  # the page's devserver, on its test port
        assert env["FLUXRATE_API_KEY"] == server.api_key
        for argv in commands:
            if argv[:2] == ["fluxrate-web", "check"]:
                done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
                assert done.returncode == 0, done.stdout + done.stderr
        port = free_port()
        uvicorn = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port),
             "--log-level", "warning"],
            cwd=tmp_path, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except httpx.HTTPError:
                    assert uvicorn.poll() is None, "uvicorn exited"
                    assert time.monotonic() < deadline, "uvicorn did not start"
                    time.sleep(0.1)
            for argv in commands:
                if argv[0] == "curl":
                    assert curl(argv, port).status_code in (200, 422)
        finally:
            uvicorn.send_signal(signal.SIGINT)  # lifespan shutdown: the client flushes
            assert uvicorn.wait(timeout=20) == 0
        assert server.summary() == expected

        tests = [file for file, _l, _c in page_blocks if file and file.startswith("test_")]
        assert tests
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_other_python_block_runs(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other snippets run in the quickstart's directory (its fluxrate.yaml), each with a
    fresh ``app`` of the page's framework when it uses one without defining it."""
    from fastapi import FastAPI
    from starlette.applications import Starlette

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLUXRATE_CONFIG", raising=False)
    monkeypatch.setenv("FLUXRATE_API_KEY", "org_live_devserver_local_development_key")
    monkeypatch.setenv("FLUXRATE_BASE_URL", "http://127.0.0.1:9")
    page_blocks = blocks(page)
    for file, _lang, code in page_blocks:
        if file is not None:
            (tmp_path / file).write_text(code)
    snippets = [code for file, lang, code in page_blocks if lang == "python" and file is None]
    assert snippets
    framework = FastAPI if page == "fastapi.md" else Starlette
    for code in snippets:
        namespace: dict[str, Any] = {"__name__": f"docs_{page.split('.')[0]}_snippet"}
        if "app =" not in code:
            namespace["app"] = framework()
        exec(compile(code, f"docs/{page}", "exec"), namespace)
        app = namespace.get("app")
        if isinstance(app, Starlette):
            app.build_middleware_stack()  # builds the middleware: loads and checks the config
        metering = namespace.get("metering")
        if metering is not None:
            metering.close()
