"""Account rests shared across instances: an account at its usage limit rests on every instance.

With `store.url` set, an instance that finds an account of its pool at its
usage limit publishes when it rests until (epoch seconds, the reset time of
the exhausted window) under `<prefix>rest:<account name>`, with a TTL equal
to the remaining rest, so the key goes away by itself when the account has
room again. Accounts are named by `codex.accounts`: instances configured
with the same names share their rests, each with its own Codex homes.

Every instance reads the rests of its accounts into
`AccountState.shared_rest_until`, which the pool's ranking and the usage
limit error read from memory. One background task does both directions
every `REFRESH_S` (one MGET, a SET only for a new rest), so no request and
no delta ever waits on Redis. Every call is bounded (the store's
`CONNECT_TIMEOUT_S` / `SOCKET_TIMEOUT_S`); a Redis that does not answer
leaves each instance with what it knows itself (plus the rests it already
read, which end at their own reset time) until Redis is back.

Knows account names, rest times and Redis; no HTTP, no Codex protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

import structlog
from redis.exceptions import RedisError

from bridge.codex.account import AccountState
from bridge.redis_store import KEY_PREFIX, connect

log = structlog.get_logger("bridge.account_rests")

# How often an instance publishes its new rests and reads everyone's: the most a rest
# found on one instance takes to reach the others, and at most one Redis round trip a second.
REFRESH_S: Final = 1.0


class SharedAccountRests:
    def __init__(
        self,
        url: str,
        accounts: dict[str, AccountState],
        *,
        prefix: str = KEY_PREFIX,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._redis = connect(url)
        self._accounts = accounts
        self._names = list(accounts)
        self._keys = [f"{prefix}rest:{name}" for name in self._names]
        self._refresh_s = refresh_s
        self._published: dict[str, int] = {}
        """account name -> the rest this instance last published for it."""
        self._task: asyncio.Task[None] | None = None
        self.available = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="account-rests")

    async def _run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self._refresh_s)

    async def sync(self, now: float | None = None) -> None:
        """Publishes the rests this instance found, then reads every instance's."""
        now = time.time() if now is None else now
        try:
            for name, key in zip(self._names, self._keys, strict=True):
                until = self._accounts[name].local_reset_at(now)
                if until is None or until <= self._published.get(name, 0):
                    continue
                # Only ever lengthens a rest: a shorter one published elsewhere is overwritten,
                # a longer one is kept (GT needs Redis 7, so the script compares itself).
                await self._redis.eval(_PUBLISH, 1, key, until, max(1, int(until - now)))
                self._published[name] = until
                log.warning("account rests on every instance", account=name, until=until)
            values = await self._redis.mget(self._keys)
        except (RedisError, OSError) as exc:
            if self.available:
                log.error("shared account rests unreachable; local state only", error=repr(exc))
            self.available = False
            return
        if not self.available:
            log.info("shared account rests reachable again")
        self.available = True
        for name, raw in zip(self._names, values, strict=True):
            self._accounts[name].shared_rest_until = _epoch(raw, now)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()


_PUBLISH: Final = """
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
if old >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def _epoch(raw: bytes | str | None, now: float) -> int | None:
    if raw is None:
        return None
    try:
        until = int(raw)
    except ValueError:
        return None
    return until if until > now else None
