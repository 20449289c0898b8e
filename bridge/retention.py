"""Removes what outlived its time: expired stored responses and the Codex threads they ended on.

`Retention.run()` is the periodic task (`store.purge_interval_s`): each pass
asks the store to drop responses older than `store.ttl_days` and deletes the
Codex threads no remaining response uses (`bridge.codex.threads`), then sets
the stored-responses gauge. `forget_thread` does the same for one response a
client deleted. A failed pass is logged and retried at the next interval;
it never stops the loop. With a shared store (Redis) the threads found
orphaned are announced to every instance, and each deletes the copies in
its own Codex home. Whatever the source of an orphan (this store's purge,
another instance's announcement, a deleted response), a thread a turn on
this instance still runs or is parked on (`in_use`) is not deleted: it waits
for a later pass. Knows the store, the pool and metrics; no HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
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
# Threads of deleted responses that wait for a purge pass because the store could not say
# whether another response uses them: bounded, as Redis can stay away for long.
MAX_UNCHECKED_THREADS: Final = 10_000


class Retention:
    def __init__(
        self,
        store: ResponseStore,
        codex_homes: Sequence[Path],
        metrics: Metrics,
        pool: WorkerPool | None,
        interval_s: float,
        *,
        in_use: Callable[[str], bool] = lambda thread_id: False,
    ) -> None:
        self._store = store
        self._codex_homes = tuple(codex_homes)
        self._metrics = metrics
        self._pool = pool
        self._interval_s = interval_s
        self._in_use = in_use
        """Whether a turn on this instance runs or is parked on the thread (only this
        instance knows its turns: a check by the instance that found the orphan is not enough)."""
        self._deferred: set[str] = set()
        """Threads for a later pass: orphans a turn here held, or threads of deleted responses
        the store could not check (`forget_thread`); asked about again at every pass."""

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
        orphans = [*orphans, *await self._freed()]
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
        if thread_id is None:
            return
        try:
            if await self._store.thread_in_use(thread_id):
                return
        except StoreUnavailable:
            # The response is gone already: a 503 would make the client's retry a 404 and
            # leak the thread. The next pass asks the store again (`_freed`) and deletes it.
            if len(self._deferred) < MAX_UNCHECKED_THREADS:
                self._deferred.add(thread_id)
            else:
                log.warning("thread of a deleted response left behind", thread=thread_id)
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

    async def _freed(self) -> list[str]:
        """The kept-back orphans no turn holds now and no stored response has come to use."""
        freed: list[str] = []
        for thread_id in sorted(self._deferred):
            if self._in_use(thread_id):
                continue
            try:
                used = await self._store.thread_in_use(thread_id)
            except StoreUnavailable:
                continue  # asked again at the next pass
            self._deferred.discard(thread_id)
            if not used:  # else it is orphaned again when its last response goes
                freed.append(thread_id)
        return freed

    async def _delete(self, thread_ids: list[str]) -> int:
        """Deletes the threads no turn here holds; the others are kept for a later pass."""
        busy = {t for t in thread_ids if self._in_use(t)}
        if busy:
            self._deferred |= busy
            log.info("orphaned threads kept while a turn holds them", threads=sorted(busy))
            thread_ids = [t for t in thread_ids if t not in busy]
            if not thread_ids:
                return 0
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
