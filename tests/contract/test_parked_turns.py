"""Turns that wait for a client's tool results hold no capacity, and have a bound of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import openai

from bridge.api.pending import PENDING
from bridge.demo import DEMO_MODEL_ID
from tests.contract.test_tool_calls import ASK, TOOLS, follow_up
from tests.harness import bridge_test_settings, running_bridge, wait_until

SOLO = "sk-solo-0123456789"
SETTLE_S = 10.0


async def test_unanswered_tool_calls_hold_no_slot_and_the_oldest_is_released_past_the_bound(
    tmp_path: Path,
) -> None:
    settings = bridge_test_settings(
        tmp_path / "home",
        **{
            "codex.max_turns_per_worker": 2,
            # A request that cannot get a slot fails fast (429) instead of hanging the test.
            "codex.queue_timeout_s": 2.0,
            "codex.max_parked_turns": 3,
            # One turn at a time for this key: a parked turn holding its slot would block it.
            "auth.api_keys": [f"solo:{SOLO}:1"],
        },
    )
    async with (
        running_bridge(settings) as bridge,
        openai.AsyncOpenAI(base_url=f"{bridge.base_url}/v1", api_key=SOLO, max_retries=0) as sdk,
        aiohttp.ClientSession() as http,
    ):
        asked: list[tuple[list[Any], Any]] = []
        for i in range(4):  # more unanswered tool calls than turn slots (2) and key slots (1)
            messages: list[Any] = [{"role": "user", "content": f"call {i} {ASK}"}]
            completion = await sdk.chat.completions.create(
                model=DEMO_MODEL_ID, messages=messages, tools=TOOLS
            )
            assert completion.choices[0].finish_reason == "tool_calls"
            asked.append((messages, completion.choices[0].message))
        pending = bridge.app[PENDING]
        assert len(pending) == 3  # the oldest was released to stay within the bound
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=SETTLE_S)
        async with http.get(f"{bridge.base_url}/readyz") as ready:
            assert (await ready.json())["active_turns"] == 0
        async with http.get(f"{bridge.base_url}/metrics") as scraped:
            assert "codex_bridge_parked_turns 3.0" in await scraped.text()

        fresh = await sdk.chat.completions.create(
            model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "[[reply=served]]"}]
        )
        assert fresh.choices[0].message.content == "served"

        # The newest parked turn resumes where it waited: one more model call, no replay.
        messages, message = asked[-1]
        (call,) = message.tool_calls
        upstream_before = len(bridge.demo.requests)
        resumed = await sdk.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=follow_up(messages, message, {call.id: "Rain"}),
            tools=TOOLS,
        )
        assert resumed.choices[0].message.content == "Tool results: Rain"
        assert len(bridge.demo.requests) == upstream_before + 1
        assert len(pending) == 2

        # The released one's follow-up replays its conversation on a fresh turn.
        messages, message = asked[0]
        (call,) = message.tool_calls
        replayed = await sdk.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=follow_up(messages, message, {call.id: "Fog"}),
            tools=TOOLS,
        )
        assert replayed.choices[0].message.content == "Tool results: Fog"
        assert len(pending) == 2
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=SETTLE_S)


async def test_no_turn_is_parked_when_max_parked_turns_is_zero(tmp_path: Path) -> None:
    settings = bridge_test_settings(tmp_path / "home", **{"codex.max_parked_turns": 0})
    async with (
        running_bridge(settings) as bridge,
        openai.AsyncOpenAI(
            base_url=f"{bridge.base_url}/v1", api_key="unused", max_retries=0
        ) as sdk,
    ):
        messages: list[Any] = [{"role": "user", "content": ASK}]
        first = await sdk.chat.completions.create(
            model=DEMO_MODEL_ID, messages=messages, tools=TOOLS
        )
        message = first.choices[0].message
        (call,) = message.tool_calls or []
        assert len(bridge.app[PENDING]) == 0
        second = await sdk.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=follow_up(messages, message, {call.id: "Hail"}),
            tools=TOOLS,
        )
        assert second.choices[0].message.content == "Tool results: Hail"
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=SETTLE_S)
