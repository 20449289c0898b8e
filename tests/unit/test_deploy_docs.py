"""The deployment guide and the unit name only settings that exist.

`docs/deploy.md` and the unit once told operators to set `auth.mode =
"forwarded"`, a setting the bridge never had. Every `section.key` and every
`BRIDGE_*` variable they mention must be a real one (`bridge.config.FIELDS`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import pytest

from bridge.config import FIELDS, Settings

REPO: Final = Path(__file__).resolve().parents[2]
DOCUMENTS: Final = (
    REPO / "docs" / "deploy.md",
    REPO / "docs" / "scaling.md",
    REPO / "deploy" / "systemd" / "codex-bridge.service",
    REPO / "deploy" / "systemd" / "codex-bridge.env.example",
)
_DOTTED: Final = re.compile(rf"\b({'|'.join(Settings.model_fields)})\.([a-z_]+)\b")
_ENV: Final = re.compile(r"\bBRIDGE_[A-Z0-9_]+\b")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_deploy_documents_mention_only_real_settings(path: Path) -> None:
    text = path.read_text()
    known = {f.dotted for f in FIELDS}
    dotted = {
        f"{m[1]}.{m[2]}" for m in _DOTTED.finditer(text) if m[2] != "py"
    }  # `bridge/server.py` is a file, not a setting
    assert dotted - known == set()
    assert set(_ENV.findall(text)) - {f.env for f in FIELDS} == set()
    assert "auth.mode" not in text
