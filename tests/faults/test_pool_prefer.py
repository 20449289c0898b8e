"""`WorkerPool.lease_slot(prefer=...)` against fake app-servers: the worker holding a
conversation's thread goes first while it has room, without changing the queue's order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from bridge.worker.pool import WorkerPool
from bridge.worker.supervisor import WorkerConfig
from tests.fakes.workers import WAIT_S, Recorder, fake_config, fake_pool
from tests.harness import wait_until


@asynccontextmanager
async def two_workers(tmp_path: Path, *, max_turns_per_worker: int) -> AsyncIterator[WorkerPool]:
    configs: list[WorkerConfig] = [
        fake_config(tmp_path / "w0"),
        fake_config(tmp_path / "w1"),
    ]
    pool = fake_pool(configs, Recorder(), max_turns_per_worker=max_turns_per_worker)
    pool.start()
    try:
        await wait_until(lambda: pool.ready_count == 2, timeout=WAIT_S)
        yield pool
    finally:
        await pool.stop()


async def test_slot_goes_to_the_preferred_worker_when_it_has_room_even_if_busier(
    tmp_path: Path,
) -> None:
    async with two_workers(tmp_path, max_turns_per_worker=4) as pool, AsyncExitStack() as held:
        w0, w1 = pool.workers
        await held.enter_async_context(pool.lease_slot(w0))
        # Least-loaded would be w1; the preference wins while w0 is within its limit.
        preferred = await held.enter_async_context(pool.lease_slot(prefer=w0))
        assert preferred.worker is w0
        plain = await held.enter_async_context(pool.lease_slot())
        assert plain.worker is w1


async def test_slot_goes_to_the_least_loaded_worker_when_the_preferred_one_runs_two_more(
    tmp_path: Path,
) -> None:
    async with two_workers(tmp_path, max_turns_per_worker=4) as pool, AsyncExitStack() as held:
        w0, w1 = pool.workers
        await held.enter_async_context(pool.lease_slot(w0))
        await held.enter_async_context(pool.lease_slot(w0))
        # w0 has room (2 of 4) but runs two more turns than w1 (PREFER_LOAD_SLACK is 1):
        # the conversation's turn starts on w1 rather than queue behind w0's.
        lease = await held.enter_async_context(pool.lease_slot(prefer=w0))
        assert lease.worker is w1


async def test_slot_goes_elsewhere_at_once_when_the_preferred_worker_is_full(
    tmp_path: Path,
) -> None:
    async with two_workers(tmp_path, max_turns_per_worker=1) as pool, AsyncExitStack() as held:
        w0, w1 = pool.workers
        await held.enter_async_context(pool.lease_slot(w0))
        lease = await held.enter_async_context(pool.lease_slot(prefer=w0))
        assert lease.worker is w1
        assert pool.waiting == 0


async def test_preferring_waiter_keeps_its_place_in_the_queue(tmp_path: Path) -> None:
    async with two_workers(tmp_path, max_turns_per_worker=1) as pool:
        w0, w1 = pool.workers
        got: list[tuple[str, int]] = []
        first = pool.lease_slot(w0)
        second = pool.lease_slot(w1)
        await first.__aenter__()
        await second.__aenter__()

        async def client(name: str) -> None:
            async with pool.lease_slot(prefer=w0) as lease:
                got.append((name, lease.worker.id))
                await wait_until(lambda: len(got) == 2, timeout=WAIT_S)

        a = asyncio.create_task(client("a"))
        await wait_until(lambda: pool.waiting == 1, timeout=WAIT_S)
        b = asyncio.create_task(client("b"))
        await wait_until(lambda: pool.waiting == 2, timeout=WAIT_S)
        # w1 frees first: the first in line takes it rather than wait for w0.
        await second.__aexit__(None, None, None)
        await wait_until(lambda: len(got) == 1, timeout=WAIT_S)
        await first.__aexit__(None, None, None)
        await asyncio.wait_for(asyncio.gather(a, b), WAIT_S)
        assert got == [("a", 1), ("b", 0)]
