"""The usage ledger: one row per request that ran a Codex turn, and `GET /v1/usage` over it.

A request that started (or continued) a Codex turn leaves a row whatever
its outcome (200, 4xx/5xx, 499 client gone, 504 deadline) with the tokens
Codex reported; turn sessions wait, bounded, for those figures before the
request ends (`bridge.api.turns`). Rows are queued by the access middleware
(never blocking a request) and written in batches to SQLite by one writer
task. The endpoint answers in the shape of OpenAI's completions usage API:
pages of day buckets whose results are grouped by API key name and model.
With API keys configured a caller sees its own key's usage only. Without
parameters it covers the current UTC day.

The ledger never takes a request down: a batch the database refuses
(read-only, full, locked, I/O error) is logged with its row count and
reported through `on_error(op)` (`codex_bridge_store_errors{store="usage"}`),
and those rows are lost; the writer task lives on and writes the next
batch. Row values are coerced to the column types when the row is made, so
one odd value cannot fail a batch. `close()` never raises.

Knows the access record and SQLite; no OpenAI request shapes.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from bridge.appkeys import ACCOUNTS
from bridge.errors import InvalidRequest
from bridge.ops.access import AccessRecord
from bridge.ops.auth import API_KEY
from bridge.sqlite import SqliteThread
from bridge.store import ANONYMOUS_OWNER

log = structlog.get_logger("bridge.usage")

DAY_S: Final = 86_400
# Unix seconds as ASCII digits only (str.isdigit also accepts "²" and other
# digits int() refuses), and no later than 9999-12-31: SQLite's integers and
# any real query window fit well inside.
_UNIX_S: Final = re.compile(r"[0-9]{1,12}")
MAX_UNIX_S: Final = 253_402_300_799
# Rows are written in batches of at most this many, as soon as any are queued.
BATCH_MAX: Final = 256
# At most this many days per query, as OpenAI's usage API.
MAX_BUCKETS: Final = 31
# SQLite INTEGER is 64-bit signed; a larger count (never real) is clamped, not a failed batch.
MAX_SQLITE_INT: Final = 2**63 - 1
# What a failed batch write can raise: SQLite's own errors, and a value it cannot bind.
WRITE_ERRORS: Final = (sqlite3.Error, ValueError, TypeError, OverflowError)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS usage (
    ts REAL NOT NULL,
    key_name TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
"""


@dataclass(frozen=True, slots=True)
class UsageRow:
    ts: float
    key_name: str
    model: str
    endpoint: str
    status: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int

    def values(self) -> tuple[float, str, str, str, int, int, int, int, int]:
        """The row's columns in table order (the SQLite row, the Redis member)."""
        return (
            self.ts,
            self.key_name,
            self.model,
            self.endpoint,
            self.status,
            self.input_tokens,
            self.cached_tokens,
            self.output_tokens,
            self.reasoning_tokens,
        )


class UsageLedger:
    def __init__(self, path: Path, *, on_error: Callable[[str], None] | None = None) -> None:
        self._db = SqliteThread(path, _SCHEMA)
        self._on_error = on_error
        self._queue: asyncio.Queue[UsageRow | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="usage-ledger")

    def record(self, row: UsageRow) -> None:
        self._queue.put_nowait(row)

    async def flush(self) -> None:
        """Writes whatever is queued now (before a query)."""
        rows = []
        while not self._queue.empty():
            row = self._queue.get_nowait()
            if row is None:  # close() is under way; leave the sentinel to the writer
                self._queue.put_nowait(None)
                break
            rows.append(row)
        await self._insert(rows)

    async def close(self) -> None:
        """Lets the writer drain the queue and stop (a sentinel, not a cancel: no row lost).

        Never raises: shutdown goes on whatever the database does.
        """
        try:
            if self._writer is not None:
                self._queue.put_nowait(None)
                await self._writer
            await self.flush()
        except Exception as exc:  # the writer only fails on a bug; shutdown must not
            log.error("usage ledger close failed", error=repr(exc))
        try:
            await self._db.close()
        except Exception as exc:
            log.error("usage ledger close failed", error=repr(exc))

    async def _write_loop(self) -> None:
        while True:
            rows: list[UsageRow] = []
            item = await self._queue.get()
            while item is not None:
                rows.append(item)
                if len(rows) >= BATCH_MAX or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            try:
                await self._insert(rows)
            except Exception as exc:  # never end the writer: later rows would pile up unwritten
                log.error("usage ledger write failed", rows=len(rows), error=repr(exc))
            if item is None:
                return

    async def _insert(self, rows: list[UsageRow]) -> None:
        """Writes one batch; a batch the database refuses is logged, counted and dropped."""
        if not rows:
            return
        try:
            await self._write(rows)
        except WRITE_ERRORS as exc:
            log.error("usage rows not recorded", rows=len(rows), error=repr(exc))
            if self._on_error is not None:
                self._on_error("insert")

    async def _write(self, rows: list[UsageRow]) -> None:
        values = [r.values() for r in rows]
        await self._db.run(
            lambda db: db.executemany("INSERT INTO usage VALUES (?,?,?,?,?,?,?,?,?)", values)
        )

    async def buckets(self, start: int, end: int, key_name: str | None) -> list[dict[str, Any]]:
        where = "ts >= ? AND ts < ?"
        args: list[Any] = [start, end]
        if key_name is not None:
            where += " AND key_name = ?"
            args.append(key_name)
        sql = (
            "SELECT CAST((ts - ?) / ? AS INTEGER) AS day, key_name, model, COUNT(*), "
            "SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens), SUM(reasoning_tokens) "
            f"FROM usage WHERE {where} GROUP BY day, key_name, model ORDER BY day, key_name, model"
        )
        rows = await self._db.run(lambda db: db.execute(sql, [start, DAY_S, *args]).fetchall())
        return day_buckets(rows, start, end)


def day_buckets(rows: Iterable[Sequence[Any]], start: int, end: int) -> list[dict[str, Any]]:
    """The page's buckets from (day, key, model, count, input, cached, output, reasoning) rows."""
    days = (end - start + DAY_S - 1) // DAY_S
    buckets = [
        {
            "object": "bucket",
            "start_time": start + i * DAY_S,
            "end_time": min(end, start + (i + 1) * DAY_S),
            "results": [],
        }
        for i in range(days)
    ]
    for day, key, model, count, inp, cached, out, reasoning in rows:
        buckets[day]["results"].append(
            {
                "object": "organization.usage.completions.result",
                "api_key_name": key,
                "model": model,
                "num_model_requests": count,
                "input_tokens": inp,
                "input_cached_tokens": cached,
                "output_tokens": out,
                "output_reasoning_tokens": reasoning,
            }
        )
    return buckets


USAGE: Final = web.AppKey("usage_ledger", UsageLedger)


def row_for(record: AccessRecord, endpoint: str, status: int) -> UsageRow | None:
    """The ledger row of a finished request, or None if it never reached a Codex turn."""
    if record.model is None or (record.turns == 0 and record.prompt_tokens is None):
        return None
    return UsageRow(
        ts=time.time(),
        # The store's owner spelling: no key name can be it (names carry no ':').
        key_name=str(record.key_name or ANONYMOUS_OWNER),
        model=str(record.model),
        endpoint=str(endpoint),
        status=_count(status),
        input_tokens=_count(record.prompt_tokens),
        cached_tokens=_count(record.cached_tokens),
        output_tokens=_count(record.completion_tokens),
        reasoning_tokens=_count(record.reasoning_tokens),
    )


def _count(value: object) -> int:
    """A non-negative INTEGER SQLite can bind, whatever Codex reported (None, float, huge)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if value != value or value < 0:  # NaN, negative
        return 0
    return min(int(value), MAX_SQLITE_INT) if value != float("inf") else MAX_SQLITE_INT


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _UNIX_S.fullmatch(raw):
        raise InvalidRequest(
            f"Invalid type for '{name}': expected an integer (unix seconds).",
            param=name,
            code="invalid_type",
        )
    value = int(raw)
    if value > MAX_UNIX_S:
        raise InvalidRequest(
            f"Invalid '{name}': integer above maximum value. Expected a value <= "
            f"{MAX_UNIX_S}, but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value


async def get_usage(request: web.Request) -> web.Response:
    """`GET /v1/usage[?start_time=<unix s>][&end_time=<unix s>]`: day buckets, newest included.

    Without `start_time` the window starts at the current UTC day's midnight:
    "what has this key used today" is the obvious first question.
    """
    now = int(time.time())
    start = _int_param(request, "start_time", now - now % DAY_S)
    end = _int_param(request, "end_time", now + 1)
    if end <= start:
        raise InvalidRequest("'end_time' must be after 'start_time'.", param="end_time")
    if (end - start) > MAX_BUCKETS * DAY_S:
        raise InvalidRequest(
            f"At most {MAX_BUCKETS} days per request.", param="end_time", code="invalid_value"
        )
    key = request.get(API_KEY)
    ledger = request.app[USAGE]
    await ledger.flush()
    data = await ledger.buckets(start, end, key.name if key is not None else None)
    body: dict[str, Any] = {"object": "page", "data": data, "has_more": False, "next_page": None}
    accounts = request.app.get(ACCOUNTS) or {}
    # The Codex plans' windows, as the provider last reported them (not per key).
    body["rate_limits"] = [
        {"account": name, **w.as_json()}
        for name, state in accounts.items()
        for w in state.windows()
    ]
    return web.Response(body=orjson.dumps(body), content_type="application/json")
