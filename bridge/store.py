"""State that outlives a request: stored responses and the Codex thread each one ended on.

`ResponseStore` is the small interface; `SqliteResponseStore` is the
embedded default (one file, survives restarts) and `MemoryResponseStore` the
in-memory one for tests. A stored response remembers its Codex thread and
turn, so `previous_response_id` continues the conversation by forking that
thread instead of re-sending it. Knows records; knows no HTTP and no Codex
protocol.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

# Stored responses are kept this long (OpenAI keeps them 30 days).
DEFAULT_TTL_S: Final = 30 * 24 * 3600


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    thread_id: str | None
    turn_id: str | None
    created_at: float
    body: dict[str, Any]


class ResponseStore(Protocol):
    async def put(self, record: StoredResponse) -> None: ...
    async def get(self, response_id: str) -> StoredResponse | None: ...
    async def close(self) -> None: ...


class MemoryResponseStore:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._records: dict[str, StoredResponse] = {}
        self._ttl_s = ttl_s

    async def put(self, record: StoredResponse) -> None:
        self._records[record.id] = record

    async def get(self, response_id: str) -> StoredResponse | None:
        record = self._records.get(response_id)
        if record is None or time.time() - record.created_at > self._ttl_s:
            return None
        return record

    async def close(self) -> None:
        self._records.clear()


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    thread_id TEXT,
    turn_id TEXT,
    created_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
"""


class SqliteResponseStore:
    """SQLite in WAL mode; every call runs in a worker thread so the event loop never blocks."""

    def __init__(self, path: Path, ttl_s: float = DEFAULT_TTL_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._ttl_s = ttl_s
        self._lock = asyncio.Lock()

    async def _run(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        async with self._lock:
            return await asyncio.to_thread(lambda: self._db.execute(sql, args).fetchall())

    async def put(self, record: StoredResponse) -> None:
        await self._run(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
            (
                record.id,
                record.thread_id,
                record.turn_id,
                record.created_at,
                orjson.dumps(record.body),
            ),
        )

    async def get(self, response_id: str) -> StoredResponse | None:
        rows = await self._run(
            "SELECT id, thread_id, turn_id, created_at, body FROM responses "
            "WHERE id = ? AND created_at > ?",
            (response_id, time.time() - self._ttl_s),
        )
        if not rows:
            return None
        rid, thread_id, turn_id, created_at, body = rows[0]
        return StoredResponse(rid, thread_id, turn_id, created_at, orjson.loads(body))

    async def close(self) -> None:
        async with self._lock:
            self._db.close()
