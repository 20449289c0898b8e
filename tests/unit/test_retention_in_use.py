"""Retention never deletes a Codex thread a turn on this instance still runs or is parked on,
whichever instance found it orphaned; it deletes it at a later pass once the turn let go."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from bridge.ops.metrics import Metrics
from bridge.redis_store import RedisResponseStore
from bridge.retention import Retention
from bridge.store import ResponseStore

THREAD = "01a226e6-d559-7f23-8ecf-09cb5577e998"


def _rollout(home: Path, thread_id: str) -> Path:
    path = home / "sessions/2026/11/29" / f"rollout-2026-11-29T10-43-11-{thread_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n")
    return path


class _Store:
    """A store whose purge finds `orphans` once; `used` threads a stored response ends on."""

    def __init__(self, orphans: list[str]) -> None:
        self.orphans = orphans
        self.used: set[str] = set()

    async def purge(self) -> tuple[int, list[str]]:
        orphans, self.orphans = self.orphans, []
        return len(orphans), orphans

    async def thread_in_use(self, thread_id: str) -> bool:
        return thread_id in self.used

    async def count(self) -> int:
        return 0


class _SharedStore(RedisResponseStore):
    """A shared store where another instance announced `announced` as orphaned."""

    def __init__(self, announced: list[str]) -> None:  # no Redis client: nothing to connect
        self.announced = announced

    async def purge(self) -> tuple[int, list[str]]:
        return 0, []

    async def share_orphans(self, thread_ids: list[str], keep_s: float) -> None:
        return None

    async def shared_orphans(self) -> list[str]:
        return list(self.announced)

    async def thread_in_use(self, thread_id: str) -> bool:
        return False

    async def count(self) -> int:
        return 0


def _retention(store: object, home: Path, busy: set[str]) -> Retention:
    return Retention(
        cast(ResponseStore, store),
        [home],
        Metrics(version="test", codex_version="test"),
        None,
        60.0,
        in_use=lambda thread_id: thread_id in busy,
    )


async def test_a_thread_another_instance_announced_stays_while_a_turn_here_holds_it(
    tmp_path: Path,
) -> None:
    rollout = _rollout(tmp_path, THREAD)
    store = _SharedStore([THREAD])
    busy = {THREAD}  # a parked turn on this instance
    retention = _retention(store, tmp_path, busy)
    assert await retention.purge() == (0, 0)
    assert rollout.exists()
    busy.clear()
    store.announced = []  # the announcement expired meanwhile: this instance remembers it
    assert await retention.purge() == (0, 1)
    assert not rollout.exists()


async def test_a_thread_this_stores_purge_orphaned_stays_while_a_turn_holds_it(
    tmp_path: Path,
) -> None:
    rollout = _rollout(tmp_path, THREAD)
    busy = {THREAD}  # a running turn on this instance
    retention = _retention(_Store([THREAD]), tmp_path, busy)
    assert await retention.purge() == (1, 0)
    assert rollout.exists()
    assert await retention.purge() == (0, 0)  # still held: still kept
    assert rollout.exists()
    busy.clear()
    assert await retention.purge() == (0, 1)
    assert not rollout.exists()


async def test_a_kept_thread_is_not_deleted_when_a_stored_response_came_to_use_it(
    tmp_path: Path,
) -> None:
    rollout = _rollout(tmp_path, THREAD)
    store = _Store([THREAD])
    busy = {THREAD}
    retention = _retention(store, tmp_path, busy)
    assert await retention.purge() == (1, 0)
    busy.clear()
    store.used.add(THREAD)  # the parked turn finished and stored a response on the thread
    assert await retention.purge() == (0, 0)
    assert rollout.exists()
