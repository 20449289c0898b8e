"""A burst of concurrent streams on one worker allowed 256 turns: served or told to come back, never 5xx.

Drives the real `codex app-server` with the demo model. Every client opens
its connection first and then all send at once, so the worker sees the
burst as one wave of `thread/start` requests. Whatever the worker does
(answers, refuses with -32001, answers late), each request must end as a
complete stream (200) or as 429/503 with Retry-After.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import pytest

from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until
from tests.sse import parse_sse

BURST: Final = 256
WAIT_S: Final = 120.0

pytestmark = pytest.mark.codex


@pytest.fixture
async def wide_bridge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBridge]:
    settings = bridge_test_settings(
        tmp_path_factory.mktemp("burst") / "codex-home",
        **{
            "codex.workers": 1,
            "codex.max_turns_per_worker": 256,  # the most the configuration accepts
            "codex.queue_limit": BURST,
        },
    )
    async with running_bridge(settings) as running:
        yield running


async def test_a_256_stream_burst_on_one_worker_gets_no_5xx_when_the_turn_cap_is_256(
    wide_bridge: RunningBridge,
) -> None:
    bridge = wide_bridge
    url = f"{bridge.base_url}/v1/chat/completions"
    go = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def warm() -> None:
            async with http.get(f"{bridge.base_url}/healthz") as r:
                await r.read()

        async def one(i: int) -> tuple[int, str | None, bytes]:
            body = {
                "model": DEMO_MODEL_ID,
                "stream": True,
                "messages": [{"role": "user", "content": f"burst {i} [[words=20]]"}],
            }
            await go.wait()
            async with http.post(url, json=body) as r:
                return r.status, r.headers.get("Retry-After"), await r.read()

        await asyncio.gather(*(warm() for _ in range(BURST)))  # open the connections first
        tasks = [asyncio.create_task(one(i)) for i in range(BURST)]
        go.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)

    served = 0
    for status, retry_after, body in results:
        if status == 200:
            frames = parse_sse(body.decode())
            assert frames[-1].data == "[DONE]"
            last = frames[-2].json()
            assert "error" not in last, last  # no 5xx inside the stream either
            assert last["choices"][0]["finish_reason"] == "stop"
            served += 1
        else:
            assert status in (429, 503), (status, body[:300])
            assert retry_after is not None and int(retry_after) >= 1
    assert served > 0
    pool = bridge.pool
    await wait_until(lambda: pool.active_turns == 0 and pool.waiting == 0, timeout=WAIT_S)
    assert pool.ready_count == 1
