"""Supervisor fault handling against the fake app-server: crashes, hangs, a binary that will not start."""

from __future__ import annotations

from pathlib import Path

from bridge.worker.supervisor import WorkerState
from tests.fakes.workers import WAIT_S, Recorder, fake_worker
from tests.fakes.workers import fake_config as config
from tests.harness import wait_until


async def test_worker_that_crashes_after_handshake_is_restarted_with_backoff(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    restarts = seen.restarts
    worker = fake_worker(config(tmp_path, "--crash-after-init"), seen)
    worker.start()
    try:
        await wait_until(lambda: len(restarts) >= 3, timeout=WAIT_S)
        assert set(restarts) == {"exited"}
        assert worker.restarts >= 3
    finally:
        await worker.stop()
    assert worker.state is WorkerState.STOPPED


async def test_unresponsive_worker_is_detected_by_the_health_probe_and_replaced(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    restarts = seen.restarts
    worker = fake_worker(
        config(tmp_path, "--hang-health", health_interval_s=0.1, rpc_timeout_s=0.5), seen
    )
    worker.start()
    try:
        await wait_until(lambda: worker.ready, timeout=WAIT_S)
        first_pid = worker.pid
        # The fake never answers the probe: rpc_timeout_s later, it is replaced.
        await wait_until(lambda: restarts, timeout=WAIT_S)
        assert restarts[0] == "unresponsive"
        assert ("thread/start", "timeout") in seen.rpc_failures
        await wait_until(lambda: worker.ready and worker.pid != first_pid, timeout=WAIT_S)
    finally:
        await worker.stop()


async def test_missing_binary_keeps_retrying_without_crashing_the_supervisor(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    restarts = seen.restarts
    worker = fake_worker(config(tmp_path, argv=[str(tmp_path / "no-such-codex")]), seen)
    worker.start()
    try:
        await wait_until(lambda: len(restarts) >= 2, timeout=WAIT_S)
        assert set(restarts) == {"spawn_failed"}
        assert worker.supervising
        assert not worker.ready
    finally:
        await worker.stop()


async def test_handshake_then_ready_then_graceful_stop(tmp_path: Path) -> None:
    seen = Recorder()
    worker = fake_worker(config(tmp_path), seen)
    worker.start()
    assert await worker.wait_ready(WAIT_S)
    assert worker.user_agent == "fake/0.0.0"
    assert len(seen.handshakes) == 1 and seen.handshakes[0] > 0
    await worker.stop()
    assert not worker.ready
    assert worker.restarts == 0
