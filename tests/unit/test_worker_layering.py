"""The worker layer knows processes and JSON-RPC only: nothing in it reaches the Codex dialects."""

from __future__ import annotations

import ast
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[2] / "bridge"
FORBIDDEN = ("bridge.codex",)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, TYPE_CHECKING blocks and function bodies included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "bridge":
        return None
    base = BRIDGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_no_worker_module_imports_the_codex_dialects_directly_or_transitively() -> None:
    offenders: list[str] = []
    for start in sorted((BRIDGE / "worker").glob("*.py")):
        seen: set[Path] = set()
        todo = [start]
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            for name in _imports(path):
                if name.startswith(FORBIDDEN):
                    offenders.append(f"{start.name} -> {path.relative_to(BRIDGE)}: {name}")
                found = _module_file(name)
                if found is not None:
                    todo.append(found)
    assert not offenders, "\n".join(offenders)
