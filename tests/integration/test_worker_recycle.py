"""Workers recycled on schedule (turn count, memory) with the real Codex binary: no request fails.

Codex 0.163 keeps about 0.9 MB per ephemeral thread for the life of the
process (no RPC unloads one), so the bridge restarts a worker after
`codex.worker_max_turns` turns or past `codex.worker_max_rss_mb`. The
worker drains first; with one worker, requests queue for the new process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from bridge.api.middleware import METRICS
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until
from tests.sse import parse_sse

RECOVERY_TIMEOUT_S = 60.0


def _recycles(bridge: RunningBridge, reason: str) -> float:
    return sum(
        sample.value
        for metric in bridge.app[METRICS].worker_recycles.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["reason"] == reason
    )


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": text}], **extra}


async def test_every_request_succeeds_and_the_worker_is_recycled_when_it_reaches_worker_max_turns(
    tmp_path: Path,
) -> None:
    settings = bridge_test_settings(tmp_path / "home", **{"codex.worker_max_turns": 3})
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        worker = bridge.pool.workers[0]
        pids: list[int | None] = []
        for i in range(8):
            async with http.post(
                f"{bridge.base_url}/v1/chat/completions", json=_chat(f"[[reply=r{i}]]")
            ) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["choices"][0]["message"]["content"] == f"r{i}"
            pids.append(worker.pid)
        await wait_until(lambda: _recycles(bridge, "max_turns") == 2, timeout=RECOVERY_TIMEOUT_S)
        # Turns 1-3 ran on the first process, 4-6 on the second, 7-8 on the third.
        assert len(set(pids[0:3])) == len(set(pids[3:6])) == len(set(pids[6:8])) == 1
        assert len({pids[0], pids[3], pids[6]}) == 3
        assert worker.restarts == 2


async def test_a_running_stream_finishes_and_a_new_request_waits_when_its_worker_drains(
    tmp_path: Path,
) -> None:
    settings = bridge_test_settings(tmp_path / "home", **{"codex.worker_max_turns": 2})
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        worker = bridge.pool.workers[0]
        old_pid = worker.pid
        url = f"{bridge.base_url}/v1/chat/completions"
        async with http.post(
            url, json=_chat("[[words=40]] [[delay_ms=50]]", stream=True)
        ) as long_stream:
            assert long_stream.status == 200
            received = await long_stream.content.readany()
            # The second turn reaches the bound: the worker drains under the stream.
            async with http.post(url, json=_chat("[[reply=second]]")) as r:
                assert r.status == 200
            assert worker.recycling and worker.pid == old_pid
            third = asyncio.create_task(http.post(url, json=_chat("[[reply=third]]")))
            await wait_until(lambda: bridge.pool.waiting == 1, timeout=RECOVERY_TIMEOUT_S)
            received += await long_stream.read()
        frames = parse_sse(received.decode())
        assert frames[-1].data == "[DONE]"
        assert all("error" not in (f.json() or {}) for f in frames[:-1])
        assert frames[-2].json()["choices"][0]["finish_reason"] == "stop"
        async with await asyncio.wait_for(third, RECOVERY_TIMEOUT_S) as r:
            assert r.status == 200
            assert (await r.json())["choices"][0]["message"]["content"] == "third"
        assert worker.pid != old_pid
        assert _recycles(bridge, "max_turns") == 1


async def test_a_worker_past_worker_max_rss_mb_is_recycled_and_requests_still_succeed(
    tmp_path: Path,
) -> None:
    # A bound below any real process: recycled at every health check.
    settings = bridge_test_settings(
        tmp_path / "home", **{"codex.worker_max_rss_mb": 1, "codex.health_interval_s": 0.5}
    )
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        await wait_until(lambda: _recycles(bridge, "max_rss") >= 1, timeout=RECOVERY_TIMEOUT_S)
        for i in range(3):
            async with http.post(
                f"{bridge.base_url}/v1/chat/completions", json=_chat(f"[[reply=m{i}]]")
            ) as r:
                assert r.status == 200, await r.text()
