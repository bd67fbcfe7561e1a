"""The docs' examples run: the framework quickstarts word for word, against the devserver.

How a page is tested (read this if you write docs):

* Pages: the ``## Quickstart`` section of each framework page (``QUICKSTARTS``), and the whole
  of the pages in ``PAGES``. The pages of ``TESTED_ELSEWHERE`` have tests of their own
  (``configuration.md``, ``testing.md``: ``tests/core/test_docs_configuration.py``;
  ``fastapi.md``, ``starlette.md``: ``tests/starlette/test_docs.py``, under uvicorn).
* Each ```` ```yaml ```` block is loaded with ``fluxrate_web.load_config`` (from a temporary
  file) and, for the Python blocks after it, becomes ``./fluxrate.yaml``. Before a page's first
  YAML block, ``./fluxrate.yaml`` is the one of ``docs/index.md`` (the home page's example).
* The ```` ```python ```` blocks of a page run in order, in one namespace (``__name__`` is
  ``"docs_example"``, so ``if __name__ == "__main__": ...`` does not run), in a subprocess whose
  working directory is a fresh temporary directory, with ``FLUXRATE_API_KEY`` and
  ``FLUXRATE_BASE_URL`` pointing at a devserver started for the page.
* In ```` ```bash ```` / ```` ```console ```` blocks (never run as shell): a
  ``fluxrate-web devserver ... --meter NAME:AGG:TOKEN`` line seeds those meters in the page's
  devserver; ``export NAME=value`` sets an environment variable for the Python blocks (except
  ``FLUXRATE_API_KEY`` / ``FLUXRATE_BASE_URL``, which stay the devserver's); a ``curl`` line
  sends that request, at that point of the page, to the app: the one a ``uvicorn main:app``,
  ``gunicorn 'app:create_app()'`` or ``flask --app app run`` line names (imported, not served),
  else the Python blocks' ``app``, ``create_app()`` or ``application``, else Django's WSGI app
  (``DJANGO_SETTINGS_MODULE``, exported or read from ``manage.py``), in process (WSGI or ASGI,
  no socket); ``django-admin startproject NAME`` and ``cd NAME`` are followed. It must answer
  below 400 (or the status a trailing ``# 422: ...`` comment names), and the customer of its
  ``X-Customer-Id`` header must reach the devserver. Curl calls to the devserver's own port
  (``--port`` of the ``fluxrate-web devserver`` line, or 8787) are the reader's checks: not
  sent. A curl line may also be given hidden, as an HTML comment: ``<!-- docs-test: curl ... -->``.
* ``<!-- docs-test: skip -->`` on the line before a fence skips that block (fragments,
  server-starting snippets). ``<!-- file: NAME -->`` before a fence writes the block to
  ``NAME`` (relative to the working directory) instead of running it, ``<!-- append: NAME -->``
  appends it (e.g. to a generated ``settings.py``).
* ``text``, ``json``, ``toml``, ``ini`` and other languages are never run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fluxrate_web import load_config
from fluxrate_web.devserver import DevServer

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

QUICKSTARTS = ("django.md", "flask.md")
PAGES = (
    "index.md",
    "guarantees.md",
    "metrics.md",
    "security.md",
    "troubleshooting.md",
    "cli.md",
    "core.md",
    "aggregation.md",
    "devserver.md",
    "reliability.md",
)
TESTED_ELSEWHERE = {
    "configuration.md": "tests/core/test_docs_configuration.py",
    "testing.md": "tests/core/test_docs_configuration.py",
    "fastapi.md": "tests/starlette/test_docs.py",
    "starlette.md": "tests/starlette/test_docs.py",
}
# quickstarts that cannot be followed by this collector yet, and why
PENDING: dict[str, str] = {}

# meters every page's devserver has: the example tokens the docs use
DOC_METERS = {
    "api_calls": "SUM:550e8400-e29b-41d4-a716-446655440000",
    "ai_tokens": "SUM:6ba7b810-9dad-11d1-80b4-00c04fd430c8",
}
YAML_ENV = {
    "FLUXRATE_API_KEY": "org_live_docs_example",
    "FLUXRATE_BASE_URL": "http://127.0.0.1:9",
    "FLUXRATE_TOKENS_METER": "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    "HOME": "/home/docs",
}

FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.S | re.M,
)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(?P<what>.*?)\s*-->")
FILE_DIRECTIVE = re.compile(r"<!--\s*(?P<mode>file|append):\s*(?P<name>[\w./-]+)\s*-->")
SHELL = ("bash", "console", "sh", "shell")


@dataclass
class Step:
    kind: str  # python | yaml | file | curl | env
    line: int
    text: str = ""
    name: str = ""
    request: dict[str, Any] = field(default_factory=dict)


@dataclass
class Page:
    name: str
    steps: list[Step]
    meters: dict[str, str]
    devserver_ports: set[int] = field(default_factory=lambda: {8787})


def _directive_before(text: str, start: int) -> str | None:
    """The directive on the last non-blank line before ``start``: ``skip``, ``file=NAME`` or
    ``append=NAME`` (``<!-- file: NAME -->`` and ``<!-- append: NAME -->`` are the same)."""
    before = text[:start].rstrip().rsplit("\n", 1)[-1]
    found = DIRECTIVE.search(before)
    if found:
        return found.group("what")
    found = FILE_DIRECTIVE.search(before)
    return f"{found.group('mode')}={found.group('name')}" if found else None


def parse_curl(command: str) -> dict[str, Any]:
    """``curl [-s] [-X M] [-H 'K: V']... [-d DATA | --json DATA] URL`` -> a request."""
    comment = command.partition(" #")[2]
    expected = re.search(r"\b([1-5]\d\d)\b", comment)
    words = shlex.split(command, comments=True)
    assert words, command
    assert words[0] == "curl", command
    method, headers, body, url = None, [], None, None
    i = 1
    while i < len(words):
        word = words[i]
        if word in ("-X", "--request"):
            method = words[i + 1]
            i += 2
        elif word in ("-H", "--header"):
            key, _, value = words[i + 1].partition(":")
            headers.append([key.strip(), value.strip()])
            i += 2
        elif word in ("-d", "--data", "--data-raw", "--json"):
            body = words[i + 1]
            if word == "--json":
                headers.append(["Content-Type", "application/json"])
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            url = word
            i += 1
    assert url is not None, f"no URL in {command!r}"
    if "://" not in url:
        url = "http://" + url
    rest = url.split("://", 1)[1]
    target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    path, _, query = target.partition("?")
    port = rest.split("/", 1)[0].rpartition(":")[2]
    return {
        "method": method or ("POST" if body is not None else "GET"),
        "path": path,
        "query": query,
        "headers": headers,
        "body": body or "",
        "port": int(port) if port.isdigit() else 80,
        "expect": int(expected.group(1)) if expected else None,
    }


def _shell_steps(
    body: str, line: int, meters: dict[str, str], ports: set[int] | None = None
) -> list[Step]:
    """Steps of a shell block; ``meters`` and ``ports`` collect the devserver's settings."""
    steps: list[Step] = []
    joined = body.replace("\\\n", " ")
    for raw in joined.splitlines():
        command = raw.strip()
        if command.startswith("$ "):
            command = command[2:]
        if command.startswith("fluxrate-web devserver"):
            words = shlex.split(command, comments=True)
            for i, word in enumerate(words):
                if word == "--meter" and i + 1 < len(words):
                    name, _, spec = words[i + 1].partition(":")
                    meters[name] = spec
                elif word == "--port" and i + 1 < len(words) and ports is not None:
                    ports.add(int(words[i + 1]))
        elif command.startswith("django-admin startproject "):
            steps.append(Step("startproject", line, name=shlex.split(command, comments=True)[2]))
        elif command.startswith("cd "):
            steps.append(Step("cd", line, name=shlex.split(command, comments=True)[1]))
        elif command.startswith(("uvicorn ", "gunicorn ", "flask ")):
            target = _served_app(shlex.split(command, comments=True))
            if target:
                steps.append(Step("serve", line, name=target))
        elif command.startswith("export "):
            name, _, value = command[len("export ") :].partition("=")
            if name not in ("FLUXRATE_API_KEY", "FLUXRATE_BASE_URL"):
                steps.append(
                    Step("env", line, text=shlex.split(value)[0] if value else "", name=name)
                )
        elif command.startswith("curl "):
            steps.append(Step("curl", line, text=command, request=parse_curl(command)))
    return steps


def _served_app(words: list[str]) -> str | None:
    """``module:attr`` of ``uvicorn main:app``, ``gunicorn 'app:create_app()'`` or
    ``flask --app app run`` (Flask: the module's ``app`` or ``create_app()``)."""
    if words[0] == "flask":
        if "run" not in words:
            return None
        for i, word in enumerate(words):
            if word == "--app" and i + 1 < len(words):
                return words[i + 1] if ":" in words[i + 1] else words[i + 1] + ":"
            if word.startswith("--app="):
                value = word.split("=", 1)[1]
                return value if ":" in value else value + ":"
        return None
    targets = [w for w in words[1:] if ":" in w and not w.startswith("-") and "=" not in w]
    return targets[0] if targets else None


def quickstart_section(text: str) -> tuple[str, int]:
    """The ``## Quickstart`` section of a page and the line it starts on."""
    found = re.search(r"^## Quickstart\b.*$", text, re.M)
    if found is None:
        raise AssertionError("no '## Quickstart' section")
    end = re.search(r"^## ", text[found.end() :], re.M)
    section = text[found.start() : found.end() + end.start() if end else len(text)]
    return section, text.count("\n", 0, found.start())


def parse_page(name: str) -> Page:
    text = (DOCS / name).read_text(encoding="utf-8")
    offset = 0
    if name in QUICKSTARTS:
        text, offset = quickstart_section(text)
    return parse_text(name, text, offset)


def parse_text(name: str, text: str, offset: int = 0) -> Page:
    """The steps of ``text`` (a page, or a section of it starting on line ``offset + 1``)."""
    meters = dict(DOC_METERS)
    ports = {8787}
    steps: list[Step] = []
    position = 0
    for fence in FENCE.finditer(text):
        # hidden curl directives between the previous fence and this one
        steps += _hidden_curls(text, position, fence.start(), offset)
        position = fence.end()
        line = offset + text.count("\n", 0, fence.start()) + 2  # the first line of the body
        body = textwrap.dedent(fence.group("body"))
        lang = fence.group("lang").lower()
        directive = _directive_before(text, fence.start())
        if directive == "skip":
            continue
        if directive and directive.startswith(("file=", "append=")):
            mode, _, target = directive.partition("=")
            steps.append(Step(mode, line, text=body, name=target))
        elif lang in ("python", "py"):
            steps.append(Step("python", line, text=body))
        elif lang in ("yaml", "yml"):
            steps.append(Step("yaml", line, text=body))
        elif lang in SHELL:
            steps += _shell_steps(body, line, meters, ports)
    steps += _hidden_curls(text, position, len(text), offset)
    # curl calls to the devserver itself (its dashboard, /_dev/summary) are the reader's checks
    steps = [s for s in steps if s.kind != "curl" or s.request["port"] not in ports]
    return Page(name, steps, meters, ports)


def _hidden_curls(text: str, start: int, end: int, offset: int) -> list[Step]:
    steps = []
    for found in DIRECTIVE.finditer(text, start, end):
        what = found.group("what")
        if what.startswith("curl "):
            line = offset + text.count("\n", 0, found.start()) + 1
            steps.append(Step("curl", line, text=what, request=parse_curl(what)))
    return steps


def _pages(names: tuple[str, ...], *, runnable: bool = False) -> list[Any]:
    """The pages that exist (a missing one is a visible skip); with ``runnable``, only those
    with a Python block or a curl line."""
    params = []
    for name in names:
        if not (DOCS / name).exists():
            skip = pytest.mark.skip(reason=f"docs/{name} not written")
            params.append(pytest.param(name, id=name, marks=skip))
        elif not runnable or any(s.kind in ("python", "curl") for s in parse_page(name).steps):
            params.append(pytest.param(name, id=name))
    return params


def _yaml_blocks() -> list[Any]:
    params = []
    for name in (*QUICKSTARTS, *PAGES):
        if not (DOCS / name).exists():
            continue
        for step in parse_page(name).steps:
            if step.kind == "yaml":
                params.append(pytest.param(name, step.line, step.text, id=f"{name}:{step.line}"))
    return params


# --------------------------------------------------------------------------- the runner

RUNNER = r"""
import asyncio, inspect, io, json, os, re, subprocess, sys, warnings, wsgiref.util

warnings.simplefilter("error")  # as the test suite: a doc example must not warn
warnings.filterwarnings("ignore", message=r".*httpx2.*")  # starlette.testclient's own advice
sys.path.insert(0, os.getcwd())
spec = json.loads(sys.stdin.read())
ns = {"__name__": "docs_example"}
factories = {}
results = []


served = []


def serve(target):  # import what `uvicorn main:app` / `flask --app app run` would serve
    import importlib

    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return  # the page showed that module as a Python block, not a file: its namespace
    if not attr:
        attr = "app" if hasattr(module, "app") else "create_app()"
    if attr.endswith(")"):
        name, _, args = attr[:-1].partition("(")
        app = eval(f"_factory({args})", {"_factory": getattr(module, name)})
    else:
        app = getattr(module, attr)
    served.append(app)


def find_app():
    if served:
        return served[-1]
    for name in ("app", "application"):
        if ns.get(name) is not None:
            return ns[name]
    factory = ns.get("create_app")
    if factory is not None:
        if factory not in factories:
            factories[factory] = factory()
        return factories[factory]
    if not os.environ.get("DJANGO_SETTINGS_MODULE") and os.path.exists("manage.py"):
        with open("manage.py", encoding="utf-8") as f:
            found = re.search(r"DJANGO_SETTINGS_MODULE['\"],\s*['\"]([\w.]+)", f.read())
        if found:
            os.environ["DJANGO_SETTINGS_MODULE"] = found.group(1)
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        from django.core.wsgi import get_wsgi_application

        return get_wsgi_application()
    raise AssertionError("a curl line, but the page built no app (app, create_app, application)")


def is_asgi(app):
    call = app if inspect.isfunction(app) else getattr(app, "__call__", None)
    return inspect.iscoroutinefunction(call)


def wsgi(app, req):
    environ = {}
    wsgiref.util.setup_testing_defaults(environ)
    body = req["body"].encode()
    environ.update(REQUEST_METHOD=req["method"], PATH_INFO=req["path"],
                   QUERY_STRING=req["query"], CONTENT_LENGTH=str(len(body)),
                   SERVER_NAME="127.0.0.1", HTTP_HOST="127.0.0.1")
    environ["wsgi.input"] = io.BytesIO(body)
    for key, value in req["headers"]:
        name = key.upper().replace("-", "_")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        else:
            environ["HTTP_" + name] = value
    status = []
    result = app(environ, lambda s, h, e=None: status.append(int(s.split()[0])))
    try:
        for _ in result:
            pass
    finally:
        if hasattr(result, "close"):
            result.close()
    return status[0]


async def asgi(app, req):
    body = req["body"].encode()
    done = asyncio.Event()
    sent = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": req["method"], "scheme": "http", "path": req["path"],
             "raw_path": req["path"].encode(), "query_string": req["query"].encode(),
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in req["headers"]]
                        + [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode())],
             "state": {}}
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


for step in spec["steps"]:
    kind = step["kind"]
    if kind == "yaml":
        with open("fluxrate.yaml", "w", encoding="utf-8") as f:
            f.write(step["text"])
    elif kind in ("file", "append"):
        folder = os.path.dirname(step["name"])
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(step["name"], "w" if kind == "file" else "a", encoding="utf-8") as f:
            f.write(step["text"])
    elif kind == "startproject":
        subprocess.run([sys.executable, "-m", "django", "startproject", step["name"]], check=True)
    elif kind == "serve":
        serve(step["name"])
    elif kind == "cd":
        os.chdir(step["name"])
        sys.path.insert(0, os.getcwd())
    elif kind == "env":
        os.environ[step["name"]] = step["text"]
    elif kind == "python":
        exec(compile(step["text"], f"{spec['page']}:{step['line']}", "exec"), ns)
    elif kind == "curl":
        app = find_app()
        req = step["request"]
        status = asyncio.run(asgi(app, req)) if is_asgi(app) else wsgi(app, req)
        results.append(status)
        expected = req["expect"]
        if (status >= 400) if expected is None else (status != expected):
            raise AssertionError(f"{spec['page']}:{step['line']}: {step['text']} -> {status}")
print("DOCS-RESULT " + json.dumps(results))
"""


def run_page(page: Page, server: DevServer, cwd: Path) -> list[int]:
    home = next(step for step in parse_page("index.md").steps if step.kind == "yaml")
    (cwd / "fluxrate.yaml").write_text(home.text, encoding="utf-8")
    steps = [step.__dict__ for step in page.steps]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FLUXRATE_", "DJANGO_", "PYTEST_"))
    }
    env.update(
        FLUXRATE_API_KEY=server.api_key,
        FLUXRATE_BASE_URL=server.url,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps({"page": f"docs/{page.name}", "steps": steps}),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    last = [line for line in result.stdout.splitlines() if line.startswith("DOCS-RESULT ")]
    if result.returncode != 0 or not last:
        pytest.fail(f"docs/{page.name}: the examples failed:\n{output[-6000:]}", pytrace=False)
    statuses: list[int] = json.loads(last[-1][len("DOCS-RESULT ") :])
    return statuses


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", _pages((*QUICKSTARTS, *PAGES), runnable=True))
def test_page_examples_run_against_the_devserver(name: str, tmp_path: Path) -> None:
    if name in PENDING:
        pytest.xfail(PENDING[name])
    page = parse_page(name)
    with DevServer(meters=page.meters) as server:
        statuses = run_page(page, server, tmp_path)
        curls = [step for step in page.steps if step.kind == "curl"]
        assert len(statuses) == len(curls)
        summary = server.summary()
        for step, status in zip(curls, statuses, strict=True):
            if status >= 400:
                continue
            customers = [v for k, v in step.request["headers"] if k.lower() == "x-customer-id"]
            for customer in customers:
                assert customer in summary, f"docs/{name}:{step.line}: {customer} not billed"
        log = server.log_text()
    assert "Traceback" not in log, log


@pytest.mark.parametrize("name", _pages(QUICKSTARTS))
def test_quickstart_bills_a_request(name: str) -> None:
    """A quickstart ends with a request that is billed: the reader sees it work."""
    page = parse_page(name)
    assert any(step.kind in ("python", "file", "append") for step in page.steps), "no code"
    assert any(step.kind == "curl" for step in page.steps), "no curl line to try it"


@pytest.mark.parametrize(("name", "line", "text"), _yaml_blocks())
def test_yaml_blocks_load(name: str, line: int, text: str, tmp_path: Path) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(text, encoding="utf-8")
    load_config(path, env=YAML_ENV)


def test_collector_reads_fences_directives_and_curl() -> None:
    text = textwrap.dedent(
        """\
        ## Quickstart

        ```bash
        fluxrate-web devserver --meter api_calls:SUM:11111111-2222-3333-4444-555555555555
        export FLUXRATE_API_KEY=ignored
        export DJANGO_SETTINGS_MODULE=mysite.settings
        ```

        <!-- docs-test: skip -->
        ```python
        raise SystemExit
        ```

        <!-- docs-test: file=settings.py -->
        ```python
        DEBUG = True
        ```

        ```python
        x = 1
        ```

        <!-- docs-test: curl -H 'X-Customer-Id: acme' localhost:8000/v1/items/1?full=1 -->

        ## Next
        ```python
        not_in_the_quickstart()
        ```
        """
    )
    section, _ = quickstart_section(text)
    assert "not_in_the_quickstart" not in section
    request = parse_curl("curl -s -X PUT -H 'X-Customer-Id: a' -d '{}' http://h:1/p?q=2")
    assert request == {
        "method": "PUT",
        "path": "/p",
        "query": "q=2",
        "headers": [["X-Customer-Id", "a"]],
        "body": "{}",
        "port": 1,
        "expect": None,
    }
    assert parse_curl("curl http://127.0.0.1:8000/v1/items/42   # 422: no key")["expect"] == 422
    devserver_check = parse_text("x.md", "```bash\ncurl http://127.0.0.1:8787/_dev/summary\n```\n")
    assert devserver_check.steps == []  # the reader's look at the devserver: not the app
    meters: dict[str, str] = {}
    shell = _shell_steps(text.split("```bash\n")[1].split("```")[0], 3, meters)
    assert meters == {"api_calls": "SUM:11111111-2222-3333-4444-555555555555"}
    assert [(s.kind, s.name, s.text) for s in shell] == [
        ("env", "DJANGO_SETTINGS_MODULE", "mysite.settings")
    ]
    assert _directive_before(section, section.index("```python\nraise")) == "skip"
    assert [s.request["path"] for s in _hidden_curls(section, 0, len(section), 0)] == [
        "/v1/items/1"
    ]
