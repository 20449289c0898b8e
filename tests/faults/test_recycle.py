"""Worker recycling against fake app-servers: drain, bounded drain, queueing while it restarts.

Codex 0.163 keeps every thread it ran in memory, so a worker is restarted on
schedule (`codex.worker_max_turns`, `codex.worker_max_rss_mb`). These tests
drive the supervisor's drain with turn slots held directly on the pool; the
real-binary behaviour is in `tests/integration/test_worker_recycle.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bridge.codex.dialect import start_turn
from bridge.codex.turn import TurnRequest
from bridge.worker.pool import WorkerPool
from bridge.worker.supervisor import WorkerConfig, WorkerState
from tests.fakes.workers import WAIT_S, Recorder, fake_config, fake_pool
from tests.harness import wait_until


@asynccontextmanager
async def running(configs: list[WorkerConfig], seen: Recorder) -> AsyncIterator[WorkerPool]:
    pool = fake_pool(configs, seen)
    pool.start()
    try:
        await wait_until(lambda: pool.ready_count == len(configs), timeout=WAIT_S)
        yield pool
    finally:
        await pool.stop()


async def test_a_recycled_worker_waits_for_its_running_turn_and_queued_requests_wait_for_it(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    async with running([fake_config(tmp_path, drain_timeout_s=WAIT_S * 3)], seen) as pool:
        worker = pool.workers[0]
        old_pid = worker.pid
        running_turn = pool.lease_slot()
        await running_turn.__aenter__()
        worker.recycle("max_turns")
        assert worker.state is WorkerState.DRAINING and pool.ready_count == 0

        async def newcomer() -> int | None:
            async with pool.lease_slot() as leased:
                return leased.worker.pid

        # The only worker drains: a new request queues for it (no 503).
        queued = asyncio.create_task(newcomer())
        await wait_until(lambda: pool.waiting == 1, timeout=WAIT_S)
        # The running turn holds the process: it is neither stopped nor replaced.
        assert worker.pid == old_pid and worker.state is WorkerState.DRAINING
        await running_turn.__aexit__(None, None, None)
        new_pid = await asyncio.wait_for(queued, WAIT_S)
        assert new_pid is not None and new_pid != old_pid
        assert seen.restarts == ["recycle_max_turns"]
        assert seen.rejections == []
        assert pool.active_turns == 0 and pool.waiting == 0 and not worker.recycling


async def test_a_drain_is_bounded_when_a_turn_outlives_the_drain_timeout(tmp_path: Path) -> None:
    seen = Recorder()
    async with running([fake_config(tmp_path, drain_timeout_s=0.2)], seen) as pool:
        worker = pool.workers[0]
        old_pid = worker.pid
        async with pool.lease_slot():
            worker.recycle("max_rss")
            # The slot is still held: the process is restarted anyway after the bound.
            await wait_until(lambda: worker.ready and worker.pid != old_pid, timeout=WAIT_S)
        assert seen.restarts == ["recycle_max_rss"]
        assert pool.active_turns == 0


async def test_a_worker_is_recycled_after_max_turns_turn_starts(tmp_path: Path) -> None:
    seen = Recorder()
    async with running([fake_config(tmp_path, max_turns=2)], seen) as pool:
        worker = pool.workers[0]
        pids = []
        for _ in range(5):
            async with pool.lease_slot() as lease:
                turn = await pool.start_on(
                    lease, lambda w: start_turn(w, TurnRequest(input="hello"))
                )
                pids.append(lease.worker.pid)
                await turn.interrupt()
                await turn.aclose()
        # Turns 1-2 on the first process, 3-4 on the second, 5 on the third.
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert seen.restarts == ["recycle_max_turns", "recycle_max_turns"]
        assert seen.rejections == []
        assert worker.turns_started == 1
