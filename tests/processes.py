"""`python -m bridge ...` as a real process, for tests: a clean environment, argv, bounded runs.

Tests that start the daemon or a CLI command as its own process (exit codes,
signals, systemd notifications, instance locks) build it from here, so every
one runs without the caller's `BRIDGE_*` settings and is killed by PID if it
outlives its bound.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without `BRIDGE_*` (they would configure the child)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(extra or {})
    return env


def bridge_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge", *args]


def serve_argv(state_dir: Path, codex_home: Path, *extra: str) -> list[str]:
    """`serve --demo` on an ephemeral port with its own state directory and Codex home."""
    return bridge_argv(
        "serve", "--demo", "--port", "0",
        "--state-dir", str(state_dir), "--codex-home", str(codex_home), *extra,
    )  # fmt: skip


async def run_to_exit(
    argv: Sequence[str], *, env: Mapping[str, str], timeout_s: float, stdin: bytes = b""
) -> tuple[int, str, str]:
    """Runs the command to its end (killed past `timeout_s`); its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
