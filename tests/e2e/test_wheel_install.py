"""The released package works without the checkout: ``python -m build`` makes a wheel and an
sdist that pass ``twine check``; the wheel, installed with one extra at a time into a fresh venv
(no system site-packages, no checkout on ``sys.path``), runs its framework's quickstart against
the devserver, and the other frameworks are not installed by that extra.

Quickstarts: the ``## Quickstart`` of ``docs/<framework>.md``, word for word, followed by the
runner of ``tests/test_docs_examples.py`` with the venv's Python (the app is imported and called
in process, as ``uvicorn main:app`` would serve it); ``[prometheus]`` runs a few lines below.

Time: one build (about 4 s) and one venv per extra (about 5 s each with pip's cache).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fluxrate_web import __version__
from fluxrate_web.devserver import DevServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("flask", "django", "starlette", "fastapi")


def _docs_examples() -> ModuleType:
    """tests/test_docs_examples.py (the parser and the runner of the docs' examples)."""
    spec = importlib.util.spec_from_file_location(
        "_docs_examples_for_wheel", REPO / "tests" / "test_docs_examples.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


docs = _docs_examples()

PROMETHEUS_QUICKSTART = textwrap.dedent(
    """\
    ```python
    from prometheus_client import generate_latest

    from fluxrate_web import FluxrateClient
    from fluxrate_web.prometheus import register

    client = FluxrateClient()
    register(client)
    client.track("550e8400-e29b-41d4-a716-446655440000", "prometheus-customer", 3)
    assert client.flush(10)
    text = generate_latest().decode()
    assert 'fluxrate_events_delivered_total{client="default"} 1.0' in text, text
    ```
    """
)


def quickstart(extra: str) -> Any:
    """The page (parsed steps) whose examples the wheel must run with ``extra``."""
    if extra in FRAMEWORKS:
        name = f"{extra}.md"
        section, offset = docs.quickstart_section((REPO / "docs" / name).read_text("utf-8"))
        return docs.parse_text(name, section, offset)
    return docs.parse_text("wheel-prometheus-quickstart", PROMETHEUS_QUICKSTART)


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 120) -> str:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One ``python -m build`` (sdist, then the wheel built from the sdist)."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, REPO, timeout=300)
    wheels = list(out.glob("*.whl"))
    sdists = list(out.glob("*.tar.gz"))
    assert len(wheels) == 1
    assert len(sdists) == 1
    return {"wheel": wheels[0], "sdist": sdists[0]}


def test_dists_pass_twine_check(dists: dict[str, Path]) -> None:
    pytest.importorskip("twine")
    out = run(sys.executable, "-m", "twine", "check", "--strict", dists["wheel"], dists["sdist"])
    assert out.count("PASSED") == 2, out


def test_wheel_metadata(dists: dict[str, Path]) -> None:
    assert dists["wheel"].name == f"fluxrate_web-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = wheel.namelist()
        info = f"fluxrate_web-{__version__}.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert "fluxrate_web/py.typed" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    assert f"Version: {__version__}" in metadata
    assert "Requires-Python: >=3.11" in metadata
    for extra in (*FRAMEWORKS, "prometheus", "server"):
        assert f"Provides-Extra: {extra}" in metadata
    assert "fluxrate-web = fluxrate_web.cli:main" in entry_points
    assert "fluxrate_web = fluxrate_web.testing" in entry_points  # the pytest plugin


@pytest.mark.parametrize("extra", [*FRAMEWORKS, "prometheus"])
def test_wheel_with_one_extra_runs_its_quickstart(
    extra: str, dists: dict[str, Path], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(
        sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
        "--disable-pip-version-check", f"{dists['wheel']}[{extra}]",
    )  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    probe = (
        "import importlib.util, json, fluxrate_web;"
        f"print(json.dumps([fluxrate_web.__file__, {{m: importlib.util.find_spec(m) is not None "
        f"for m in {list(FRAMEWORKS)}}}]))"
    )
    location, importable = json.loads(run(python, "-I", "-c", probe, cwd=work))
    assert location.startswith(str(venv)), location  # the wheel, not the checkout
    expected = {"fastapi": {"fastapi", "starlette"}, "prometheus": set()}.get(extra, {extra})
    assert {m for m, found in importable.items() if found} == expected

    page = quickstart(extra)
    with DevServer(meters=page.meters) as server:  # the meters the quickstart names
        statuses = run_with(python, page, server, work)
        summary = server.summary()
    assert statuses or extra == "prometheus"
    assert all(status < 400 or step.request["expect"] == status for status, step in zip(
        statuses, [s for s in page.steps if s.kind == "curl"], strict=True))  # fmt: skip
    for step in page.steps:
        for key, customer in step.request.get("headers", []):
            if key.lower() == "x-customer-id":
                assert customer in summary, summary
    if extra == "prometheus":
        assert summary == {"prometheus-customer": {"api_calls": 3}}
    else:
        assert summary, "the quickstart billed nothing"


def run_with(python: Path, page: Any, server: DevServer, cwd: Path) -> list[int]:
    """``docs.run_page`` with the venv's interpreter and no checkout on the path."""
    home = next(step for step in docs.parse_page("index.md").steps if step.kind == "yaml")
    (cwd / "fluxrate.yaml").write_text(home.text, encoding="utf-8")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FLUXRATE_", "DJANGO_", "PYTEST_", "PYTHON"))
    }
    env.update(FLUXRATE_API_KEY=server.api_key, FLUXRATE_BASE_URL=server.url)
    steps = [step.__dict__ for step in page.steps]
    result = subprocess.run(
        [str(python), "-c", docs.RUNNER],
        input=json.dumps({"page": page.name, "steps": steps}),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("DOCS-RESULT ")]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert lines, result.stdout[-4000:] + result.stderr[-4000:]
    statuses: list[int] = json.loads(lines[-1][len("DOCS-RESULT ") :])
    return statuses


def test_sdist_has_what_a_rebuild_and_the_docs_need(dists: dict[str, Path]) -> None:
    import tarfile

    root = f"fluxrate_web-{__version__}"
    with tarfile.open(dists["sdist"]) as sdist:
        names = set(sdist.getnames())
    for path in ("pyproject.toml", "README.md", "CHANGELOG.md", "mkdocs.yml", "noxfile.py",
                 "docs/index.md", "fluxrate_web/_version.py", "fluxrate_web/py.typed"):  # fmt: skip
        assert f"{root}/{path}" in names, path
