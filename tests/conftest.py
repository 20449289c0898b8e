"""Shared fixtures: one real bridge (real Codex worker + demo model) for the whole session.

Codex workers cost 40-150 ms of CPU per turn on a 2-core machine, so the
integration and contract suites share one bridge; tests that break a worker
on purpose use their own (`fresh_bridge`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.harness import RunningBridge, bridge_test_settings, running_bridge


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
