"""Deleting Codex threads: by `thread/delete` on a v2 worker, by their rollout files otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bridge.codex.threads import delete_threads, remove_rollouts
from bridge.worker.rpc import RpcError

GONE = "01a226e6-d559-7f23-8ecf-09cb5577e998"
KEPT = "01a226e6-d559-7f23-8ecf-09cb5577e999"


def _rollout(home: Path, thread_id: str, where: str = "sessions/2026/11/29") -> Path:
    path = home / where / f"rollout-2026-11-29T10-43-11-{thread_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    return path


class FakeWorker:
    def __init__(self, dialect: str, refuse: str | None = None) -> None:
        self._dialect = dialect
        self._refuse = refuse
        self.calls: list[tuple[str, dict[str, Any] | None]] = []

    @property
    def ready(self) -> bool:
        return True

    @property
    def dialect(self) -> str:
        return self._dialect

    async def request(self, method: str, params: dict[str, Any] | None) -> Any:
        self.calls.append((method, params))
        if self._refuse is not None:
            raise RpcError(-32600, self._refuse)
        return {}


def test_only_the_named_threads_rollouts_are_removed(tmp_path: Path) -> None:
    gone = _rollout(tmp_path, GONE)
    archived = _rollout(tmp_path, GONE, "archived_sessions")
    kept = _rollout(tmp_path, KEPT)
    assert remove_rollouts(tmp_path, {GONE}) == 1
    assert not gone.exists() and not archived.exists()
    assert kept.exists()


async def test_a_v2_worker_deletes_through_codex_and_a_v1_worker_by_files(tmp_path: Path) -> None:
    kept = _rollout(tmp_path, KEPT)
    v2 = FakeWorker("v2")
    assert await delete_threads(v2, tmp_path, [KEPT]) == 1
    assert v2.calls == [("thread/delete", {"threadId": KEPT})]
    assert kept.exists()  # Codex itself removes it; the fake does not
    v1 = FakeWorker("v1")
    assert await delete_threads(v1, tmp_path, [KEPT]) == 1
    assert v1.calls == [] and not kept.exists()


async def test_a_thread_codex_no_longer_has_counts_as_deleted_and_bad_ids_are_skipped(
    tmp_path: Path,
) -> None:
    worker = FakeWorker("v2", refuse=f"no rollout found for thread id {GONE}")
    assert await delete_threads(worker, tmp_path, [GONE, "../../etc/passwd", "*"]) == 1
    assert worker.calls == [("thread/delete", {"threadId": GONE})]
