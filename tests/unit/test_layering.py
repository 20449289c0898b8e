"""Import direction between the packages: `bridge/ops/` never imports `bridge/api/`.

Operations (auth, usage ledger, metrics, admission) sit below the HTTP API
layer; an import the other way round is how the auth <-> middleware <-> usage
cycle started. Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import pytest

OPS: Final = Path(__file__).resolve().parents[2] / "bridge" / "ops"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted(OPS.glob("*.py")), ids=lambda p: p.name)
def test_ops_module_does_not_import_the_api_layer(path: Path) -> None:
    offending = sorted(
        name
        for name in imported_modules(path)
        if name == "bridge.api" or name.startswith("bridge.api.")
    )
    assert not offending, f"{path.name} imports {offending}"
