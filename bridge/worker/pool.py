"""The worker pool: N supervised workers and the admission queue in front of them.

`lease()` hands out the least-loaded ready worker that has a free turn slot.
When every slot is taken the caller waits in a bounded FIFO queue for a
bounded time; a full queue or an expired wait is `RateLimited` (429 with
Retry-After), and no ready worker at all is `ServiceUnavailable` (503).

Knows workers and capacity; knows no protocol details and no HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import structlog

from bridge.errors import RateLimited, ServiceUnavailable
from bridge.worker.supervisor import Worker, WorkerConfig, WorkerObserver, WorkerState

log = structlog.get_logger("bridge.pool")


class PoolObserver(WorkerObserver, Protocol):
    """Where the pool and its workers report what metrics want to know; cheap, sync calls."""

    def rejected(self, reason: str) -> None: ...
    def waited(self, seconds: float) -> None: ...


class _NoObserver:
    def rejected(self, reason: str) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass

    def restarted(self, reason: str) -> None:
        pass

    def handshake(self, seconds: float) -> None:
        pass

    def rpc_failed(self, method: str, kind: str) -> None:
        pass


class WorkerPool:
    def __init__(
        self,
        configs: Sequence[WorkerConfig],
        *,
        max_turns_per_worker: int,
        queue_limit: int,
        queue_timeout_s: float,
        observer: PoolObserver | None = None,
    ) -> None:
        self.observer: PoolObserver = observer or _NoObserver()
        self.max_turns_per_worker = max_turns_per_worker
        self.queue_limit = queue_limit
        self.queue_timeout_s = queue_timeout_s
        self._cond = asyncio.Condition()
        self.waiting = 0
        self.workers = [
            Worker(i, config, on_state=self._worker_state_changed, observer=self.observer)
            for i, config in enumerate(configs)
        ]
        self.closing = False
        self._notifiers: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    async def wait_ready(self, timeout: float) -> bool:
        """True once at least one worker is ready."""
        waits = [asyncio.create_task(w.wait_ready(timeout)) for w in self.workers]
        try:
            for finished in asyncio.as_completed(waits):
                if await finished:
                    return True
            return False
        finally:
            for task in waits:
                task.cancel()

    async def wait_idle(self) -> None:
        """Returns once no turn is running (the drain on shutdown)."""
        async with self._cond:
            await self._cond.wait_for(lambda: self.active_turns == 0)

    async def stop(self) -> None:
        self.closing = True
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)

    # -- state -------------------------------------------------------------------------
    @property
    def ready_count(self) -> int:
        return sum(1 for w in self.workers if w.ready)

    def supervisors_alive(self) -> bool:
        return all(w.supervising for w in self.workers)

    @property
    def active_turns(self) -> int:
        return sum(w.active_turns for w in self.workers)

    @property
    def capacity(self) -> int:
        return self.ready_count * self.max_turns_per_worker

    def any_ready(self) -> Worker | None:
        for worker in self.workers:
            if worker.ready:
                return worker
        return None

    # -- admission ---------------------------------------------------------------------
    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Worker]:
        worker = await self._acquire()
        try:
            yield worker
        finally:
            worker.active_turns -= 1
            self._wake()

    async def _acquire(self) -> Worker:
        if self.closing:
            self.observer.rejected("shutting_down")
            raise ServiceUnavailable("codex-bridge is shutting down.", retry_after=5)
        worker = self._pick()
        if worker is not None:
            worker.active_turns += 1
            self.observer.waited(0.0)
            return worker
        if self.ready_count == 0:
            self.observer.rejected("no_worker")
            raise ServiceUnavailable("No Codex worker is ready; retry shortly.", retry_after=2)
        if self.waiting >= self.queue_limit:
            self.observer.rejected("queue_full")
            raise RateLimited(
                f"Too many concurrent requests: {self.active_turns} running and "
                f"{self.waiting} queued. Retry shortly.",
                retry_after=1,
            )
        self.waiting += 1
        queued_at = time.perf_counter()
        try:
            async with asyncio.timeout(self.queue_timeout_s), self._cond:
                while True:
                    worker = self._pick()
                    if worker is not None:
                        worker.active_turns += 1
                        self.observer.waited(time.perf_counter() - queued_at)
                        return worker
                    if self.ready_count == 0 or self.closing:
                        self.observer.rejected("no_worker")
                        raise ServiceUnavailable("No Codex worker is ready.", retry_after=2)
                    await self._cond.wait()
        except TimeoutError:
            self.observer.rejected("queue_timeout")
            raise RateLimited(
                f"Waited {self.queue_timeout_s:g}s for a free Codex worker. Retry shortly.",
                retry_after=1,
            ) from None
        finally:
            self.waiting -= 1

    def _pick(self) -> Worker | None:
        best: Worker | None = None
        for worker in self.workers:
            if not worker.ready or worker.active_turns >= self.max_turns_per_worker:
                continue
            if best is None or worker.active_turns < best.active_turns:
                best = worker
        return best

    def _wake(self) -> None:
        async def notify() -> None:
            async with self._cond:
                self._cond.notify_all()

        # Release happens in finally blocks, possibly while cancelled: notify
        # from a task of its own rather than awaiting here.
        task = asyncio.get_running_loop().create_task(notify())
        self._notifiers.add(task)
        task.add_done_callback(self._notifiers.discard)

    def _worker_state_changed(self, worker: Worker, state: WorkerState) -> None:
        log.info("worker state", worker=worker.id, state=state.value)
        self._wake()
