"""A worker killed mid-request: the client gets a clean error, the worker comes back, the next request works."""

from __future__ import annotations

import asyncio

import aiohttp

from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, wait_until
from tests.sse import parse_sse

RECOVERY_TIMEOUT_S = 60.0


async def test_worker_killed_mid_stream_yields_terminal_error_and_next_request_succeeds(
    fresh_bridge: RunningBridge,
) -> None:
    bridge = fresh_bridge
    worker = bridge.pool.workers[0]
    old_pid = worker.pid
    body = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "x [[words=400]] [[delay_ms=50]]"}],
        "stream": True,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as r:
            assert r.status == 200
            received = b""
            # Read until real content has streamed, then kill the worker under it.
            while b'"content":"w2 "' not in received:
                received += await r.content.readany()
            worker.kill()
            received += await r.read()
    frames = parse_sse(received.decode())
    assert frames[-1].data == "[DONE]"
    error = frames[-2].json()["error"]
    assert error["code"] == "worker_crashed"
    assert error["type"] == "server_error"

    await wait_until(lambda: worker.ready and worker.pid != old_pid, timeout=RECOVERY_TIMEOUT_S)
    assert worker.restarts == 1
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{bridge.base_url}/v1/chat/completions",
            json={
                "model": DEMO_MODEL_ID,
                "messages": [{"role": "user", "content": "[[reply=back]]"}],
            },
        ) as r:
            assert r.status == 200
            reply = await r.json()
    assert reply["choices"][0]["message"]["content"] == "back"


async def test_worker_killed_during_non_streaming_request_yields_502(
    fresh_bridge: RunningBridge,
) -> None:
    bridge = fresh_bridge
    worker = bridge.pool.workers[0]
    body = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "x [[words=5]] [[hang_after=1]]"}],
    }
    async with aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(
            http.post(f"{bridge.base_url}/v1/chat/completions", json=body)
        )
        await wait_until(
            lambda: bridge.pool.active_turns == 1 and len(bridge.demo.requests) >= 1,
            timeout=RECOVERY_TIMEOUT_S,
        )
        worker.kill()
        response = await request
        assert response.status == 502
        error = (await response.json())["error"]
        response.release()
    assert error["code"] == "worker_crashed"
    await wait_until(lambda: bridge.pool.active_turns == 0, timeout=RECOVERY_TIMEOUT_S)


async def test_readyz_is_503_while_no_worker_is_ready_and_200_after(
    fresh_bridge: RunningBridge,
) -> None:
    bridge = fresh_bridge
    worker = bridge.pool.workers[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.base_url}/readyz") as r:
            assert r.status == 200
            assert (await r.json())["workers_ready"] == 1
        await worker.stop()  # stays down: nothing restarts a stopped worker
        async with http.get(f"{bridge.base_url}/readyz") as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "2"
        async with http.get(f"{bridge.base_url}/healthz") as r:
            assert r.status == 200
        async with http.post(
            f"{bridge.base_url}/v1/chat/completions",
            json={"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": "x"}]},
        ) as r:
            assert r.status == 503
            assert r.headers["Retry-After"]
            assert (await r.json())["error"]["code"] == "worker_unavailable"
