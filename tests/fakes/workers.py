"""Workers and pools on the fake app-server, for supervisor, pool and fault tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

from bridge.codex.dialect import codex_driver
from bridge.worker.pool import WorkerPool
from bridge.worker.supervisor import Worker, WorkerConfig

FAKE: Final = str(Path(__file__).resolve().parent / "fake_app_server.py")
WAIT_S: Final = 20.0


class Recorder:
    """A PoolObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.restarts: list[str] = []
        self.handshakes: list[float] = []
        self.rpc_failures: list[tuple[str, str]] = []
        self.rejections: list[str] = []
        self.overloads: list[int] = []
        self.signals: list[str] = []
        self.waits: list[float] = []

    def restarted(self, reason: str) -> None:
        self.restarts.append(reason)

    def handshake(self, seconds: float) -> None:
        self.handshakes.append(seconds)

    def rpc_failed(self, method: str, kind: str) -> None:
        self.rpc_failures.append((method, kind))

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)

    def waited(self, seconds: float) -> None:
        self.waits.append(seconds)

    def overloaded(self, worker: int, signal: str) -> None:
        self.overloads.append(worker)
        self.signals.append(signal)


def fake_config(
    workdir: Path, *args: str, argv: list[str] | None = None, **overrides: Any
) -> WorkerConfig:
    values: dict[str, Any] = {
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
        workdir=workdir,
        profile="plain",
        dialect="v2",  # no auto-detection: the fake has no thread/inject_items
        **values,
    )


def fake_worker(config: WorkerConfig, observer: Recorder | None = None) -> Worker:
    return Worker(0, config, driver=codex_driver(config), observer=observer)


def fake_pool(
    configs: list[WorkerConfig],
    observer: Recorder,
    *,
    max_turns_per_worker: int = 8,
    queue_limit: int = 64,
    queue_timeout_s: float = 10.0,
) -> WorkerPool:
    return WorkerPool(
        configs,
        driver_factory=codex_driver,
        max_turns_per_worker=max_turns_per_worker,
        queue_limit=queue_limit,
        queue_timeout_s=queue_timeout_s,
        observer=observer,
    )
