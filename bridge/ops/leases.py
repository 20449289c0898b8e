"""Per-key concurrency caps across instances: leased slots in the shared Redis.

With `store.url` set, a key's `MAX_CONCURRENT` holds for all instances
together. Each running turn of a capped key holds a lease: a member of the
sorted set `<prefix>slots:<key name>` scored by its expiry (Redis server
time, so instance clocks do not matter). A lease is taken by a Lua script
that first drops expired leases, then adds one if fewer than the cap are
held; the instance renews its leases every `RENEW_S`, so a crashed
instance's slots come back by themselves after `LEASE_S`, and a crash never
leaks capacity.

Inside one instance the local `KeyLimits` queue still orders waiters (FIFO)
and bounds them to the cap; a fan-out's `count` slots are taken all or none,
first locally and then as `count` leases in one script run, so it never
holds part of its slots in Redis while it waits; across instances a waiter polls for a free
lease every `POLL_S` until its wait (the pool's queue timeout) ends in 429.
A Redis that does not answer degrades to the local cap (logged, gauge
`codex_bridge_store_up`): chat keeps working while Redis is away; after such a
failure the shared `RedisBreaker` skips Redis for a while, so the requests
meanwhile do not each wait out a timeout first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import structlog
from redis.exceptions import RedisError

from bridge.ops.admission import KeyLimits, key_limit_error
from bridge.redis_store import KEY_PREFIX, RedisBreaker, connect

log = structlog.get_logger("bridge.leases")

# A lease outlives its last renewal by this long: how long a dead instance's slots stay taken.
LEASE_S: Final = 15.0
RENEW_S: Final = LEASE_S / 3
# How often a waiter on a full cap asks Redis again.
POLL_S: Final = 0.05

_ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
local count = tonumber(ARGV[4])
if held + count <= tonumber(ARGV[2]) then
  for i = 1, count do
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1] .. ':' .. i)
  end
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
  return {1, held + count}
end
return {0, held}
"""

_RENEW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * lease)
end
return #KEYS
"""


class RedisKeyLimits:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = KEY_PREFIX,
        lease_s: float = LEASE_S,
        renew_s: float = RENEW_S,
        breaker: RedisBreaker | None = None,
    ) -> None:
        self._redis = connect(url)
        self._breaker = breaker or RedisBreaker()
        self._prefix = prefix
        self._lease_ms = int(lease_s * 1000)
        self._renew_s = renew_s
        self._local = KeyLimits()
        self._instance = secrets.token_hex(8)
        self._ids = itertools.count()
        self._held: dict[str, str] = {}
        """lease member -> its sorted set."""
        self._seen: dict[str, int] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._acquire: Any = self._redis.register_script(_ACQUIRE)
        self._renew: Any = self._redis.register_script(_RENEW)
        self.on_change: Callable[[bool], None] | None = None
        self._available = True

    def in_use(self, name: str) -> int:
        return max(self._seen.get(name, 0), self._local.in_use(name))

    def _set_available(self, up: bool, exc: BaseException | None = None) -> None:
        if up != self._available:
            if up:
                log.info("cluster key limits reachable again")
            else:
                log.error("cluster key limits unreachable; local caps only", error=repr(exc))
        self._available = up
        if self.on_change is not None:
            self.on_change(up)

    def waiting(self, name: str) -> int:
        """Requests of the key waiting for slots on this instance (local queue only)."""
        return self._local.waiting(name)

    @asynccontextmanager
    async def hold(
        self, name: str, limit: int, timeout: float, count: int = 1
    ) -> AsyncIterator[None]:
        """`count` slots (a fan-out's at once): all or none here, then all or none in Redis."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._local.hold(name, limit, timeout, count):
            members = await self._lease(name, limit, deadline, count)
            try:
                yield
            finally:
                if members:
                    await self._release(members)

    async def _lease(self, name: str, limit: int, deadline: float, count: int) -> list[str]:
        """`count` leases in Redis taken in one script (all or none), or none when Redis does
        not answer (the local cap still holds)."""
        key = f"{self._prefix}slots:{name}"
        base = f"{self._instance}:{next(self._ids)}"
        loop = asyncio.get_running_loop()
        while True:
            try:
                got, held = await self._breaker.call(
                    lambda: self._acquire(keys=[key], args=[base, limit, self._lease_ms, count])
                )
            except (RedisError, OSError) as exc:
                self._set_available(False, exc)
                return []
            self._set_available(True)
            self._seen[name] = int(held)
            if int(got):
                members = [f"{base}:{i}" for i in range(1, count + 1)]
                for member in members:
                    self._held[member] = key
                self._start_renewer()
                return members
            if loop.time() + POLL_S > deadline:
                raise key_limit_error(name, limit)
            # Polls the shared count, bounded by the deadline above.
            await asyncio.sleep(POLL_S)

    async def _release(self, members: list[str]) -> None:
        key = self._held.get(members[0])
        if key is None:
            return  # released already (by close())
        for member in members:
            self._held.pop(member, None)
        try:
            await self._breaker.call(lambda: self._redis.zrem(key, *members))
            self._seen[key.removeprefix(f"{self._prefix}slots:")] = int(
                await self._breaker.call(lambda: self._redis.zcard(key))
            )
        except (RedisError, OSError) as exc:
            # The lease runs out by itself after LEASE_S.
            log.warning("lease not released", error=repr(exc))

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever(), name="lease-renewer")

    async def _renew_forever(self) -> None:
        while self._held:
            await asyncio.sleep(self._renew_s)
            held = dict(self._held)
            if not held:
                break
            try:
                await self._breaker.call(
                    functools.partial(
                        self._renew, keys=list(held.values()), args=[self._lease_ms, *held]
                    )
                )
            except (RedisError, OSError) as exc:
                log.warning("leases not renewed", error=repr(exc))

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for member in list(self._held):
            await self._release([member])
        await self._redis.aclose()
