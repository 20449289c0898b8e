"""The worker pool: N supervised workers, the FIFO admission queue, and overload backpressure.

`lease_slot()` hands out a turn slot on the least-loaded ready worker (or
on a given one); `take_slots(n)` hands out a fan-out's n slots in one step,
all or none, never holding some while it waits for the rest (a waiting
fan-out keeps its place: later arrivals queue behind it). When no slot
is free the caller waits in a bounded queue for a
bounded time; freed slots go to waiters strictly in arrival order (each
waiter owns a future in a deque, and a new arrival never takes a slot while
an earlier waiter could use it). A full queue or an expired wait is
`RateLimited` (429 with Retry-After); no ready worker at all is
`ServiceUnavailable` (503).

Overload is backpressure, not a failure: `start_on(lease, fn)` runs the turn's
start-up and, when the worker answers `WorkerOverloaded`, gives the slot
back, waits a jittered exponential backoff and takes a slot again —
preferring another worker — until the request's queue deadline, then lets
the 503 (with Retry-After) through, also when the wait for the retry's
slot runs out. Each worker's effective concurrency
adapts to what it accepts (AIMD): a new process starts at
`INITIAL_TURN_LIMIT` and doubles per window of good starts (slow start);
an overload answer or a start slower than a quarter of `rpc_timeout_s`
halves it; afterwards it grows by one per window; always between 1 and
`max_turns_per_worker`.

With several accounts (one Codex home each), `rank(worker)` — set by the
pool's builder — says how much headroom the worker's account has (higher is
better) or None when it can take no turn now (drained until its usage limit
resets, signed out); `_pick` prefers ready workers whose account can take
turns, then the worker a request prefers (`lease_slot(prefer=...)`: it holds
the request's conversation thread; only ever among workers within their
limit, and only while it runs at most `PREFER_LOAD_SLACK` more turns than
the least-loaded one), then by headroom, then by load, and
falls back to unranked workers only when every account is out (the turn then
fails with the account's own error). `move(lease, exclude)` gives a lease's
slot back and takes one on another worker: a request whose turn hit a usage
limit before any content is retried on another account.

A worker being recycled (`WorkerState.DRAINING`, then restarting; see
`bridge.worker.supervisor`) takes no new turns but counts as coming back:
with no other worker ready, requests wait in the queue for it rather than
getting 503.

Knows workers and capacity; knows no protocol details and no HTTP.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

import structlog

from bridge.errors import RateLimited, ServiceUnavailable, WorkerOverloaded
from bridge.worker.supervisor import (
    DriverFactory,
    Worker,
    WorkerConfig,
    WorkerObserver,
    WorkerState,
)

log = structlog.get_logger("bridge.pool")

T = TypeVar("T")

# Backoff between overload retries: doubles from the initial delay up to the
# cap, each scaled by a random factor in [1 - J, 1 + J] so the requests an
# overload refused together do not come back together.
OVERLOAD_BACKOFF_INITIAL_S: Final = 0.05
OVERLOAD_BACKOFF_MAX_S: Final = 2.0
OVERLOAD_BACKOFF_JITTER: Final = 0.5
# A new worker process starts at this many concurrent turns (or the ceiling if
# lower) and doubles per window of good starts until the first congestion
# signal (TCP's slow start): a burst then queues in the bridge, with a 429 and
# Retry-After at the deadline, instead of piling into one Codex process until
# its requests time out.
INITIAL_TURN_LIMIT: Final = 16
# A turn start slower than this fraction of rpc_timeout_s is a congestion
# signal like an overload answer (a saturated worker answers late, not "no").
SLOW_START_FRACTION: Final = 0.25
# The error code (and rejection reason) of requests refused because the bridge is stopping.
SHUTTING_DOWN: Final = "shutting_down"


# How many more turns than the least-loaded worker the worker holding a
# conversation's thread may run and still get the conversation's next turn.
# Continuing in place saves that turn a `thread/start` and the history's
# replay (~8 ms of Codex CPU), but conversations pinned to one worker would
# queue there while another idles: past this margin the turn starts cold on
# the less-loaded worker and the conversation moves with it (measured: p99 at
# c=8 on two workers; docs/benchmarks.md).
PREFER_LOAD_SLACK: Final = 1


class PoolObserver(WorkerObserver, Protocol):
    """Where the pool and its workers report what metrics want to know; cheap, sync calls."""

    def rejected(self, reason: str) -> None: ...
    def waited(self, seconds: float) -> None: ...
    def overloaded(self, worker: int, signal: str) -> None: ...


class _NoObserver:
    def rejected(self, reason: str) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass

    def overloaded(self, worker: int, signal: str) -> None:
        pass

    def restarted(self, reason: str) -> None:
        pass

    def handshake(self, seconds: float) -> None:
        pass

    def rpc_failed(self, method: str, kind: str) -> None:
        pass


@dataclass(slots=True)
class Lease:
    """One turn slot; `worker` may change while the turn starts (an overload moved it)."""

    worker: Worker
    deadline: float
    """Loop time until which the request may wait: for a slot, then for overload retries."""
    held: bool = True


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[list[Worker]]
    on: Worker | None
    avoid: Worker | None
    count: int = 1
    """Slots wanted at once: more than one for a fan-out, all handed over together."""
    prefer: Worker | None = None
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class _Capacity:
    """AIMD state of one worker process."""

    limit: int
    successes: int = 0
    pid: int | None = None
    slow_start: bool = True
    """Doubling per window until the first congestion signal, then +1 per window."""


class WorkerPool:
    def __init__(
        self,
        configs: Sequence[WorkerConfig],
        *,
        driver_factory: DriverFactory,
        max_turns_per_worker: int,
        queue_limit: int,
        queue_timeout_s: float,
        observer: PoolObserver | None = None,
    ) -> None:
        self.observer: PoolObserver = observer or _NoObserver()
        self.max_turns_per_worker = max_turns_per_worker
        self.queue_limit = queue_limit
        self.queue_timeout_s = queue_timeout_s
        self._waiters: deque[_Waiter] = deque()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.workers = [
            Worker(
                i,
                config,
                driver=driver_factory(config),
                on_state=self._worker_state_changed,
                observer=self.observer,
            )
            for i, config in enumerate(configs)
        ]
        self._capacity = {w.id: self._fresh_capacity(None) for w in self.workers}
        self._closing = False
        self.rank: Callable[[Worker], float | None] = lambda worker: 0.0
        """Headroom of the worker's account (higher first); None: its account rests."""

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
            # Reaped, so no task outlives the call (or logs "never retrieved").
            await asyncio.gather(*waits, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Returns once no turn is running (the drain on shutdown)."""
        while self.active_turns:
            idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(idle)
            await idle

    @property
    def closing(self) -> bool:
        return self._closing

    @closing.setter
    def closing(self, value: bool) -> None:
        self._closing = value
        if value:
            self._fail_waiters(lambda w: True, SHUTTING_DOWN, "codex-bridge is shutting down.")

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
    def waiting(self) -> int:
        return len(self._waiters)

    def turn_limit(self, worker: Worker) -> int:
        """The worker's current effective concurrency (AIMD), at most max_turns_per_worker."""
        return self._capacity[worker.id].limit

    @property
    def recycling(self) -> bool:
        """Some worker is draining or restarting on schedule: capacity is coming back."""
        return any(w.recycling for w in self.workers)

    def any_ready(self) -> Worker | None:
        for worker in self.workers:
            if worker.ready:
                return worker
        return None

    # -- admission ---------------------------------------------------------------------
    @asynccontextmanager
    async def lease_slot(
        self, on: Worker | None = None, *, prefer: Worker | None = None
    ) -> AsyncIterator[Lease]:
        """A turn slot on the least-loaded ready worker, or on `on` (a parked turn resuming
        on the worker its Codex thread lives in), as a `Lease` that `start_on` can move to
        another worker. `prefer` (a worker holding the conversation's thread) goes first
        among the workers whose account can take turns, when it is within its limit; else
        the slot goes elsewhere as usual."""
        deadline = asyncio.get_running_loop().time() + self.queue_timeout_s
        (worker,) = await self._acquire(on, None, deadline, prefer=prefer)
        lease = Lease(worker, deadline)
        try:
            yield lease
        finally:
            self.give_back(lease)

    async def take_slots(self, count: int) -> list[Lease]:
        """`count` slots at once for a fan-out: all of them, or none (nothing held while waiting).

        A fan-out may go past a worker's adaptive limit up to
        `max_turns_per_worker`: the limit only grows as turns start, and none
        of the fan-out's turns starts before all are admitted. The caller
        hands each lease to `give_back` when done with it.
        """
        deadline = asyncio.get_running_loop().time() + self.queue_timeout_s
        return [Lease(w, deadline) for w in await self._acquire(None, None, deadline, count)]

    def give_back(self, lease: Lease) -> None:
        """Frees the lease's slot; idempotent."""
        if lease.held:
            lease.held = False
            self._release(lease.worker)

    async def start_on(self, lease: Lease, start: Callable[[Worker], Awaitable[T]]) -> T:
        """`start(lease.worker)`, retried on overload within the queue deadline.

        On `WorkerOverloaded` the worker's limit is halved, the slot given
        back, and after a jittered backoff a slot is taken again (another
        worker preferred). Past the deadline the overload error itself (503,
        Retry-After) reaches the caller. Any other error passes through.
        """
        loop = asyncio.get_running_loop()
        deadline = lease.deadline
        attempt = 0
        while True:
            worker = lease.worker
            started = loop.time()
            try:
                result = await start(worker)
            except WorkerOverloaded as overloaded:
                self._congested(worker, "refused")
                delay = min(OVERLOAD_BACKOFF_MAX_S, OVERLOAD_BACKOFF_INITIAL_S * 2**attempt)
                delay *= random.uniform(1 - OVERLOAD_BACKOFF_JITTER, 1 + OVERLOAD_BACKOFF_JITTER)
                attempt += 1
                if loop.time() + delay >= deadline:
                    self.observer.rejected("overloaded")
                    raise
                lease.held = False
                self._release(worker)
                await asyncio.sleep(delay)  # backoff before the retry, not a synchronization
                try:
                    (lease.worker,) = await self._acquire(None, worker, deadline)
                except RateLimited:
                    # Out of time (or queue room) for the retry: the answer is still
                    # the overload, 503 with Retry-After, not a queue timeout.
                    raise overloaded from None
                lease.held = True
                continue
            except asyncio.CancelledError:
                raise  # a client that left says nothing about the worker's load
            except BaseException:
                if loop.time() - started > self._slow_s(worker):
                    self._congested(worker, "slow")
                raise
            if loop.time() - started > self._slow_s(worker):
                self._congested(worker, "slow")
            else:
                self._succeeded(worker)
            worker.turn_started()  # may start its recycle: counted once the turn runs
            return result

    def move(self, lease: Lease, exclude: Callable[[Worker], bool]) -> Worker | None:
        """Gives the lease's slot back and takes one on a ready worker not `exclude`d, at once.

        None (the lease unchanged) when no such worker has a free slot now:
        the caller keeps the error it had.
        """
        if self.closing:
            return None
        previous = lease.worker
        candidates = [w for w in self.workers if w is not previous and not exclude(w)]
        best = None
        for worker in candidates:
            if not worker.ready or worker.active_turns >= self.turn_limit(worker):
                continue
            key = self._preference(worker, None)
            if best is None or key > self._preference(best, None):
                best = worker
        if best is None:
            return None
        best.active_turns += 1
        lease.worker = best
        if lease.held:
            self._release(previous)
        lease.held = True
        return best

    async def _acquire(
        self,
        on: Worker | None,
        avoid: Worker | None,
        deadline: float,
        count: int = 1,
        *,
        prefer: Worker | None = None,
    ) -> list[Worker]:
        if self.closing:
            self.observer.rejected("shutting_down")
            raise ServiceUnavailable(
                "codex-bridge is shutting down.", code=SHUTTING_DOWN, retry_after=5
            )
        if (self.ready_count == 0 and not self.recycling) or (on is not None and not on.ready):
            self.observer.rejected("no_worker")
            raise ServiceUnavailable("No Codex worker is ready; retry shortly.", retry_after=2)
        # Earlier waiters first: whatever slot is still free afterwards, none of them can use.
        self._dispatch()
        # A queued fan-out keeps its place: a later arrival does not take the slots it waits for.
        blocked = any(w.count > 1 for w in self._waiters)
        picked = None if blocked else self._pick_many(on, avoid, count, prefer)
        if picked is not None:
            for worker in picked:
                worker.active_turns += 1
            self.observer.waited(0.0)
            return picked
        if len(self._waiters) >= self.queue_limit:
            self.observer.rejected("queue_full")
            raise RateLimited(
                f"Too many concurrent requests: {self.active_turns} running and "
                f"{len(self._waiters)} queued. Retry shortly.",
                retry_after=1,
            )
        waiter = _Waiter(asyncio.get_running_loop().create_future(), on, avoid, count, prefer)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                picked = await waiter.future
        except TimeoutError:
            self._abandon(waiter)
            if self.ready_count == 0:
                self.observer.rejected("no_worker")
                raise ServiceUnavailable("No Codex worker is ready.", retry_after=2) from None
            self.observer.rejected("queue_timeout")
            raise RateLimited(
                f"Waited {self.queue_timeout_s:g}s for a free Codex worker. Retry shortly.",
                retry_after=1,
            ) from None
        except BaseException:
            self._abandon(waiter)
            raise
        self.observer.waited(time.perf_counter() - waiter.queued_at)
        return picked

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter that stopped waiting: leave the queue, and give back a slot handed to it."""
        future = waiter.future
        if future.done() and not future.cancelled() and future.exception() is None:
            for worker in future.result():
                self._release(worker)
        else:
            future.cancel()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def _dispatch(self) -> None:
        """Hands free slots to waiters in arrival order. Sync: no await between check and take."""
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            picked = self._pick_many(waiter.on, waiter.avoid, waiter.count, waiter.prefer)
            if picked is None:
                if waiter.count > 1:
                    break  # a fan-out keeps its place: later waiters do not starve it
                continue  # a waiter bound to a busy worker does not block the others
            for worker in picked:
                worker.active_turns += 1
            self._waiters.remove(waiter)
            waiter.future.set_result(picked)

    def _pick_many(
        self, on: Worker | None, avoid: Worker | None, count: int, prefer: Worker | None = None
    ) -> list[Worker] | None:
        """`count` slots that are free now, or None; one slot follows `_pick`.

        A fan-out's slots go to workers whose account can take turns (as in
        `_preference`), a resting or signed-out one only when no such worker has
        room left; among them within their adaptive limits first, then past them
        up to `max_turns_per_worker` (see `take_slots`), by headroom, then load.
        """
        if count == 1:
            worker = self._pick(on, avoid, prefer)
            return None if worker is None else [worker]
        load = {w.id: w.active_turns for w in self.workers}
        # The account's rank is read once: it must not change between the slots of one fan-out.
        rank = {w.id: self.rank(w) for w in self.workers}

        def key(worker: Worker) -> tuple[bool, bool, float, int]:
            within = load[worker.id] < self.turn_limit(worker)
            headroom = rank[worker.id]
            return (headroom is not None, within, headroom or 0.0, -load[worker.id])

        picked: list[Worker] = []
        for _ in range(count):
            best: Worker | None = None
            for worker in self.workers:
                if not worker.ready or load[worker.id] >= self.max_turns_per_worker:
                    continue
                if best is None or key(worker) > key(best):
                    best = worker
            if best is None:
                return None
            load[best.id] += 1
            picked.append(best)
        return picked

    def _pick(
        self, on: Worker | None, avoid: Worker | None = None, prefer: Worker | None = None
    ) -> Worker | None:
        best: Worker | None = None
        best_key: tuple[bool, bool, bool, float, int] | None = None
        room = [
            worker
            for worker in (self.workers if on is None else (on,))
            if worker.ready and worker.active_turns < self.turn_limit(worker)
        ]
        if prefer is not None and room:
            # Compared with workers whose account can take turns: an idle drained one is no option.
            usable = [worker for worker in room if self.rank(worker) is not None] or room
            least = min(worker.active_turns for worker in usable)
            if prefer.active_turns > least + PREFER_LOAD_SLACK:
                prefer = None  # the conversation moves: its next turn starts cold elsewhere
        for worker in room:
            key = self._preference(worker, avoid, prefer)
            if best_key is None or key > best_key:
                best, best_key = worker, key
        return best

    def _preference(
        self, worker: Worker, avoid: Worker | None, prefer: Worker | None = None
    ) -> tuple[bool, bool, bool, float, int]:
        """Not the avoided worker, then an account that can take turns, then the preferred
        worker (it holds the conversation's thread), the account's headroom, the load."""
        rank = self.rank(worker)
        return (
            worker is not avoid,
            rank is not None,
            worker is prefer,
            rank or 0.0,
            -worker.active_turns,
        )

    def _release(self, worker: Worker) -> None:
        worker.active_turns -= 1
        self._dispatch()
        if self.active_turns == 0:
            idle, self._idle_waiters = self._idle_waiters, []
            for future in idle:
                if not future.done():
                    future.set_result(None)

    def _fail_waiters(self, which: Callable[[_Waiter], bool], reason: str, message: str) -> None:
        for waiter in list(self._waiters):
            if which(waiter) and not waiter.future.done():
                self._waiters.remove(waiter)
                self.observer.rejected(reason)
                code = SHUTTING_DOWN if reason == SHUTTING_DOWN else None
                waiter.future.set_exception(ServiceUnavailable(message, code=code, retry_after=2))

    # -- adaptive concurrency (AIMD) ---------------------------------------------------
    def _fresh_capacity(self, pid: int | None) -> _Capacity:
        return _Capacity(min(INITIAL_TURN_LIMIT, self.max_turns_per_worker), pid=pid)

    @staticmethod
    def _slow_s(worker: Worker) -> float:
        return worker.config.rpc_timeout_s * SLOW_START_FRACTION

    def _congested(self, worker: Worker, signal: str) -> None:
        """Multiplicative decrease: Codex refused a start ("refused") or answered late ("slow")."""
        capacity = self._capacity[worker.id]
        previous = capacity.limit
        capacity.limit = max(1, capacity.limit // 2)
        capacity.successes = 0
        capacity.slow_start = False
        self.observer.overloaded(worker.id, signal)
        log.warning(
            "worker overloaded",
            worker=worker.id,
            signal=signal,
            limit=capacity.limit,
            previous=previous,
        )

    def _succeeded(self, worker: Worker) -> None:
        capacity = self._capacity[worker.id]
        if capacity.limit >= self.max_turns_per_worker:
            return
        capacity.successes += 1
        # One step per window of `limit` good starts: doubling during slow
        # start, then +1 (the additive increase of TCP's congestion control).
        if capacity.successes >= capacity.limit:
            capacity.successes = 0
            grown = capacity.limit * 2 if capacity.slow_start else capacity.limit + 1
            capacity.limit = min(self.max_turns_per_worker, grown)
            self._dispatch()

    def _worker_state_changed(self, worker: Worker, state: WorkerState) -> None:
        log.info("worker state", worker=worker.id, state=state.value)
        if state is WorkerState.READY:
            capacity = self._capacity[worker.id]
            if capacity.pid != worker.pid:
                # A new process starts over (slow start from INITIAL_TURN_LIMIT).
                self._capacity[worker.id] = self._fresh_capacity(worker.pid)
            self._dispatch()
        else:
            self._fail_waiters(
                lambda w: w.on is worker, "no_worker", "The Codex worker of this turn is not ready."
            )
