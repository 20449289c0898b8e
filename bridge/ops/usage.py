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

Knows the access record and SQLite; no OpenAI request shapes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

from bridge.errors import InvalidRequest
from bridge.ops.access import AccessRecord
from bridge.ops.auth import API_KEY
from bridge.sqlite import SqliteThread

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


class UsageLedger:
    def __init__(self, path: Path) -> None:
        self._db = SqliteThread(path, _SCHEMA)
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
        """Lets the writer drain the queue and stop (a sentinel, not a cancel: no row lost)."""
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
        await self.flush()
        await self._db.close()

    async def _write_loop(self) -> None:
        while True:
            rows: list[UsageRow] = []
            item = await self._queue.get()
            while item is not None:
                rows.append(item)
                if len(rows) >= BATCH_MAX or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            await self._insert(rows)
            if item is None:
                return

    async def _insert(self, rows: list[UsageRow]) -> None:
        if not rows:
            return
        values = [
            (
                r.ts,
                r.key_name,
                r.model,
                r.endpoint,
                r.status,
                r.input_tokens,
                r.cached_tokens,
                r.output_tokens,
                r.reasoning_tokens,
            )
            for r in rows
        ]
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
        key_name=record.key_name or "anonymous",
        model=record.model,
        endpoint=endpoint,
        status=status,
        input_tokens=record.prompt_tokens or 0,
        cached_tokens=record.cached_tokens,
        output_tokens=record.completion_tokens or 0,
        reasoning_tokens=record.reasoning_tokens,
    )


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
    body = {"object": "page", "data": data, "has_more": False, "next_page": None}
    return web.Response(body=orjson.dumps(body), content_type="application/json")
