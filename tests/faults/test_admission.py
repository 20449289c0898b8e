"""Pool admission and turn start under the edge cases: fan-outs past the adaptive limit,
cancelled slow starts, overload retries out of time, turn starts cut short.

Runs on the fake app-server (`tests/fakes/`): these are fault injections the
real Codex cannot be made to produce on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.codex.dialect import start_turn
from bridge.codex.turn import TurnRequest
from bridge.errors import ServiceUnavailable, WorkerCrashed, WorkerOverloaded
from bridge.worker.pool import SLOW_START_FRACTION, WorkerPool
from bridge.worker.supervisor import Worker, WorkerConfig
from tests.fakes.workers import WAIT_S, Recorder, fake_config, fake_pool
from tests.harness import wait_until

REQUEST = TurnRequest(input="hello")
# The fake's turn/start answer comes this late: past every RPC timeout used here.
LATE_TURN_START_MS = 30_000


@asynccontextmanager
async def running(
    configs: list[WorkerConfig], seen: Recorder, *, ready: int | None = None, **options: Any
) -> AsyncIterator[WorkerPool]:
    pool = fake_pool(configs, seen, **options)
    pool.start()
    try:
        await wait_until(lambda: pool.ready_count == (ready or len(configs)), timeout=WAIT_S)
        yield pool
    finally:
        await pool.stop()


async def slow_start(worker: Worker) -> None:
    """A start that takes longer than the pool's "slow start" bound (a congestion signal)."""
    slow_ms = worker.config.rpc_timeout_s * SLOW_START_FRACTION * 1000 * 2
    await worker.request("slow", {"ms": int(slow_ms)})


async def test_a_fanout_within_capacity_is_admitted_at_once_when_a_slow_start_halved_the_limit(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    config = fake_config(tmp_path, rpc_timeout_s=1.0)
    async with running([config], seen, max_turns_per_worker=8, queue_timeout_s=WAIT_S) as pool:
        worker = pool.workers[0]
        async with pool.lease_slot() as lease:
            await pool.start_on(lease, slow_start)
        assert seen.signals == ["slow"] and pool.turn_limit(worker) == 4
        # Five slots on an idle pool that may run 8: granted in one step, not
        # four held while a fifth waits for a limit that only grows as turns start.
        leases = await asyncio.wait_for(pool.take_slots(5), WAIT_S)
        assert len(leases) == 5 and pool.active_turns == 5 and pool.waiting == 0
        for granted in leases:
            pool.give_back(granted)
        assert pool.active_turns == 0


async def test_a_waiting_fanout_holds_no_slot_and_is_not_overtaken_by_later_requests(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    async with running(
        [fake_config(tmp_path)], seen, max_turns_per_worker=3, queue_timeout_s=WAIT_S
    ) as pool:
        async with pool.lease_slot() as holder:
            fanout = asyncio.create_task(pool.take_slots(3))
            await wait_until(lambda: pool.waiting == 1, timeout=WAIT_S)
            assert pool.active_turns == 1  # two slots free, none taken by the waiting fan-out
            later = asyncio.create_task(pool.take_slots(1))
            await wait_until(lambda: pool.waiting == 2, timeout=WAIT_S)
            assert pool.active_turns == 1  # the later request queues behind the fan-out
            assert holder.held
        leases = await asyncio.wait_for(fanout, WAIT_S)
        assert len(leases) == 3 and not later.done()
        for granted in leases:
            pool.give_back(granted)
        (last,) = await asyncio.wait_for(later, WAIT_S)
        pool.give_back(last)
        assert pool.active_turns == 0 and pool.waiting == 0


async def test_a_client_that_leaves_during_a_slow_start_does_not_lower_the_worker_limit(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    config = fake_config(tmp_path, rpc_timeout_s=1.0)
    async with running([config], seen, max_turns_per_worker=8) as pool:
        worker = pool.workers[0]

        async def start_then_leave(worker: Worker) -> None:
            await slow_start(worker)
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # the client disconnects just as the slow start ends
            await asyncio.sleep(0)  # where the cancellation is delivered

        async def request() -> None:
            async with pool.lease_slot() as lease:
                await pool.start_on(lease, start_then_leave)

        with pytest.raises(asyncio.CancelledError):
            await asyncio.create_task(request())
        assert seen.signals == []
        assert pool.turn_limit(worker) == 8
        assert pool.active_turns == 0


async def test_an_overload_retry_that_runs_out_of_time_waiting_for_a_slot_is_a_503_overload(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    config = fake_config(tmp_path, "--max-threads", "0")  # refuses every thread
    async with running([config], seen, max_turns_per_worker=1, queue_timeout_s=1.0) as pool:
        release = asyncio.Event()

        async def other_request() -> None:
            async with pool.lease_slot():
                await release.wait()

        async with pool.lease_slot() as lease:
            other = asyncio.create_task(other_request())
            await wait_until(lambda: pool.waiting == 1, timeout=WAIT_S)
            # The refused start gives its slot back for the backoff; the other
            # request takes it and keeps it, so the retry's wait runs out.
            with pytest.raises(WorkerOverloaded) as refused:
                await pool.start_on(lease, lambda worker: start_turn(worker, REQUEST))
        assert refused.value.status == 503
        assert refused.value.headers().get("Retry-After") is not None
        release.set()
        await asyncio.wait_for(other, WAIT_S)
        assert pool.active_turns == 0 and pool.waiting == 0


async def test_wait_ready_leaves_no_task_behind_when_a_worker_never_becomes_ready(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    configs = [fake_config(tmp_path / "ok"), fake_config(tmp_path / "mute", "--no-init")]
    async with running(configs, seen, ready=1) as pool:
        before = asyncio.all_tasks()
        assert await pool.wait_ready(WAIT_S)
        # The wait on the worker that never got ready was cancelled and reaped.
        assert asyncio.all_tasks() - before == set()


async def _fake_turns(worker: Worker) -> dict[str, list[str]]:
    answer: dict[str, list[str]] = await worker.request("fake/turns", {})
    return answer


async def _until_fake(worker: Worker, key: str, count: int) -> None:
    """Polls the fake's record (bounded) until `key` lists `count` entries.

    A timed-out turn/start makes the worker probe itself (not ready for a
    moment): a poll that lands then is simply repeated.
    """
    async with asyncio.timeout(WAIT_S):
        while True:
            try:
                if len((await _fake_turns(worker))[key]) >= count:
                    return
            except ServiceUnavailable:
                pass
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", ["timed_out", "cancelled"])
async def test_a_turn_codex_accepted_is_interrupted_when_its_start_was_cut_short(
    tmp_path: Path, how: str
) -> None:
    seen = Recorder()
    # turn/started comes at once; the turn/start answer comes too late.
    config = fake_config(tmp_path, "--turn-start-ms", str(LATE_TURN_START_MS), rpc_timeout_s=1.0)
    async with running([config], seen) as pool:
        worker = pool.workers[0]
        start = asyncio.create_task(start_turn(worker, REQUEST))
        if how == "timed_out":
            with pytest.raises(WorkerCrashed):  # "did not answer turn/start in time"
                await asyncio.wait_for(start, WAIT_S)
        else:
            await _until_fake(worker, "started", 1)  # Codex accepted it (the client left)
            start.cancel()
            with pytest.raises(asyncio.CancelledError):
                await start
        # Nobody reads that turn any more: Codex was told to stop it.
        await _until_fake(worker, "interrupted", 1)
        assert len((await _fake_turns(worker))["started"]) == 1


async def test_a_fanout_takes_its_slots_on_ranked_accounts_when_another_account_rests(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    configs = [fake_config(tmp_path / "resting"), fake_config(tmp_path / "ranked")]
    async with running(configs, seen, max_turns_per_worker=4, queue_timeout_s=WAIT_S) as pool:
        resting, ranked = pool.workers
        pool.rank = lambda worker: None if worker is resting else 50.0
        leases = await asyncio.wait_for(pool.take_slots(2), WAIT_S)
        assert [lease.worker for lease in leases] == [ranked, ranked]
        for granted in leases:
            pool.give_back(granted)


async def test_a_fanout_falls_back_to_a_resting_account_only_when_ranked_ones_are_full(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    configs = [fake_config(tmp_path / "resting"), fake_config(tmp_path / "ranked")]
    async with running(configs, seen, max_turns_per_worker=1, queue_timeout_s=WAIT_S) as pool:
        resting, ranked = pool.workers
        pool.rank = lambda worker: None if worker is resting else 50.0
        leases = await asyncio.wait_for(pool.take_slots(2), WAIT_S)
        assert [lease.worker for lease in leases] == [ranked, resting]
        for granted in leases:
            pool.give_back(granted)
