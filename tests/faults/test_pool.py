"""The pool against fake app-servers: FIFO admission, overload backpressure with AIMD, bad workers.

The fake (`tests/fakes/fake_app_server.py`) speaks enough of v2 to start and
end turns, and answers `thread/start` with Codex's overload error while
`--max-threads` threads are open, so the retry and the adaptive limit run
against a real subprocess and the real RPC layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bridge.codex.dialect import codex_driver, start_turn
from bridge.codex.turn import Turn, TurnRequest
from bridge.errors import RateLimited, WorkerOverloaded
from bridge.worker.pool import WorkerPool
from bridge.worker.rpc import RpcTimeout
from bridge.worker.supervisor import Worker, WorkerConfig, WorkerState
from tests.fakes.workers import WAIT_S, Recorder, fake_config, fake_pool, fake_worker
from tests.harness import wait_until

REQUEST = TurnRequest(input="hello")


@asynccontextmanager
async def running(
    configs: list[WorkerConfig], seen: Recorder, **options: float
) -> AsyncIterator[WorkerPool]:
    pool = fake_pool(configs, seen, **options)  # type: ignore[arg-type]
    pool.start()
    try:
        await wait_until(lambda: pool.ready_count == len(configs), timeout=WAIT_S)
        yield pool
    finally:
        await pool.stop()


async def run_turn(pool: WorkerPool, hold: Callable[[], bool] | None = None) -> Worker:
    """Starts a turn (overload retries included), holds it until `hold()`, ends it."""
    async with pool.lease_slot() as lease:
        turn: Turn = await pool.start_on(lease, lambda worker: start_turn(worker, REQUEST))
        try:
            if hold is not None:
                await wait_until(hold, timeout=WAIT_S)
        finally:
            await turn.interrupt()
            await turn.aclose()
        return lease.worker


async def test_freed_slots_go_to_waiters_in_arrival_order_when_new_requests_keep_arriving(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    async with running([fake_config(tmp_path)], seen, max_turns_per_worker=1) as pool:
        served: list[str] = []

        async def client(name: str) -> None:
            async with pool.lease_slot():
                served.append(name)

        holder = pool.lease_slot()
        await holder.__aenter__()
        queued = []
        for count, name in enumerate(("a", "b", "c"), start=1):
            queued.append(asyncio.create_task(client(name)))
            await wait_until(lambda n=count: pool.waiting == n, timeout=WAIT_S)
        # The slot is freed and, in the same step, a newcomer arrives: it must
        # not take the slot from the waiters that came first.
        await holder.__aexit__(None, None, None)
        late = asyncio.create_task(client("late"))
        await asyncio.wait_for(asyncio.gather(*queued, late), WAIT_S)
        assert served == ["a", "b", "c", "late"]
        assert pool.active_turns == 0 and pool.waiting == 0


async def test_a_waiter_that_gives_up_leaves_no_slot_behind(tmp_path: Path) -> None:
    seen = Recorder()
    async with running(
        [fake_config(tmp_path)], seen, max_turns_per_worker=1, queue_timeout_s=0.3
    ) as pool:
        async with pool.lease_slot():
            with pytest.raises(RateLimited):
                async with pool.lease_slot():
                    pass
            cancelled = asyncio.create_task(_lease_once(pool))
            await wait_until(lambda: pool.waiting == 1, timeout=WAIT_S)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        assert pool.waiting == 0 and pool.active_turns == 0
        assert "queue_timeout" in seen.rejections
        async with pool.lease_slot() as lease:
            assert lease.worker.active_turns == 1


async def _lease_once(pool: WorkerPool) -> None:
    async with pool.lease_slot():
        pass


async def test_overloaded_starts_are_retried_and_the_worker_limit_adapts_when_codex_pushes_back(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    # The fake accepts 2 open threads; the pool would allow 8 concurrent turns.
    config = fake_config(tmp_path, "--max-threads", "2")
    async with running([config], seen, max_turns_per_worker=8, queue_timeout_s=WAIT_S) as pool:
        worker = pool.workers[0]
        # Every turn holds its thread until Codex has pushed back at least once.
        results = await asyncio.wait_for(
            asyncio.gather(*(run_turn(pool, hold=lambda: bool(seen.overloads)) for _ in range(8))),
            WAIT_S * 2,
        )
        assert len(results) == 8  # every request was served: none saw the overload
        assert seen.overloads and set(seen.overloads) == {0}
        assert "overloaded" not in seen.rejections
        lowered = pool.turn_limit(worker)
        assert 1 <= lowered < 8
        # Additive increase: a window of `limit` good starts raises the limit by one.
        for _ in range(lowered):
            await run_turn(pool)
        assert pool.turn_limit(worker) == lowered + 1
        assert pool.active_turns == 0


async def test_overload_past_the_queue_deadline_is_a_503_with_retry_after(tmp_path: Path) -> None:
    seen = Recorder()
    config = fake_config(tmp_path, "--max-threads", "0")  # refuses every thread
    async with running([config], seen, queue_timeout_s=0.5) as pool:
        with pytest.raises(WorkerOverloaded) as error:
            await run_turn(pool)
        assert error.value.status == 503
        assert error.value.retry_after is not None
        assert error.value.headers()["Retry-After"] == "1"
        assert len(seen.overloads) >= 2  # retried with backoff before giving up
        assert pool.turn_limit(pool.workers[0]) == 1  # floor
        assert pool.active_turns == 0 and pool.waiting == 0


async def test_an_overloaded_start_moves_to_another_worker_when_one_has_room(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    refusing = fake_config(tmp_path / "w0", "--max-threads", "0")
    accepting = fake_config(tmp_path / "w1")
    async with running([refusing, accepting], seen) as pool:
        # Least-loaded pick starts on worker 0 (ties go to the first).
        served_by = await run_turn(pool)
        assert served_by.id == 1
        assert seen.overloads == [0]
        assert pool.active_turns == 0


async def test_worker_that_never_finishes_the_handshake_is_restarted_and_never_ready(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    worker = fake_worker(fake_config(tmp_path, "--no-init", handshake_timeout_s=0.3), seen)
    worker.start()
    try:
        await wait_until(lambda: len(seen.restarts) >= 2, timeout=WAIT_S)
        assert set(seen.restarts) == {"handshake_failed"}
        assert not worker.ready
    finally:
        await asyncio.wait_for(worker.stop(), WAIT_S)
    assert worker.state is WorkerState.STOPPED


async def test_a_ten_megabyte_line_and_garbage_do_not_break_the_worker(tmp_path: Path) -> None:
    seen = Recorder()
    worker = fake_worker(fake_config(tmp_path), seen)
    worker.start()
    try:
        await wait_until(lambda: worker.ready, timeout=WAIT_S)
        big = await worker.request("big", {"size": 10 * 1024 * 1024})
        assert len(big) == 10 * 1024 * 1024
        assert await worker.request("garbage", {}) == "after garbage"
        assert await worker.request("echo", {"ok": 1}) == {"ok": 1}
        assert worker.ready and worker.restarts == 0
    finally:
        await worker.stop()


async def test_stderr_flood_neither_blocks_nor_unreadies_the_worker(tmp_path: Path) -> None:
    seen = Recorder()
    worker = fake_worker(fake_config(tmp_path, "--stderr-flood", "50000"), seen)
    worker.start()
    try:
        await wait_until(lambda: worker.ready, timeout=WAIT_S)
        assert await worker.request("echo", {"ok": 1}) == {"ok": 1}
        assert worker.restarts == 0
    finally:
        await worker.stop()


async def test_a_request_timeout_unreadies_the_worker_and_a_passing_probe_readies_it(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    states: list[WorkerState] = []
    config = fake_config(tmp_path, rpc_timeout_s=0.3)
    worker = Worker(
        0,
        config,
        driver=codex_driver(config),
        observer=seen,
        on_state=lambda _w, state: states.append(state),
    )
    worker.start()
    try:
        await wait_until(lambda: worker.ready, timeout=WAIT_S)
        with pytest.raises(RpcTimeout):
            await worker.request("never", {})
        # Probed at once (not after health_interval_s = 60 s), found healthy, ready again.
        await wait_until(lambda: WorkerState.PROBING in states and worker.ready, timeout=WAIT_S)
        assert worker.restarts == 0
    finally:
        await worker.stop()


async def test_a_hung_worker_is_killed_without_the_graceful_wait(tmp_path: Path) -> None:
    seen = Recorder()
    # It ignores SIGTERM and stdin EOF: a graceful stop would take stop_grace_s + 2 s.
    config = fake_config(
        tmp_path,
        "--hang-health",
        "--ignore-term",
        health_interval_s=0.2,
        rpc_timeout_s=0.3,
        stop_grace_s=WAIT_S,
    )
    worker = fake_worker(config, seen)
    worker.start()
    try:
        await wait_until(lambda: worker.ready, timeout=WAIT_S)
        first = worker.pid
        # Replaced well before the stdin grace (WAIT_S) could have run out.
        await wait_until(lambda: worker.pid != first and worker.ready, timeout=WAIT_S / 2)
        assert seen.restarts[0] == "unresponsive"
    finally:
        worker.kill()
        await worker.stop()


async def test_a_deleted_working_directory_is_detected_and_recreated(tmp_path: Path) -> None:
    seen = Recorder()
    workdir = tmp_path / "worker-0"
    worker = fake_worker(fake_config(workdir, health_interval_s=0.1), seen)
    worker.start()
    try:
        await wait_until(lambda: worker.ready, timeout=WAIT_S)
        first = worker.pid
        workdir.rmdir()
        await wait_until(lambda: worker.ready and worker.pid != first, timeout=WAIT_S)
        assert seen.restarts[0] == "workdir_missing"
        assert workdir.is_dir()
    finally:
        await worker.stop()
