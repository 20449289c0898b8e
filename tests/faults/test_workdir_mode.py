"""A deleted `workdirs/` comes back private: the supervisor recreates it 0700 whatever the umask."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.workers import WAIT_S, Recorder, fake_config, fake_worker
from tests.harness import wait_until


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common default umask: without care, recreated parents come out 0755."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("loose_umask")
async def test_a_deleted_workdirs_directory_is_recreated_0700_when_the_umask_is_022(
    tmp_path: Path,
) -> None:
    workroot = tmp_path / "state" / "workdirs"
    workdir = workroot / "worker-0"
    seen = Recorder()
    worker = fake_worker(fake_config(workdir, health_interval_s=0.2), seen)
    worker.start()
    try:
        await wait_until(lambda: worker.ready, timeout=WAIT_S)
        old_pid = worker.pid
        shutil.rmtree(workroot)
        await wait_until(lambda: worker.ready and worker.pid != old_pid, timeout=WAIT_S)
        assert seen.restarts == ["workdir_missing"]
        assert _mode(workroot) == 0o700
        assert _mode(workdir) == 0o700
    finally:
        await worker.stop()
