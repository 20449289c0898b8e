"""State that outlives a request: stored responses and the Codex thread each one ended on.

`ResponseStore` is the small interface; `SqliteResponseStore` is the
embedded default (one file, survives restarts) and `MemoryResponseStore` the
in-memory one for tests. A stored response remembers its Codex thread and
turn, so `previous_response_id` continues the conversation by forking that
thread instead of re-sending it. Knows records; knows no HTTP and no Codex
protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from bridge.sqlite import SqliteThread

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
    """SQLite in WAL mode, on its own thread so the event loop never blocks."""

    def __init__(self, path: Path, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._db = SqliteThread(path, _SCHEMA)
        self._ttl_s = ttl_s

    async def put(self, record: StoredResponse) -> None:
        row = (
            record.id,
            record.thread_id,
            record.turn_id,
            record.created_at,
            orjson.dumps(record.body),
        )
        await self._db.run(
            lambda db: db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", row)
        )

    async def get(self, response_id: str) -> StoredResponse | None:
        since = time.time() - self._ttl_s
        rows = await self._db.run(
            lambda db: db.execute(
                "SELECT id, thread_id, turn_id, created_at, body FROM responses "
                "WHERE id = ? AND created_at > ?",
                (response_id, since),
            ).fetchall()
        )
        if not rows:
            return None
        rid, thread_id, turn_id, created_at, body = rows[0]
        return StoredResponse(rid, thread_id, turn_id, created_at, orjson.loads(body))

    async def close(self) -> None:
        await self._db.close()
