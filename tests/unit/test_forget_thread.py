"""A client's DELETE of a stored response never fails after the response is gone: a store that
cannot say whether another response uses its thread leaves the thread to the next purge pass."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from bridge.errors import StoreUnavailable
from bridge.ops.metrics import Metrics
from bridge.retention import Retention
from bridge.store import ResponseStore

THREAD = "01a226e6-d559-7f23-8ecf-09cb5577e999"


class _FlakyStore:
    """A store double whose `thread_in_use` fails while `down`; nothing else is stored."""

    def __init__(self) -> None:
        self.down = True
        self.used: set[str] = set()

    async def thread_in_use(self, thread_id: str) -> bool:
        if self.down:
            raise StoreUnavailable("The response store (Redis) is unavailable")
        return thread_id in self.used

    async def purge(self) -> tuple[int, list[str]]:
        return 0, []

    async def count(self) -> int:
        return 0


def _rollout(home: Path) -> Path:
    path = home / "sessions/2026/11/29" / f"rollout-2026-11-29T10-43-11-{THREAD}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    return path


def _retention(store: _FlakyStore, home: Path) -> Retention:
    metrics = Metrics(version="test", codex_version="test")
    return Retention(cast(ResponseStore, store), [home], metrics, None, 60.0)


async def test_thread_of_a_deleted_response_is_deleted_at_the_next_pass_when_the_store_failed(
    tmp_path: Path,
) -> None:
    rollout = _rollout(tmp_path)
    store = _FlakyStore()
    retention = _retention(store, tmp_path)
    await retention.forget_thread(THREAD)  # raised StoreUnavailable (a 503) before
    assert rollout.exists()
    assert await retention.purge() == (0, 0)  # still down: kept for later, not dropped
    assert rollout.exists()
    store.down = False
    assert await retention.purge() == (0, 1)
    assert not rollout.exists()


async def test_thread_of_a_deleted_response_stays_when_the_store_later_says_it_is_used(
    tmp_path: Path,
) -> None:
    rollout = _rollout(tmp_path)
    store = _FlakyStore()
    retention = _retention(store, tmp_path)
    await retention.forget_thread(THREAD)
    store.down = False
    store.used.add(THREAD)  # another stored response ends on the same thread
    assert await retention.purge() == (0, 0)
    assert rollout.exists()
