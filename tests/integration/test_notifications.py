"""What the real worker sends per turn: only notifications the bridge reads.

Every notification Codex sends is serialized by Codex and parsed by the
bridge's reader, so the ones the bridge never reads are opted out at the
handshake (`v2.OPT_OUT_NOTIFICATIONS`). Checked against the real
`codex app-server`: Codex honours each name, and the reply is still whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import pytest

from bridge.codex import v2
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge

pytestmark = pytest.mark.codex


@pytest.fixture(scope="module")
async def watched(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[RunningBridge, list[str]]]:
    received: list[str] = []

    def record(direction: Literal["c2s", "s2c"], message: dict[str, Any]) -> None:
        if direction == "s2c" and "method" in message and "id" not in message:
            received.append(str(message["method"]))

    settings = bridge_test_settings(tmp_path_factory.mktemp("codex-home-notifications"))
    async with running_bridge(settings, also_hook=record) as running:
        yield running, received


async def test_the_worker_sends_no_opted_out_notification_when_a_turn_runs(
    watched: tuple[RunningBridge, list[str]],
) -> None:
    bridge, received = watched
    body = {
        "model": DEMO_MODEL_ID,
        # Reasoning in two summary parts: the opted-out part and raw-text events would come.
        "messages": [
            {
                "role": "user",
                "content": "hi [[reasoning=First thought||Second thought]] "
                "[[reply=Bonjour tout le monde]]",
            }
        ],
        "reasoning_effort": "low",
    }
    received.clear()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            reply = await resp.json()
    assert reply["choices"][0]["message"]["content"] == "Bonjour tout le monde"
    # The turn's own notifications did arrive (the hook sees the stream) ...
    assert "item/agentMessage/delta" in received
    assert "item/reasoning/summaryTextDelta" in received
    assert "turn/completed" in received
    # ... and none of those the bridge opted out of. `item/completed` stays: conversation
    # affinity keeps a thread only when its final reply item is what the client got.
    assert "item/reasoning/textDelta" in v2.OPT_OUT_NOTIFICATIONS
    assert "item/completed" in received
    assert set(received) & set(v2.OPT_OUT_NOTIFICATIONS) == set()
    # Named here too: a name dropped from the list would otherwise go unnoticed.
    assert "item/reasoning/summaryPartAdded" not in received
