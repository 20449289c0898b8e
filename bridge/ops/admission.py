"""Per-key concurrency limits: a key with `MAX_CONCURRENT` runs at most that many turns at once.

Requests over a key's limit wait (FIFO, bounded by the pool's queue timeout)
and then get 429. A fan-out takes its `n` slots in one step, all or none,
holding none while it waits. The global and per-worker caps live in the
worker pool; this is the per-caller layer in front of it. `KeyLimits` counts
on this instance; `bridge.ops.leases.RedisKeyLimits` holds the cap across
every instance sharing a Redis (`store.url`), with the same all-or-none `count`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, Protocol

from aiohttp import web

from bridge.errors import RateLimited


class ConcurrencyLimits(Protocol):
    def in_use(self, name: str) -> int:
        """Slots the key holds now, as far as this instance knows."""
        ...

    def hold(
        self, name: str, limit: int, timeout: float, count: int = 1
    ) -> AbstractAsyncContextManager[None]:
        """`count` of the key's `limit` slots, all or none, waited for up to `timeout`;
        RateLimited after."""
        ...


def key_limit_error(name: str, limit: int) -> RateLimited:
    return RateLimited(
        f"Too many concurrent requests for API key '{name}' (limit {limit}). Retry shortly.",
        retry_after=1,
    )


@dataclass(slots=True)
class _KeySlots:
    limit: int
    used: int = 0
    waiters: deque[tuple[int, asyncio.Future[None]]] = field(default_factory=deque)


class KeyLimits:
    def __init__(self) -> None:
        self._keys: dict[str, _KeySlots] = {}

    def in_use(self, name: str) -> int:
        slots = self._keys.get(name)
        return slots.used if slots is not None else 0

    def waiting(self, name: str) -> int:
        """Requests of the key waiting for slots."""
        slots = self._keys.get(name)
        return sum(not w.done() for _, w in slots.waiters) if slots is not None else 0

    @asynccontextmanager
    async def hold(
        self, name: str, limit: int, timeout: float, count: int = 1
    ) -> AsyncIterator[None]:
        """`count` of the key's slots (a fan-out's at once): all or none, FIFO, bounded wait."""
        slots = self._keys.setdefault(name, _KeySlots(limit))
        await self._take(slots, count, timeout, name)
        try:
            yield
        finally:
            slots.used -= count
            self._grant(slots)

    async def _take(self, slots: _KeySlots, count: int, timeout: float, name: str) -> None:
        if not slots.waiters and slots.used + count <= slots.limit:
            slots.used += count
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (count, waiter)
        slots.waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                slots.used -= count  # granted as the wait ended: give it back
            else:
                with contextlib.suppress(ValueError):  # already dropped by `_grant`
                    slots.waiters.remove(entry)
            self._grant(slots)
            if isinstance(exc, TimeoutError):
                raise key_limit_error(name, slots.limit) from None
            raise

    @staticmethod
    def _grant(slots: _KeySlots) -> None:
        """Hands freed slots to waiters strictly in arrival order (sync: no await in between)."""
        while slots.waiters:
            count, waiter = slots.waiters[0]
            if waiter.done():
                slots.waiters.popleft()
                continue
            if slots.used + count > slots.limit:
                return  # the oldest waiter keeps its place: later ones do not overtake it
            slots.waiters.popleft()
            slots.used += count
            waiter.set_result(None)


KEY_LIMITS: Final = web.AppKey("key_limits", ConcurrencyLimits)
