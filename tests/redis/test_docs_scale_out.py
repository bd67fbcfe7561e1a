"""docs/scale-out.md: its configuration examples load, and it names what it must."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _redishelpers import REPO

from fluxrate_web.core.config import load_config

PAGE = REPO / "docs" / "scale-out.md"
BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)
YAML = [
    m.group(2) for m in BLOCK.finditer(PAGE.read_text(encoding="utf-8")) if m.group(1) == "yaml"
]


@pytest.mark.parametrize("text", YAML)
def test_yaml_examples_load(text: str, tmp_path: Path) -> None:
    path = tmp_path / "fluxrate.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path, env={"FLUXRATE_API_KEY": "org_live_docs"})
    assert config.redis_stream == "fluxrate:events"


def test_the_page_covers_durability_and_watching() -> None:
    text = PAGE.read_text(encoding="utf-8")
    needles = ["appendonly yes", "appendfsync", "noeviction", "failover", "XINFO GROUPS"]
    needles += ["XPENDING", "relay_rate_limit", "relay_claim_idle", "fluxrate-web replay"]
    for needle in needles:
        assert needle in text, needle
    assert "FIGURES" not in text
