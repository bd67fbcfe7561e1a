"""Every example of docs/configuration.md and docs/testing.md works: each ```yaml block loads with
load_config (and compiles), each ```python block runs."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from fluxrate_web.core.config import load_config
from fluxrate_web.core.rules import RequestRules

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
ENV = {
    "FLUXRATE_API_KEY": "org_live_docs",
    "FLUXRATE_TOKENS_METER": "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    "HOME": "/home/docs",
}


def blocks(name: str, lang: str) -> list[tuple[int, str]]:
    text = (DOCS / name).read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(2))
        for m in BLOCK.finditer(text)
        if m.group(1) == lang
    ]


@pytest.fixture
def myapp(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The `myapp.billing` module the examples name."""
    package = types.ModuleType("myapp")
    package.__path__ = []
    billing = types.ModuleType("myapp.billing")

    def customer_of(request: object) -> str:
        return "c"

    def render_cost(request: object, response: object) -> int:
        return 1

    def tokens(request: object, response: object) -> int:
        return 1

    billing.customer_of = customer_of  # type: ignore[attr-defined]
    billing.render_cost = render_cost  # type: ignore[attr-defined]
    billing.tokens = tokens  # type: ignore[attr-defined]
    package.billing = billing  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "myapp", package)
    monkeypatch.setitem(sys.modules, "myapp.billing", billing)
    return billing


def test_configuration_has_examples() -> None:
    assert len(blocks("configuration.md", "yaml")) >= 8
    assert len(blocks("configuration.md", "python")) >= 3


@pytest.mark.parametrize(
    ("line", "text"), blocks("configuration.md", "yaml"), ids=lambda v: str(v)[:12]
)
def test_yaml_examples_load_and_compile(
    tmp_path: Path, myapp: types.ModuleType, line: int, text: str
) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path, env=ENV)
    RequestRules(config)  # resolvers, quantity sources and imports compile too


@pytest.mark.parametrize(
    ("line", "text"), blocks("configuration.md", "python"), ids=lambda v: str(v)[:12]
)
def test_python_examples_run(myapp: types.ModuleType, line: int, text: str) -> None:
    code = compile(text, f"docs/configuration.md:{line}", "exec")
    exec(code, {"__name__": f"docs_example_{line}"})


def test_every_key_is_documented() -> None:
    from fluxrate_web.core import config as config_module

    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    for key in (
        *config_module._TOP_KEYS,
        *config_module._RULE_KEYS,
        *config_module._SPEC_KEYS,
    ):
        assert f"`{key}`" in text, f"{key} is not documented"
    for source in ("response_header:", "request_header:", "response_bytes", "request_bytes",
                   "duration_ms", "callable:"):  # fmt: skip
        assert source in text
    for resolver in ("header:NAME", "user:ATTR.PATH", "state:NAME", "query:NAME", "callable:"):
        assert resolver in text
    for kwarg in load_config().client_kwargs():
        assert f"`{kwarg}`" in text


def test_testing_examples_run_under_pytest(tmp_path: Path) -> None:
    """docs/testing.md: its python blocks, concatenated, are a test module that passes."""
    sources = [text for _, text in blocks("testing.md", "python")]
    assert sources
    (tmp_path / "test_docs_testing_examples.py").write_text("\n\n".join(sources))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:django",
         "-W", "error", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
