"""The ResponseStore contract, for the SQLite default, the in-memory store and Redis (a real server) alike."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from bridge.errors import StoreUnavailable
from bridge.redis_store import RedisResponseStore
from bridge.store import (
    ANONYMOUS_OWNER,
    MemoryResponseStore,
    ResponseStore,
    SqliteResponseStore,
    StoredResponse,
)
from tests.redis_server import RedisServer


@pytest.fixture(params=["sqlite", "memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResponseStore]:
    made: ResponseStore
    if request.param == "sqlite":
        made = SqliteResponseStore(tmp_path / "bridge.sqlite3", ttl_s=60)
    elif request.param == "memory":
        made = MemoryResponseStore(ttl_s=60)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        # One server for the session: each test its own key space.
        made = RedisResponseStore(server.url, ttl_s=60, prefix=f"test-{uuid.uuid4().hex}:")
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


async def test_a_redis_response_expires_by_itself_at_its_ttl(redis_server: RedisServer) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    store = RedisResponseStore(redis_server.url, ttl_s=60, prefix=prefix)
    try:
        await store.put(_record("resp_ttl", "alice", age_s=10))
        probe = redis.Redis.from_url(redis_server.url)
        try:
            left_ms = await probe.pttl(f"{prefix}resp:resp_ttl")
        finally:
            await probe.aclose()
        # Redis drops it by itself ~50 s from now: no purge pass is needed for it to go.
        assert 40_000 < left_ms <= 50_000
    finally:
        await store.close()


async def test_a_response_stored_by_one_instance_is_read_and_deleted_by_another(
    redis_server: RedisServer,
) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    a = RedisResponseStore(redis_server.url, ttl_s=60, prefix=prefix)
    b = RedisResponseStore(redis_server.url, ttl_s=60, prefix=prefix)
    try:
        await a.put(_record("resp_x", "alice", thread="t-x"))
        found = await b.get("resp_x", "alice")
        assert found is not None and found.thread_id == "t-x"
        assert await b.delete("resp_x", "alice") is not None
        assert await a.get("resp_x", "alice") is None
        assert not await a.thread_in_use("t-x")
    finally:
        await a.close()
        await b.close()


async def test_redis_down_answers_store_unavailable_and_the_store_recovers_when_it_returns(
    own_redis: RedisServer,
) -> None:
    failed: list[str] = []
    store = RedisResponseStore(own_redis.url, ttl_s=60, on_error=failed.append)
    seen: list[bool] = []
    store.on_change = seen.append
    try:
        await store.put(_record("resp_r", "alice"))
        own_redis.stop()
        with pytest.raises(StoreUnavailable) as raised:
            await store.get("resp_r", "alice")
        assert raised.value.status == 503 and raised.value.code == "store_unavailable"
        assert not await store.ping()
        assert store.available is False
        # Counted as SQLite's failures are (codex_bridge_store_errors); a probe is not.
        assert failed == ["get"]
        own_redis.start()
        # The same client, no restart: the next call reconnects.
        assert await store.ping()
        assert await store.get("resp_r", "alice") is not None
        assert store.available is True
        assert seen[-1] is True and False in seen
    finally:
        await store.close()
