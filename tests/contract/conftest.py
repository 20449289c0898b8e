"""The official SDK pointed at the shared bridge, for every contract test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from bridge.api.pending import PENDING
from tests.harness import RunningBridge, wait_until

SETTLE_S = 10.0


@pytest.fixture
async def client(bridge: RunningBridge) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{bridge.base_url}/v1", api_key="unused", max_retries=0
    ) as sdk:
        yield sdk
    # Turns left waiting for tool results hold worker slots: free them for
    # the tests that share this bridge.
    await bridge.app[PENDING].close()
    # A handler finishes its cleanup just after the client read the end.
    await wait_until(lambda: bridge.pool.active_turns == 0, timeout=SETTLE_S)
