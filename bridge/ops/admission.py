"""Per-key concurrency limits: a key with `MAX_CONCURRENT` runs at most that many turns at once.

Requests over a key's limit wait (FIFO, bounded by the pool's queue timeout)
and then get 429. The global and per-worker caps live in the worker pool;
this is the per-caller layer in front of it. `KeyLimits` counts on this
instance; `bridge.ops.leases.RedisKeyLimits` holds the cap across every
instance sharing a Redis (`store.url`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final, Protocol

from aiohttp import web

from bridge.errors import RateLimited


class ConcurrencyLimits(Protocol):
    def in_use(self, name: str) -> int:
        """Slots the key holds now, as far as this instance knows."""
        ...

    def hold(self, name: str, limit: int, timeout: float) -> AbstractAsyncContextManager[None]:
        """One of the key's `limit` slots, waited for up to `timeout`; RateLimited after."""
        ...


def key_limit_error(name: str, limit: int) -> RateLimited:
    return RateLimited(
        f"Too many concurrent requests for API key '{name}' (limit {limit}). Retry shortly.",
        retry_after=1,
    )


class KeyLimits:
    def __init__(self) -> None:
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._in_use: dict[str, int] = {}

    def in_use(self, name: str) -> int:
        return self._in_use.get(name, 0)

    @asynccontextmanager
    async def hold(self, name: str, limit: int, timeout: float) -> AsyncIterator[None]:
        semaphore = self._semaphores.setdefault(name, asyncio.Semaphore(limit))
        try:
            async with asyncio.timeout(timeout):
                await semaphore.acquire()
        except TimeoutError:
            raise key_limit_error(name, limit) from None
        self._in_use[name] = self._in_use.get(name, 0) + 1
        try:
            yield
        finally:
            self._in_use[name] -= 1
            semaphore.release()


KEY_LIMITS: Final = web.AppKey("key_limits", ConcurrencyLimits)
