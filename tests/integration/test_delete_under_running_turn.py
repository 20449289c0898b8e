"""Deleting a stored response never deletes the Codex thread a resumed turn is running on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai

from bridge.api.turns import TURNS
from bridge.demo import DEMO_MODEL_ID
from tests.contract.test_openai_sdk_responses import WEATHER_TOOL
from tests.harness import bridge_test_settings, running_bridge, wait_until

SETTLE_S = 10.0


async def test_deleting_a_response_keeps_its_thread_while_the_follow_up_runs_the_same_turn(
    tmp_path: Path,
) -> None:
    sent: list[str] = []

    def record(direction: str, message: dict[str, Any]) -> None:
        if direction == "c2s" and "method" in message:
            sent.append(str(message["method"]))

    settings = bridge_test_settings(tmp_path / "home")
    async with (
        running_bridge(settings, also_hook=record) as bridge,
        openai.AsyncOpenAI(
            base_url=f"{bridge.base_url}/v1", api_key="unused", max_retries=0
        ) as client,
    ):
        # The reply after the tool result sends one delta, then hangs: the
        # resumed turn is still running when the response is deleted.
        first = await client.responses.create(
            model=DEMO_MODEL_ID,
            input='[[tool=get_weather]] [[args={"city":"Rome"}]] [[hang_after=1]]',
            tools=[WEATHER_TOOL],
        )
        (call,) = [item for item in first.output if item.type == "function_call"]
        stream = await client.responses.create(
            model=DEMO_MODEL_ID,
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Hot"}],  # type: ignore[union-attr]
            tools=[WEATHER_TOOL],
            stream=True,
        )
        try:
            async for event in stream:
                if event.type == "response.output_text.delta":
                    break
            deleted = await client.responses.delete(first.id)
            assert deleted is None or getattr(deleted, "deleted", True)
            assert "thread/delete" not in sent
            assert len(bridge.app[TURNS]) == 1  # the adopted turn still runs
        finally:
            await stream.close()
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=SETTLE_S)
