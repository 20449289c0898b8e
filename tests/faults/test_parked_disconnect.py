"""A client that hangs up while its tool call is parked: no slot held, released at its timeout,
and a follow-up after the release replays the conversation on a new Codex thread.

`tests/contract/test_parked_turns.py` covers parked turns released by the
bound (`codex.max_parked_turns`); this is the other release, by time
(`codex.tool_call_timeout_s`), after a streamed request whose client left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import aiohttp

from bridge.api.pending import PENDING
from bridge.demo import DEMO_MODEL_ID
from tests.contract.test_tool_calls import ASK, TOOLS
from tests.harness import bridge_test_settings, running_bridge, wait_until
from tests.sse import parse_sse

SETTLE_S = 20.0
TOOL_CALL_TIMEOUT_S = 3.0


async def test_a_parked_turn_holds_no_slot_is_released_at_its_timeout_and_its_follow_up_replays_when_the_client_hung_up(
    tmp_path: Path,
) -> None:
    thread_starts: list[str] = []

    def hook(direction: Literal["c2s", "s2c"], message: dict[str, Any]) -> None:
        if direction == "c2s" and message.get("method") == "thread/start":
            thread_starts.append(message["method"])

    settings = bridge_test_settings(
        tmp_path / "home",
        **{
            # One turn slot: a parked turn that kept it would block every other request.
            "codex.max_turns_per_worker": 1,
            # No stock of pre-warmed threads: its refills would be counted as the replay's.
            "codex.prewarm_threads": 0,
            "codex.queue_timeout_s": 2.0,
            "codex.tool_call_timeout_s": TOOL_CALL_TIMEOUT_S,
        },
    )
    async with running_bridge(settings, also_hook=hook) as bridge:
        url = f"{bridge.base_url}/v1/chat/completions"
        messages: list[Any] = [{"role": "user", "content": ASK}]
        body = {"model": DEMO_MODEL_ID, "messages": messages, "tools": TOOLS, "stream": True}
        # The client reads its tool call, then hangs up (its session closes) and never answers.
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as r:
            assert r.status == 200
            received = await r.read()
        call = next(
            tc
            for frame in parse_sse(received.decode())
            if frame.data.startswith("{")
            for choice in frame.json()["choices"]
            for tc in (choice["delta"].get("tool_calls") or [])
            if tc.get("id")
        )
        pending = bridge.app[PENDING]
        await wait_until(lambda: len(pending) == 1, timeout=SETTLE_S)
        # Parked, its client gone: it holds no slot, so another request runs meanwhile.
        assert bridge.pool.active_turns == 0
        async with aiohttp.ClientSession() as http:
            plain = {
                "model": DEMO_MODEL_ID,
                "messages": [{"role": "user", "content": "[[reply=ok]]"}],
            }
            async with http.post(url, json=plain) as r:
                assert r.status == 200
        assert len(pending) == 1
        # Nobody comes back: released at codex.tool_call_timeout_s.
        await wait_until(lambda: len(pending) == 0, timeout=SETTLE_S)

        starts_before = len(thread_starts)
        upstream_before = len(bridge.demo.requests)
        follow = [
            *messages,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {
                            "name": call["function"]["name"],
                            "arguments": call["function"].get("arguments") or "{}",
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call["id"], "content": "Sleet"},
        ]
        async with aiohttp.ClientSession() as http:
            async with http.post(
                url, json={"model": DEMO_MODEL_ID, "messages": follow, "tools": TOOLS}
            ) as r:
                assert r.status == 200, await r.text()
                answer = await r.json()
        assert answer["choices"][0]["message"]["content"] == "Tool results: Sleet"
        # A replay: a new Codex thread with the whole conversation, one model call.
        assert len(thread_starts) == starts_before + 1
        assert len(bridge.demo.requests) == upstream_before + 1
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=SETTLE_S)
