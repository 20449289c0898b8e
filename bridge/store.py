"""State that outlives a request: stored responses, who owns them, and the Codex thread of each.

`ResponseStore` is the small interface; `SqliteResponseStore` is the
embedded default (one file, survives restarts), `MemoryResponseStore` the
in-memory one for tests, and `bridge.redis_store.RedisResponseStore` the
one several instances share. A stored response remembers its owner (the API key
name, or `ANONYMOUS_OWNER` when no keys are configured), its input items,
and its Codex thread and turn, so `previous_response_id` continues the
conversation by forking that thread instead of re-sending it.

Every read is scoped by owner: another owner's response is indistinguishable
from one that does not exist. Rows written before owners existed (owner
NULL) are visible to the anonymous owner only: a bridge without keys is one
tenant, and a bridge with keys cannot know which key wrote them.

A database that fails (read-only, full, I/O error) is logged and reported
through `on_error(op)` (the `codex_bridge_store_errors` metric) and raised
as `StoreUnavailable` (503): a response that cannot be stored is still
answered (`bridge.api.stored_responses`), a lookup that cannot be made is
not mistaken for "not found".

Knows records; knows no HTTP and no Codex protocol.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import orjson
import structlog

from bridge.errors import StoreUnavailable
from bridge.sqlite import SqliteThread

log = structlog.get_logger("bridge.store")

T = TypeVar("T")

# Seconds a client waits before retrying a request the store failed.
STORE_RETRY_AFTER_S: Final = 5

# Stored responses are kept this long (OpenAI keeps them 30 days).
DEFAULT_TTL_S: Final = 30 * 24 * 3600

ANONYMOUS_OWNER: Final = ":anonymous"
"""The one owner of everything when no API keys are configured. No key name can contain ':'
(keys are `NAME:KEY` entries), so no key can ever be this owner."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    thread_id: str | None
    turn_id: str | None
    created_at: float
    body: dict[str, Any]
    owner: str | None
    """None only for rows written before owners existed."""
    input_items: list[dict[str, Any]] = field(default_factory=list)


def visible_to(record_owner: str | None, owner: str) -> bool:
    return record_owner == owner or (record_owner is None and owner == ANONYMOUS_OWNER)


class ResponseStore(Protocol):
    async def put(self, record: StoredResponse) -> None: ...
    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The live (unexpired) response if `owner` may see it."""
        ...

    async def delete(self, response_id: str, owner: str) -> StoredResponse | None:
        """Removes the owner's response; the removed record, or None if there was none."""
        ...

    async def thread_in_use(self, thread_id: str) -> bool:
        """Whether any stored response (expired or not) still ends on this Codex thread."""
        ...

    async def purge(self) -> tuple[int, list[str]]:
        """Removes expired responses: how many, and the Codex threads no response uses now."""
        ...

    async def count(self) -> int: ...
    async def ping(self) -> bool:
        """Whether the store answers now (always, for the embedded ones)."""
        ...

    async def close(self) -> None: ...


class MemoryResponseStore:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._records: dict[str, StoredResponse] = {}
        self._ttl_s = ttl_s

    def _live(self, record: StoredResponse) -> bool:
        return time.time() - record.created_at < self._ttl_s

    async def put(self, record: StoredResponse) -> None:
        self._records[record.id] = record

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        record = self._records.get(response_id)
        if record is None or not self._live(record) or not visible_to(record.owner, owner):
            return None
        return record

    async def delete(self, response_id: str, owner: str) -> StoredResponse | None:
        record = await self.get(response_id, owner)
        if record is not None:
            del self._records[response_id]
        return record

    async def thread_in_use(self, thread_id: str) -> bool:
        return any(r.thread_id == thread_id for r in self._records.values())

    async def purge(self) -> tuple[int, list[str]]:
        expired = [r for r in self._records.values() if not self._live(r)]
        for record in expired:
            del self._records[record.id]
        threads = {r.thread_id for r in expired if r.thread_id is not None}
        in_use = {r.thread_id for r in self._records.values()}
        return len(expired), sorted(threads - in_use)

    async def count(self) -> int:
        return len(self._records)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._records.clear()


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    thread_id TEXT,
    turn_id TEXT,
    created_at REAL NOT NULL,
    body BLOB NOT NULL,
    owner TEXT,
    input BLOB
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
CREATE INDEX IF NOT EXISTS responses_thread ON responses (thread_id);
"""

# Columns added after the first release, in order; a database an older bridge
# created gets them (NULL in old rows) when it is opened.
_ADDED_COLUMNS: Final = (("owner", "TEXT"), ("input", "BLOB"))
_COLUMNS: Final = "id, thread_id, turn_id, created_at, body, owner, input"


def _migrate(path: Path) -> None:
    if not path.exists():
        return
    db = sqlite3.connect(path, isolation_level=None)
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
        if not columns:
            return
        for name, kind in _ADDED_COLUMNS:
            if name not in columns:
                db.execute(f"ALTER TABLE responses ADD COLUMN {name} {kind}")
    finally:
        db.close()


def _record(row: tuple[Any, ...]) -> StoredResponse:
    rid, thread_id, turn_id, created_at, body, owner, items = row
    return StoredResponse(
        rid,
        thread_id,
        turn_id,
        created_at,
        orjson.loads(body),
        owner,
        orjson.loads(items) if items else [],
    )


class SqliteResponseStore:
    """SQLite in WAL mode, on its own thread so the event loop never blocks."""

    def __init__(
        self,
        path: Path,
        ttl_s: float = DEFAULT_TTL_S,
        *,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        _migrate(path)
        self._db = SqliteThread(path, _SCHEMA)
        self._ttl_s = ttl_s
        self._on_error = on_error

    async def _run(self, op: str, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._db.run(work)
        except sqlite3.Error as exc:
            log.error("response store failed", op=op, error=repr(exc))
            if self._on_error is not None:
                self._on_error(op)
            raise StoreUnavailable(
                "The response store is unavailable; retry shortly.",
                retry_after=STORE_RETRY_AFTER_S,
            ) from exc

    async def put(self, record: StoredResponse) -> None:
        row = (
            record.id,
            record.thread_id,
            record.turn_id,
            record.created_at,
            orjson.dumps(record.body),
            record.owner,
            orjson.dumps(record.input_items),
        )
        await self._run(
            "put",
            lambda db: db.execute(
                f"INSERT OR REPLACE INTO responses ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row
            ),
        )

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        since = time.time() - self._ttl_s
        rows = await self._run(
            "get",
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND created_at > ?",
                (response_id, since),
            ).fetchall(),
        )
        if not rows or not visible_to(rows[0][5], owner):
            return None
        return _record(rows[0])

    async def delete(self, response_id: str, owner: str) -> StoredResponse | None:
        record = await self.get(response_id, owner)
        if record is not None:
            await self._run(
                "delete",
                lambda db: db.execute("DELETE FROM responses WHERE id = ?", (response_id,)),
            )
        return record

    async def thread_in_use(self, thread_id: str) -> bool:
        rows = await self._run(
            "thread_in_use",
            lambda db: db.execute(
                "SELECT 1 FROM responses WHERE thread_id = ? LIMIT 1", (thread_id,)
            ).fetchall(),
        )
        return bool(rows)

    async def purge(self) -> tuple[int, list[str]]:
        before = time.time() - self._ttl_s

        def work(db: sqlite3.Connection) -> tuple[int, list[str]]:
            db.execute("BEGIN IMMEDIATE")
            try:
                threads = [
                    row[0]
                    for row in db.execute(
                        "SELECT DISTINCT thread_id FROM responses "
                        "WHERE created_at <= ? AND thread_id IS NOT NULL",
                        (before,),
                    )
                ]
                removed = db.execute(
                    "DELETE FROM responses WHERE created_at <= ?", (before,)
                ).rowcount
                orphans = [
                    thread
                    for thread in threads
                    if db.execute(
                        "SELECT 1 FROM responses WHERE thread_id = ? LIMIT 1", (thread,)
                    ).fetchone()
                    is None
                ]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return removed, orphans

        return await self._run("purge", work)

    async def count(self) -> int:
        rows = await self._run(
            "count", lambda db: db.execute("SELECT COUNT(*) FROM responses").fetchall()
        )
        return int(rows[0][0])

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        await self._db.close()
