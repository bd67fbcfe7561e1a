"""The docs site builds with ``mkdocs build --strict``: a broken link, a missing page in the nav
or a docstring mkdocstrings cannot render fails the suite (``make docs`` runs the same build)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings_handlers.python")

REPO = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{output[-6000:]}", pytrace=False)
    assert "WARNING" not in output, output
    assert (tmp_path / "index.html").exists()
    api = (tmp_path / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("FluxrateClient", "UsageEvent", "ConfigError", "load_config", "Metering"):
        assert name in api, f"{name} missing from the API reference"


def test_every_page_is_in_the_nav() -> None:
    """A page outside the nav is built but unreachable: wire new pages into mkdocs.yml."""
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w/-]+\.md)\s*$", nav, re.M))
    pages = {path.name for path in (REPO / "docs").glob("*.md")}
    assert pages - listed == set(), "pages missing from the nav of mkdocs.yml"
    assert listed - pages == set(), "the nav of mkdocs.yml names pages that do not exist"


def test_cli_page_documents_every_subcommand_and_option() -> None:
    """docs/cli.md names every ``fluxrate-web`` subcommand and each of its options, read from
    the parsers themselves (``configure(parser)`` of each subcommand's module)."""
    import argparse
    import importlib

    from fluxrate_web.cli import SUBCOMMANDS

    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")

    def check(command: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub_parser in action.choices.items():
                    assert f"`{sub_name}`" in text, f"{command} {sub_name} is not documented"
                    check(f"{command} {sub_name}", sub_parser)
                continue
            names = action.option_strings or [action.metavar or action.dest]
            assert any(f"`{option}`" in text for option in names), (
                f"{command}: {names[0]} is not documented in docs/cli.md"
            )

    for name, (module_name, _help) in SUBCOMMANDS.items():
        assert f"## `fluxrate-web {name}`" in text, f"no section for fluxrate-web {name}"
        parser = argparse.ArgumentParser(prog=f"fluxrate-web {name}")
        importlib.import_module(module_name).configure(parser)
        check(f"fluxrate-web {name}", parser)
