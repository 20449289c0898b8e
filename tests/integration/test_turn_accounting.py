"""What a request's answer and the usage ledger say when turns end off the happy path.

A parked tool-call turn that nobody comes back for still reaches the ledger
with the tokens its end reports; a stream whose turn fails during the header
hold answers with the request's ignored-params header like any other answer;
the overall deadline counts from the request's arrival (queue wait included).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bridge.api.pending import PENDING
from bridge.api.validation import IGNORED_PARAMS_HEADER
from bridge.demo import DEMO_MODEL_ID
from bridge.ops.usage import USAGE
from tests.contract.test_tool_calls import ASK, TOOLS
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until

SETTLE_S = 30.0
TOOL_CALL_TIMEOUT_S = 1.0
# Text the bridge's estimate counts as ~1000 tokens and the demo model as 3000
# (4 characters a token): Codex's count of the model call exceeds what the
# tool-call response billed, and the rest comes with the turn's end.
PADDING = "information " * 1000


async def _usage_rows(bridge: RunningBridge, since: int) -> list[dict[str, Any]]:
    ledger = bridge.app[USAGE]
    await ledger.flush()
    buckets = await ledger.buckets(since, int(time.time()) + 60, None)
    return [result for bucket in buckets for result in bucket["results"]]


async def test_a_parked_turn_that_expires_leaves_a_usage_row_for_the_tokens_of_its_end(
    tmp_path: Path,
) -> None:
    settings = bridge_test_settings(
        tmp_path / "home", **{"codex.tool_call_timeout_s": TOOL_CALL_TIMEOUT_S}
    )
    since = int(time.time()) - 60
    async with running_bridge(settings) as bridge:
        body = {
            "model": DEMO_MODEL_ID,
            "messages": [{"role": "user", "content": f"{PADDING} {ASK}"}],
            "tools": TOOLS,
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as r:
                assert r.status == 200, await r.text()
                answer = await r.json()
        assert answer["choices"][0]["finish_reason"] == "tool_calls"
        billed_with_the_call = answer["usage"]["prompt_tokens"]
        # The request's own row is written when it ends.
        await wait_until(lambda: len(bridge.app[PENDING]) == 1, timeout=SETTLE_S)
        (first,) = await _usage_rows(bridge, since)
        assert first["num_model_requests"] == 1
        assert first["input_tokens"] == billed_with_the_call
        # Nobody comes back: the turn is interrupted at its timeout, and what
        # its end reports is written as a row of its own.
        await wait_until(lambda: len(bridge.app[PENDING]) == 0, timeout=SETTLE_S)
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=SETTLE_S)
        rows: list[dict[str, Any]] = []

        async def late_row_written() -> None:
            while True:  # bounded by the wait_for below
                rows[:] = await _usage_rows(bridge, since)
                if rows and rows[0]["num_model_requests"] == 2:
                    return
                await asyncio.sleep(0.05)  # polls the ledger, bounded by the wait_for below

        await asyncio.wait_for(late_row_written(), SETTLE_S)
        (total,) = rows
        assert total["input_tokens"] > billed_with_the_call


async def test_a_stream_that_fails_during_the_header_hold_still_names_its_ignored_params(
    bridge: RunningBridge,
) -> None:
    body = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "x [[status=429]]"}],
        "stream": True,
        "seed": 7,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as r:
            assert r.status == 429
            assert r.headers["Content-Type"].startswith("application/json")
            assert "seed" in r.headers[IGNORED_PARAMS_HEADER].split(",")
            error = orjson.loads(await r.read())["error"]
    assert error["message"]


async def test_the_overall_deadline_counts_the_time_a_request_waited_in_the_queue(
    tmp_path: Path,
) -> None:
    deadline_s = 2.0
    settings = bridge_test_settings(
        tmp_path / "home",
        **{
            "codex.max_turns_per_worker": 1,
            "codex.request_deadline_s": deadline_s,
            "codex.queue_timeout_s": 30.0,
        },
    )
    async with running_bridge(settings) as bridge:
        url = f"{bridge.base_url}/v1/chat/completions"

        def chat(text: str) -> dict[str, Any]:
            return {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": text}]}

        async with aiohttp.ClientSession() as http:
            # Holds the only slot until its own deadline ends it.
            holder = asyncio.create_task(http.post(url, json=chat("[[hang_after=0]]")))
            await wait_until(lambda: bridge.pool.active_turns == 1, timeout=SETTLE_S)
            queued = asyncio.create_task(http.post(url, json=chat("[[words=25]] [[delay_ms=20]]")))
            await wait_until(lambda: bridge.pool.waiting == 1, timeout=SETTLE_S)
            first = await asyncio.wait_for(holder, SETTLE_S)
            assert first.status == 504
            # It waited its whole deadline for the slot: the reply (25 words,
            # 20 ms apart, well within 2 s of its own) no longer fits, so 504 too.
            second = await asyncio.wait_for(queued, SETTLE_S)
            assert second.status == 504, await second.text()
            assert "the request took longer" in (await second.json())["error"]["message"]
            first.release()
            second.release()
