"""The example project's own test suite (examples/django_app, pytest-django) runs as part of
the repository's suite: in a subprocess, exactly as ``pytest examples/django_app`` would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django_app"


def test_example_project_suite_passes(request: pytest.FixtureRequest) -> None:
    for arg in request.config.args:
        target = Path(arg.split("::", 1)[0]).resolve()
        if target == EXAMPLE or target in EXAMPLE.parents:
            pytest.skip("examples/django_app is collected in this session already")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FLUXRATE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLE), "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
