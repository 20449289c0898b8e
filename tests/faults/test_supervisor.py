"""Supervisor fault handling against the fake app-server: crashes, hangs, a binary that will not start."""

from __future__ import annotations

import sys
from pathlib import Path

from bridge.worker.supervisor import Worker, WorkerConfig, WorkerState
from tests.harness import wait_until


class Recorder:
    """A WorkerObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.restarts: list[str] = []
        self.handshakes: list[float] = []
        self.rpc_failures: list[tuple[str, str]] = []

    def restarted(self, reason: str) -> None:
        self.restarts.append(reason)

    def handshake(self, seconds: float) -> None:
        self.handshakes.append(seconds)

    def rpc_failed(self, method: str, kind: str) -> None:
        self.rpc_failures.append((method, kind))


FAKE = str(Path(__file__).resolve().parents[1] / "fakes" / "fake_app_server.py")
WAIT_S = 20.0


def config(
    tmp_path: Path, *args: str, argv: list[str] | None = None, **overrides: float
) -> WorkerConfig:
    values: dict[str, float] = {
        "rpc_timeout_s": 5.0,
        "handshake_timeout_s": 5.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "healthy_reset_s": 60.0,
        "health_interval_s": 60.0,
        "stop_grace_s": 1.0,
    }
    values.update(overrides)
    return WorkerConfig(
        argv=argv or [sys.executable, FAKE, *args],
        env={},
        workdir=tmp_path,
        profile="plain",
        dialect="v2",  # the fake speaks no thread/start for auto-detection
        **values,  # type: ignore[arg-type]
    )


async def test_worker_that_crashes_after_handshake_is_restarted_with_backoff(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    restarts = seen.restarts
    worker = Worker(0, config(tmp_path, "--crash-after-init"), observer=seen)
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
    worker = Worker(
        0,
        config(tmp_path, "--hang-health", health_interval_s=0.1, rpc_timeout_s=0.5),
        observer=seen,
    )
    worker.start()
    try:
        await wait_until(lambda: worker.ready, timeout=WAIT_S)
        first_pid = worker.pid
        # The fake never answers the probe: rpc_timeout_s later, it is replaced.
        await wait_until(lambda: restarts, timeout=WAIT_S)
        assert restarts[0] == "unresponsive"
        assert ("thread/loaded/list", "timeout") in seen.rpc_failures
        await wait_until(lambda: worker.ready and worker.pid != first_pid, timeout=WAIT_S)
    finally:
        await worker.stop()


async def test_missing_binary_keeps_retrying_without_crashing_the_supervisor(
    tmp_path: Path,
) -> None:
    seen = Recorder()
    restarts = seen.restarts
    worker = Worker(0, config(tmp_path, argv=[str(tmp_path / "no-such-codex")]), observer=seen)
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
    worker = Worker(0, config(tmp_path), observer=seen)
    worker.start()
    assert await worker.wait_ready(WAIT_S)
    assert worker.user_agent == "fake/0.0.0"
    assert len(seen.handshakes) == 1 and seen.handshakes[0] > 0
    await worker.stop()
    assert not worker.ready
    assert worker.restarts == 0
