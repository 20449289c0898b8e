"""How a worker process is launched: argv, environment and working directory.

Turns settings into the exact `codex app-server` command line. Knows Codex's
config keys and feature names (pinned to the Codex version in pyproject.toml);
knows nothing about JSON-RPC or HTTP.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

# Codex reaches out at startup for plugin/app catalogs (NOTES: "tries outbound
# network at startup"); a serving daemon must not.
STARTUP_NETWORK_OFF: Final = (
    "features.plugins=false",
    "features.apps=false",
    "features.remote_plugin=false",
)

# The plain profile makes Codex behave like a model API: no host-reaching tools
# (shell, exec, view_image reads host paths, web search), no agent features, and
# none of the per-thread login-shell snapshot that costs ~10x under load
# (NOTES: "Per-turn cost"). Names from `codex features list` of the pinned build.
PLAIN_FEATURES_OFF: Final = (
    "shell_snapshot",
    "shell_tool",
    "unified_exec",
    "multi_agent",
    "goals",
    "image_generation",
    "sleep_tool",
    "hooks",
    "skill_search",
    "tool_suggest",
    "browser_use",
    "computer_use",
    "memories",
    "view_image",
    "code_mode_host",
    "in_app_browser",
    "workspace_dependencies",
)
PLAIN_OVERRIDES: Final = (
    *(f"features.{name}=false" for name in PLAIN_FEATURES_OFF),
    'web_search="disabled"',
)

# Environment a worker must never see: systemd's notify/watchdog/socket
# variables belong to the bridge, and BRIDGE_* may hold API keys that a
# model-issued command could print in the agent profile.
_ENV_DROP_PREFIXES: Final = ("BRIDGE_", "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")


def worker_argv(codex_bin: str, *, profile: str, operator_overrides: Sequence[str]) -> list[str]:
    """`codex -c ... app-server`; operator overrides come last so they win."""
    overrides: list[str] = [*STARTUP_NETWORK_OFF]
    if profile == "plain":
        overrides.extend(PLAIN_OVERRIDES)
    overrides.extend(operator_overrides)
    argv = [codex_bin]
    for item in overrides:
        argv += ["-c", item]
    argv.append("app-server")
    return argv


def worker_env(
    base: Mapping[str, str], *, codex_home: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(_ENV_DROP_PREFIXES)}
    env["CODEX_HOME"] = str(codex_home)
    # Codex logs through RUST_LOG; keep its stderr to warnings unless asked.
    env.setdefault("RUST_LOG", "warn")
    # Plain stderr lines: they end up as JSON log fields, not on a terminal.
    env["NO_COLOR"] = "1"
    if extra:
        env.update(extra)
    return env


def prepare_workdir(root: Path, worker_id: int) -> Path:
    """An empty directory the worker's threads use as cwd: nothing there to read."""
    path = root / f"worker-{worker_id}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)
    return path


def prepare_codex_home(path: Path) -> Path:
    # Created private; an operator-provided directory keeps its own mode.
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
