"""The response store on a shared Redis: what lets several bridge instances continue each other's responses.

`RedisResponseStore` keeps the `bridge.store.ResponseStore` contract (owner
scoping, input items, TTL, delete, purge and count) with Redis as the one
copy, so a response created on one instance can be read, deleted or
continued on any other. Chosen by `store.url`; SQLite stays the default.

Layout, under `KEY_PREFIX`:

- `resp:<id>`: the record (JSON), expiring by itself when its TTL is over;
- `created` (sorted set, id -> created_at): what purge and count walk;
- `thread_of` (hash, id -> Codex thread id): survives the record's expiry, so
  purge can still name the threads of responses Redis already dropped;
- `thread:<thread id>` (set of ids): whether any response still uses a thread;
- `orphans` (sorted set, thread id -> when): threads no response uses any
  more, so every instance deletes its own copy (`bridge.retention`).

Every call is bounded (`SOCKET_TIMEOUT_S`, `CONNECT_TIMEOUT_S`, one retry
on a fresh connection); a Redis that does not answer raises
`StoreUnavailable` (503) and flips `available`, which `/readyz` and the
`codex_bridge_store_up` gauge report. After a failure, `RedisBreaker` (one
shared by the store, the usage ledger and the key leases) skips Redis for
`BREAKER_OPEN_S`, then lets one probe through (and `/readyz`'s ping always):
a Redis that is away costs one timeout per window, not one per request; each failed operation is also reported
through `on_error(op)` (`codex_bridge_store_errors`, as for SQLite). redis-py reconnects on the next call,
so the bridge recovers by itself when Redis returns. Knows records and
Redis; no HTTP, no Codex protocol.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import orjson
import structlog
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from bridge.errors import StoreUnavailable
from bridge.store import DEFAULT_TTL_S, StoredResponse, visible_to

log = structlog.get_logger("bridge.redis_store")

KEY_PREFIX: Final = "codex-bridge:"
# No request hangs on Redis: a connect or a reply that takes longer is a failure.
CONNECT_TIMEOUT_S: Final = 1.0
SOCKET_TIMEOUT_S: Final = 2.0
# One retry on a fresh connection: the first call after a Redis restart meets a dead
# pooled connection, and the retry is what makes recovery need no operator.
RETRIES: Final = 1
# Purge removes at most this many expired responses per pass (the next pass continues).
PURGE_BATCH: Final = 1000
# After Redis failed to answer, calls skip it (failing at once) this long; then one probe goes.
BREAKER_OPEN_S: Final = 5.0

T = TypeVar("T")


def _encode(record: StoredResponse) -> bytes:
    return orjson.dumps(
        {
            "id": record.id,
            "thread_id": record.thread_id,
            "turn_id": record.turn_id,
            "created_at": record.created_at,
            "body": record.body,
            "owner": record.owner,
            "input": record.input_items,
        }
    )


def _decode(raw: bytes) -> StoredResponse:
    data = orjson.loads(raw)
    return StoredResponse(
        id=data["id"],
        thread_id=data["thread_id"],
        turn_id=data["turn_id"],
        created_at=data["created_at"],
        body=data["body"],
        owner=data["owner"],
        input_items=data["input"],
    )


def connect(url: str) -> Redis:
    """A client whose every call is bounded; it reconnects by itself on the next call."""
    return Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), RETRIES),
    )


class BreakerOpen(RedisConnectionError):
    """Redis was skipped: it failed lately (a connection error to every caller's handler)."""


class RedisBreaker:
    """Skips Redis for `open_s` after it failed to answer, then lets one probe call through.

    Only a Redis that did not answer (connection error, timeout) opens it; an
    error Redis answered with is its answer. Shared by every client of one
    Redis, so a store save, a key lease and a usage write learn of an outage
    from each other's first timeout.
    """

    def __init__(
        self, open_s: float = BREAKER_OPEN_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._open_s = open_s
        self._clock = clock
        self._open_until: float | None = None
        """None: closed (Redis answers)."""
        self._probing = False

    @property
    def open(self) -> bool:
        return self._open_until is not None

    async def call(self, work: Callable[[], Awaitable[T]], *, probe: bool = False) -> T:
        """`work()`, or `BreakerOpen` at once while Redis is skipped.

        A `probe` (the `/readyz` ping) always goes: it says whether Redis is
        back, and closes the breaker when it is.
        """
        mine = False
        if self._open_until is not None and not probe:
            if self._probing or self._clock() < self._open_until:
                raise BreakerOpen("Redis is skipped after a recent failure")
            self._probing = mine = True
        try:
            result = await work()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            if self._open_until is None:
                log.warning("redis unreachable; skipped for a while", open_s=self._open_s)
            self._open_until = self._clock() + self._open_s
            raise
        except RedisError:
            self._close()  # Redis answered, with an error of its own
            raise
        finally:
            if mine:  # ended, or cut short (cancelled): the next call may probe
                self._probing = False
        self._close()
        return result

    def _close(self) -> None:
        if self._open_until is not None:
            log.info("redis answers again")
        self._open_until = None


class RedisResponseStore:
    def __init__(
        self,
        url: str,
        ttl_s: float = DEFAULT_TTL_S,
        *,
        prefix: str = KEY_PREFIX,
        on_error: Callable[[str], None] | None = None,
        breaker: RedisBreaker | None = None,
    ) -> None:
        self._redis = connect(url)
        self._breaker = breaker or RedisBreaker()
        self._on_error = on_error
        self._ttl_s = ttl_s
        self._prefix = prefix
        self.available = True
        """Whether the last call reached Redis."""
        self.on_change: Callable[[bool], None] | None = None

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def _call(self, op: str, work: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await self._breaker.call(work, probe=op == "ping")
        except (RedisError, OSError) as exc:
            self._set_available(False, exc)
            if self._on_error is not None and op != "ping":  # probes show in the gauge only
                self._on_error(op)
            raise StoreUnavailable(
                "The response store (Redis) is unavailable: stored responses cannot be read, "
                "continued or kept right now. Requests without previous_response_id still work.",
                retry_after=2,
            ) from exc
        self._set_available(True)
        return result

    def _set_available(self, up: bool, exc: BaseException | None = None) -> None:
        if up != self.available:
            if up:
                log.info("response store reachable again")
            else:
                log.error("response store unreachable", error=repr(exc))
        self.available = up
        if self.on_change is not None:
            self.on_change(up)

    async def ping(self) -> bool:
        try:
            await self._call("ping", self._redis.ping)
        except StoreUnavailable:
            return False
        return True

    async def put(self, record: StoredResponse) -> None:
        remaining_ms = int((record.created_at + self._ttl_s - time.time()) * 1000)

        async def work() -> None:
            async with self._redis.pipeline(transaction=True) as tx:
                tx.set(self._key("resp", record.id), _encode(record), px=max(1, remaining_ms))
                tx.zadd(self._key("created"), {record.id: record.created_at})
                if record.thread_id is not None:
                    tx.hset(self._key("thread_of"), record.id, record.thread_id)
                    tx.sadd(self._key("thread", record.thread_id), record.id)
                await tx.execute()

        await self._call("put", work)

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        raw: Any = await self._call("get", lambda: self._redis.get(self._key("resp", response_id)))
        if raw is None:
            return None
        record = _decode(raw)
        if time.time() - record.created_at >= self._ttl_s or not visible_to(record.owner, owner):
            return None
        return record

    async def delete(self, response_id: str, owner: str) -> StoredResponse | None:
        record = await self.get(response_id, owner)
        if record is not None:
            await self._call("delete", lambda: self._forget([(record.id, record.thread_id)]))
        return record

    async def _forget(self, entries: list[tuple[str, str | None]]) -> None:
        async with self._redis.pipeline(transaction=True) as tx:
            for rid, thread_id in entries:
                tx.delete(self._key("resp", rid))
                tx.zrem(self._key("created"), rid)
                tx.hdel(self._key("thread_of"), rid)
                if thread_id is not None:
                    tx.srem(self._key("thread", thread_id), rid)
            await tx.execute()

    async def thread_in_use(self, thread_id: str) -> bool:
        users: Any = await self._call(
            "thread_in_use", lambda: self._redis.scard(self._key("thread", thread_id))
        )
        return int(users) > 0

    async def purge(self) -> tuple[int, list[str]]:
        before = time.time() - self._ttl_s
        raw_ids: Any = await self._call(
            "purge",
            lambda: self._redis.zrangebyscore(
                self._key("created"), "-inf", before, start=0, num=PURGE_BATCH
            ),
        )
        ids = [r.decode() for r in raw_ids]
        if not ids:
            return 0, []
        raw_threads: Any = await self._call(
            "purge", lambda: self._redis.hmget(self._key("thread_of"), ids)
        )
        threads = [t.decode() if t is not None else None for t in raw_threads]
        await self._call("purge", lambda: self._forget(list(zip(ids, threads, strict=True))))
        orphans = [t for t in sorted({t for t in threads if t}) if not await self.thread_in_use(t)]
        return len(ids), orphans

    async def share_orphans(self, thread_ids: list[str], keep_s: float) -> None:
        """Names threads no response uses any more, for every instance to delete its copy."""
        now = time.time()

        async def work() -> None:
            async with self._redis.pipeline(transaction=True) as tx:
                if thread_ids:
                    tx.zadd(self._key("orphans"), dict.fromkeys(thread_ids, now))
                tx.zremrangebyscore(self._key("orphans"), "-inf", now - keep_s)
                await tx.execute()

        await self._call("share_orphans", work)

    async def shared_orphans(self) -> list[str]:
        """Threads any instance found orphaned lately (within the last `keep_s` shared)."""
        raw: Any = await self._call(
            "shared_orphans", lambda: self._redis.zrange(self._key("orphans"), 0, -1)
        )
        return [t.decode() for t in raw]

    async def count(self) -> int:
        total: Any = await self._call("count", lambda: self._redis.zcard(self._key("created")))
        return int(total)

    async def close(self) -> None:
        await self._redis.aclose()
