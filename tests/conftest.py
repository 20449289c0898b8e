"""Shared fixtures: one real bridge (real Codex worker + demo model) for the whole session.

Codex workers cost 40-150 ms of CPU per turn on a 2-core machine, so the
integration and contract suites share one bridge; tests that break a worker
on purpose use their own (`fresh_bridge`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.harness import RunningBridge, bridge_test_settings, running_bridge
from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
async def bridge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBridge]:
    home = tmp_path_factory.mktemp("codex-home")
    async with running_bridge(bridge_test_settings(home)) as running:
        yield running


@pytest.fixture
async def fresh_bridge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBridge]:
    home = tmp_path_factory.mktemp("codex-home-fresh")
    async with running_bridge(bridge_test_settings(home)) as running:
        yield running


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests keep apart by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may stop and start again."""
    server = RedisServer(tmp_path_factory.mktemp("redis-own"))
    server.start()
    yield server
    server.stop()
