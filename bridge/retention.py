"""Removes what outlived its time: expired stored responses and the Codex threads they ended on.

`Retention.run()` is the periodic task (`store.purge_interval_s`): each pass
asks the store to drop responses older than `store.ttl_days` and deletes the
Codex threads no remaining response uses (`bridge.codex.threads`), then sets
the stored-responses gauge. `forget_thread` does the same for one response a
client deleted. A failed pass is logged and retried at the next interval;
it never stops the loop. With a shared store (Redis) the threads found
orphaned are announced to every instance, and each deletes the copies in
its own Codex home. Knows the store, the pool and metrics; no HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web

from bridge.codex.threads import delete_threads, has_rollout
from bridge.errors import StoreUnavailable
from bridge.ops.metrics import Metrics
from bridge.redis_store import RedisResponseStore
from bridge.store import ResponseStore
from bridge.worker.pool import WorkerPool

log = structlog.get_logger("bridge.retention")

# With a shared store, a thread found orphaned is announced to the other instances for
# this many purge intervals: each deletes its own copy at its next pass.
ORPHAN_SHARE_INTERVALS: Final = 3


class Retention:
    def __init__(
        self,
        store: ResponseStore,
        codex_homes: Sequence[Path],
        metrics: Metrics,
        pool: WorkerPool | None,
        interval_s: float,
    ) -> None:
        self._store = store
        self._codex_homes = tuple(codex_homes)
        self._metrics = metrics
        self._pool = pool
        self._interval_s = interval_s

    async def run(self) -> None:
        # Logged (and counted) by the store; a shared store down at startup: the next pass counts.
        with contextlib.suppress(StoreUnavailable):
            self._metrics.stored_responses.set(await self._store.count())
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.purge()
            except Exception as exc:  # a broken pass must not end the loop
                log.error("purge of expired responses failed", error=repr(exc))

    async def purge(self) -> tuple[int, int]:
        """One pass: (responses removed, threads deleted)."""
        removed, orphans = await self._store.purge()
        orphans = await self._with_shared(orphans)
        threads = await self._delete(orphans) if orphans else 0
        self._metrics.store_purged.labels("responses").inc(removed)
        self._metrics.store_purged.labels("threads").inc(threads)
        self._metrics.stored_responses.set(await self._store.count())
        if removed:
            log.info("expired responses purged", responses=removed, threads=threads)
        return removed, threads

    async def forget_thread(self, thread_id: str | None) -> None:
        """After a client deleted a response: its thread goes too, unless another uses it."""
        self._metrics.stored_responses.dec()
        if thread_id is None or await self._store.thread_in_use(thread_id):
            return
        await self._with_shared([thread_id])
        await self._delete([thread_id])

    async def _with_shared(self, orphans: list[str]) -> list[str]:
        """With a shared store: tells the other instances of these orphans, and adds theirs
        whose threads are in one of this instance's Codex homes."""
        store = self._store
        if not isinstance(store, RedisResponseStore):
            return orphans
        try:
            await store.share_orphans(orphans, keep_s=ORPHAN_SHARE_INTERVALS * self._interval_s)
            theirs = set(await store.shared_orphans()) - set(orphans)
        except StoreUnavailable:
            return orphans  # the other instances learn of these at a later pass, or never

        here = await asyncio.to_thread(
            lambda: [
                t for t in sorted(theirs) if any(has_rollout(home, t) for home in self._codex_homes)
            ]
        )
        return [*orphans, *here]

    async def _delete(self, thread_ids: list[str]) -> int:
        if len(self._codex_homes) > 1:
            # A pool of accounts: a thread lives in one of the homes, and a worker of
            # another account would call it gone. The rollout files say where it is.
            deleted = 0
            for home in self._codex_homes:
                deleted += await delete_threads(None, home, thread_ids)
            return deleted
        worker = self._pool.any_ready() if self._pool is not None else None
        return await delete_threads(worker, self._codex_homes[0], thread_ids)


RETENTION: Final = web.AppKey("retention", Retention)
