"""The usage ledger in the shared Redis: `/v1/usage` gives the same answer on every instance.

With `store.url` set, each instance writes its ledger rows (the same rows
as `bridge.ops.usage.UsageLedger`, queued off the request path and written
in batches) into one sorted set scored by time, and `/v1/usage` aggregates
the window from there, whichever instance serves it. Rows older than
`KEEP_S` are trimmed as new ones are written. A batch Redis refuses is kept
(up to `RETRY_MAX` rows) and written with the next one; a query while Redis
is away answers 503 `store_unavailable` (at once while the shared
`RedisBreaker` skips a Redis that failed lately). Knows ledger rows and Redis; the
HTTP handler is `bridge.ops.usage.get_usage`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Final

import orjson
import structlog
from redis.exceptions import RedisError

from bridge.errors import StoreUnavailable
from bridge.ops.usage import DAY_S, UsageLedger, UsageRow, day_buckets
from bridge.redis_store import KEY_PREFIX, RedisBreaker, connect

log = structlog.get_logger("bridge.usage")

# Rows are kept this long (the usage API answers at most 31 days per query, anywhere in time).
KEEP_S: Final = 400 * DAY_S
# Rows kept in memory while Redis refuses them; past this the oldest are dropped (and logged).
RETRY_MAX: Final = 100_000


class RedisUsageLedger(UsageLedger):
    def __init__(
        self,
        url: str,
        *,
        prefix: str = KEY_PREFIX,
        on_error: Callable[[str], None] | None = None,
        breaker: RedisBreaker | None = None,
    ) -> None:
        self._on_error = on_error
        self._breaker = breaker or RedisBreaker()
        self._queue: asyncio.Queue[UsageRow | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._redis = connect(url)
        self._key = f"{prefix}usage"
        self._unwritten: list[UsageRow] = []

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
        await self.flush()
        if self._unwritten:
            log.error("usage rows not written: Redis unavailable", rows=len(self._unwritten))
        await self._redis.aclose()

    async def _insert(self, rows: list[UsageRow]) -> None:
        batch = [*self._unwritten, *rows]
        if not batch:
            return
        members = {
            # A random tail: two equal rows are two requests.
            orjson.dumps([*r.values(), secrets.token_hex(6)]): r.ts
            for r in batch
        }

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as tx:
                tx.zadd(self._key, members)
                tx.zremrangebyscore(self._key, "-inf", time.time() - KEEP_S)
                await tx.execute()

        try:
            await self._breaker.call(write)
        except (RedisError, OSError) as exc:
            if len(batch) > RETRY_MAX:
                log.error("usage rows dropped: Redis unavailable", rows=len(batch) - RETRY_MAX)
            self._unwritten = batch[-RETRY_MAX:]
            log.warning("usage rows not written yet", rows=len(self._unwritten), error=repr(exc))
            if self._on_error is not None:
                self._on_error("insert")
            return
        self._unwritten = []

    async def buckets(self, start: int, end: int, key_name: str | None) -> list[dict[str, Any]]:
        try:
            raw: Any = await self._breaker.call(
                lambda: self._redis.zrangebyscore(self._key, start, f"({end}")
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                "The usage ledger (Redis) is unavailable right now.", retry_after=2
            ) from exc
        sums: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
        for member in raw:
            ts, key, model, _, _, inp, cached, out, reasoning, _ = orjson.loads(member)
            if key_name is not None and key != key_name:
                continue
            total = sums[(int((ts - start) // DAY_S), key, model)]
            for i, value in enumerate((1, inp, cached, out, reasoning)):
                total[i] += value
        rows = [(*group, *total) for group, total in sorted(sums.items())]
        return day_buckets(rows, start, end)
