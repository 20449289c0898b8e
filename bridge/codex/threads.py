"""Deleting the Codex threads of stored responses that are gone (deleted by the client, or expired).

Codex keeps a stored response's thread as a rollout file,
`$CODEX_HOME/sessions/YYYY/MM/DD/rollout-<time>-<thread id>.jsonl`, plus
rows in its own state database. Codex 0.163 (v2 dialect) has `thread/delete`,
which removes both; it is used whenever a v2 worker is ready. Codex 0.77 (v1)
has no delete, and a thread may outlive every worker that could delete it:
then the rollout files themselves are removed (`sessions/` and
`archived_sessions/`). `has_rollout` tells whether a thread is in this
Codex home at all (on another instance's, it must be replayed). Knows the method name and Codex's on-disk layout;
knows no HTTP and no stored-response records.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from bridge.errors import BridgeError
from bridge.worker.rpc import ConnectionClosed, RpcError, RpcTimeout

log = structlog.get_logger("bridge.threads")

# Codex thread ids are UUIDs; anything else is not a name to put in a glob.
_THREAD_ID: Final = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_ROLLOUT_DIRS: Final = ("sessions", "archived_sessions")
# Codex's answer to thread/delete for a thread it has no rollout of: already gone.
_ALREADY_GONE: Final = "no rollout found"


class ThreadHost(Protocol):
    """A worker that can run a plain RPC (`bridge.worker.supervisor.Worker`)."""

    @property
    def ready(self) -> bool: ...

    @property
    def dialect(self) -> str: ...

    async def request(self, method: str, params: dict[str, Any] | None) -> Any: ...


async def delete_threads(
    worker: ThreadHost | None, codex_home: Path, thread_ids: Iterable[str]
) -> int:
    """Deletes the threads; how many were deleted (or found already gone)."""
    wanted = [t for t in dict.fromkeys(thread_ids) if _THREAD_ID.match(t)]
    by_files: set[str] = set()
    deleted = 0
    for thread_id in wanted:
        if worker is None or not worker.ready or worker.dialect != "v2":
            by_files.add(thread_id)
            continue
        try:
            await worker.request("thread/delete", {"threadId": thread_id})
        except RpcError as exc:
            if _ALREADY_GONE not in exc.message:
                log.warning("thread/delete refused", thread=thread_id, error=exc.message)
                by_files.add(thread_id)
                continue
        except (RpcTimeout, ConnectionClosed, BridgeError) as exc:
            log.warning("thread/delete failed", thread=thread_id, error=repr(exc))
            by_files.add(thread_id)
            continue
        deleted += 1
    if by_files:
        deleted += await asyncio.to_thread(remove_rollouts, codex_home, by_files)
    return deleted


def has_rollout(codex_home: Path, thread_id: str) -> bool:
    """Whether this Codex home holds the thread (so `thread/fork` can continue it here)."""
    if not _THREAD_ID.match(thread_id):
        return False
    for name in _ROLLOUT_DIRS:
        root = codex_home / name
        if root.is_dir() and next(root.glob(f"*/*/*/rollout-*-{thread_id}.jsonl"), None):
            return True
    return False


def remove_rollouts(codex_home: Path, thread_ids: set[str]) -> int:
    """Removes the rollout files of these threads; one walk of the session directories."""
    removed: set[str] = set()
    lengths = {len(t) for t in thread_ids}
    for name in _ROLLOUT_DIRS:
        root = codex_home / name
        if not root.is_dir():
            continue
        for path in root.rglob("rollout-*.jsonl"):
            thread_id = _thread_of(path.name, thread_ids, lengths)
            if thread_id is None:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("rollout not removed", path=str(path), error=repr(exc))
                continue
            removed.add(thread_id)
    return len(removed)


def _thread_of(filename: str, thread_ids: set[str], lengths: set[int]) -> str | None:
    stem = filename.removesuffix(".jsonl")
    for length in lengths:
        tail = stem[-length:]
        if tail in thread_ids and stem[-length - 1 : -length] == "-":
            return tail
    return None
