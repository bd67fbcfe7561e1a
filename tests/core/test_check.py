"""fluxrate-web check: validates a file and prints meters and rules; exit 1 on a bad file."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from fluxrate_web.cli import main

GOOD = """
api_key: org_live_supersecret
meters:
  api_calls: 550e8400-e29b-41d4-a716-446655440000
  ai_tokens: {token: 650e8400-e29b-41d4-a716-446655440001, aggregation: SUM, window: 30s}
customer: header:X-Customer-Id
exclude: [/health]
endpoints:
  - route: /v1/chat/completions
    methods: [POST]
    meters:
      - api_calls
      - meter: ai_tokens
        quantity: response_header:X-Tokens-Used
  - route: /v1/free
    skip: true
"""


def test_valid_file_prints_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(GOOD)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: OK" in out
    assert "api_calls  550e8400-e29b-41d4-a716-446655440000" in out
    assert "SUM" in out
    assert "30s" in out
    assert "/v1/chat/completions" in out
    assert "ai_tokens x response_header:X-Tokens-Used" in out
    assert "(skip)" in out
    assert "supersecret" not in out
    assert "api_key              set" in out
    assert "trusts what the client sends" in out


def test_bad_file_exits_1_with_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text("meters:\n  a: t\nendpoints:\n  - route: /a\n    meter: a\n    quantity: 0\n")
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{path}:6: endpoints[0].quantity: expected a number > 0")


def test_import_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text("customer: callable:no_such_mod_zz.who\n")
    assert main(["check", str(path)]) == 1
    assert "cannot import 'no_such_mod_zz.who'" in capsys.readouterr().err
    assert main(["check", "--no-import", str(path)]) == 0


def test_default_file_and_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLUXRATE_CONFIG", raising=False)
    assert main(["check"]) == 1
    assert "no configuration file" in capsys.readouterr().err
    (tmp_path / "fluxrate.yaml").write_text(GOOD)
    assert main(["check"]) == 0
    other = tmp_path / "other.yaml"
    other.write_text("bill_on: nope\n")
    monkeypatch.setenv("FLUXRATE_CONFIG", str(other))
    assert main(["check"]) == 1
    assert "other.yaml:1: bill_on" in capsys.readouterr().err


def test_notes_for_missing_customer(tmp_path: Path) -> None:
    from fluxrate_web.core.check import report
    from fluxrate_web.core.config import load_config
    from fluxrate_web.core.rules import RequestRules

    config = load_config(overrides={"meters": {"a": "t"}, "default_meter": "a"})
    out = io.StringIO()
    report(config, RequestRules(config), out)
    assert "no 'customer:' resolver" in out.getvalue()


def test_console_script(tmp_path: Path) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text("bil_on: 2xx\n")
    result = subprocess.run(
        [sys.executable, "-m", "fluxrate_web", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "bil_on: unknown key 'bil_on' (did you mean 'bill_on'?)" in result.stderr
