"""The ResponseStore contract, for the SQLite default and the in-memory store alike."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.store import (
    ANONYMOUS_OWNER,
    MemoryResponseStore,
    ResponseStore,
    SqliteResponseStore,
    StoredResponse,
)


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResponseStore]:
    made: ResponseStore = (
        SqliteResponseStore(tmp_path / "bridge.sqlite3", ttl_s=60)
        if request.param == "sqlite"
        else MemoryResponseStore(ttl_s=60)
    )
    yield made
    await made.close()


def _record(rid: str, owner: str | None, *, age_s: float = 0, thread: str = "t") -> StoredResponse:
    return StoredResponse(rid, thread, "u", time.time() - age_s, {"id": rid}, owner)


async def test_a_stored_response_comes_back_whole(store: ResponseStore) -> None:
    items = [{"id": "msg_1", "type": "message", "role": "user", "content": []}]
    record = StoredResponse(
        "resp_1", "thread-1", "turn-1", time.time(), {"id": "resp_1", "n": 1}, "alice", items
    )
    await store.put(record)
    assert await store.get("resp_1", "alice") == record
    assert await store.get("resp_2", "alice") is None


async def test_an_expired_response_is_gone(store: ResponseStore) -> None:
    await store.put(_record("resp_old", "alice", age_s=3600))
    assert await store.get("resp_old", "alice") is None


async def test_another_owner_can_neither_read_nor_delete_a_response(store: ResponseStore) -> None:
    await store.put(_record("resp_a", "alice"))
    assert await store.get("resp_a", "bob") is None
    assert await store.get("resp_a", ANONYMOUS_OWNER) is None
    assert await store.delete("resp_a", "bob") is None
    assert await store.get("resp_a", "alice") is not None
    deleted = await store.delete("resp_a", "alice")
    assert deleted is not None and deleted.id == "resp_a"
    assert await store.get("resp_a", "alice") is None
    assert await store.count() == 0


async def test_purge_removes_expired_responses_and_names_threads_no_one_uses(
    store: ResponseStore,
) -> None:
    await store.put(_record("resp_old", "alice", age_s=3600, thread="t-old"))
    await store.put(_record("resp_shared_old", "alice", age_s=3600, thread="t-shared"))
    await store.put(_record("resp_shared_new", "alice", thread="t-shared"))
    await store.put(_record("resp_new", "alice", thread="t-new"))
    removed, threads = await store.purge()
    assert removed == 2
    assert threads == ["t-old"]
    assert await store.count() == 2
    assert await store.thread_in_use("t-shared")
    assert not await store.thread_in_use("t-old")


async def test_sqlite_responses_survive_reopening(tmp_path: Path) -> None:
    first = SqliteResponseStore(tmp_path / "bridge.sqlite3")
    await first.put(StoredResponse("resp_k", "t", "u", time.time(), {"k": True}, "alice"))
    await first.close()
    second = SqliteResponseStore(tmp_path / "bridge.sqlite3")
    try:
        found = await second.get("resp_k", "alice")
        assert found is not None and found.body == {"k": True}
    finally:
        await second.close()


async def test_rows_from_before_owners_are_visible_to_the_anonymous_owner_only(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bridge.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE responses (id TEXT PRIMARY KEY, thread_id TEXT, turn_id TEXT, "
        "created_at REAL NOT NULL, body BLOB NOT NULL);"
    )
    old.execute(
        "INSERT INTO responses VALUES (?, ?, ?, ?, ?)",
        ("resp_legacy", "t", "u", time.time(), b'{"id":"resp_legacy"}'),
    )
    old.commit()
    old.close()
    store = SqliteResponseStore(path)
    try:
        assert await store.get("resp_legacy", "alice") is None
        legacy = await store.get("resp_legacy", ANONYMOUS_OWNER)
        assert legacy is not None
        assert legacy.owner is None and legacy.input_items == []
        await store.put(StoredResponse("resp_new", "t2", "u", time.time(), {}, "alice"))
        assert await store.get("resp_new", "alice") is not None
    finally:
        await store.close()
