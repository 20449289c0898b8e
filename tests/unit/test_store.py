"""The ResponseStore contract, for the SQLite default and the in-memory store alike."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.store import MemoryResponseStore, ResponseStore, SqliteResponseStore, StoredResponse


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResponseStore]:
    made: ResponseStore = (
        SqliteResponseStore(tmp_path / "bridge.sqlite3", ttl_s=60)
        if request.param == "sqlite"
        else MemoryResponseStore(ttl_s=60)
    )
    yield made
    await made.close()


async def test_a_stored_response_comes_back_whole(store: ResponseStore) -> None:
    record = StoredResponse("resp_1", "thread-1", "turn-1", time.time(), {"id": "resp_1", "n": 1})
    await store.put(record)
    assert await store.get("resp_1") == record
    assert await store.get("resp_2") is None


async def test_an_expired_response_is_gone(store: ResponseStore) -> None:
    old = StoredResponse("resp_old", "t", "u", time.time() - 3600, {})
    await store.put(old)
    assert await store.get("resp_old") is None


async def test_sqlite_responses_survive_reopening(tmp_path: Path) -> None:
    first = SqliteResponseStore(tmp_path / "bridge.sqlite3")
    await first.put(StoredResponse("resp_k", "t", "u", time.time(), {"k": True}))
    await first.close()
    second = SqliteResponseStore(tmp_path / "bridge.sqlite3")
    try:
        found = await second.get("resp_k")
        assert found is not None and found.body == {"k": True}
    finally:
        await second.close()
