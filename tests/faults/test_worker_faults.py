"""Faults under load against the real `codex app-server` and the demo model.

A worker killed (`kill -9`) or stopped (`SIGSTOP`) under concurrent
streams, an upstream that hangs mid-stream, and clients that disconnect
while queued, before the first token, and mid-stream. Each test asserts
that nothing hangs (every wait is bounded), every request ends with a
success or a clean terminal error, and nothing is lost: the slots come back,
the queue empties, and the next request works.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import orjson
import pytest

from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until
from tests.sse import parse_sse

SLOTS: Final = 4
# A hung worker is replaced within health_interval_s + rpc_timeout_s (+ restart).
HEALTH_INTERVAL_S: Final = 1.0
RPC_TIMEOUT_S: Final = 2.0
IDLE_TIMEOUT_S: Final = 3.0
WAIT_S: Final = 60.0
LONG_STREAM: Final = "[[words=60]] [[delay_ms=50]]"

pytestmark = pytest.mark.codex


@pytest.fixture(scope="module")
async def bridge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBridge]:
    settings = bridge_test_settings(
        tmp_path_factory.mktemp("faults") / "codex-home",
        **{
            "codex.max_turns_per_worker": SLOTS,
            "codex.health_interval_s": HEALTH_INTERVAL_S,
            "codex.rpc_timeout_s": RPC_TIMEOUT_S,
            "codex.idle_timeout_s": IDLE_TIMEOUT_S,
            "codex.queue_timeout_s": 20.0,
            "codex.restart_backoff_initial_s": 0.1,
        },
    )
    async with running_bridge(settings) as running:
        yield running


@pytest.fixture(autouse=True)
async def nothing_lost(bridge: RunningBridge) -> AsyncIterator[None]:
    """After every test: no slot held, nobody queued, a ready worker that answers."""
    yield
    pool = bridge.pool
    await wait_until(
        lambda: pool.active_turns == 0 and pool.waiting == 0 and pool.ready_count == 1,
        timeout=WAIT_S,
    )
    status, body = await chat(bridge, "[[reply=still here]]")
    assert status == 200, body
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "still here"


async def chat(bridge: RunningBridge, text: str, *, stream: bool = False) -> tuple[int, bytes]:
    body = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as r:
            return r.status, await r.read()


def outcome(status: int, body: bytes) -> str:
    """ "ok" or the error code of a request that ended cleanly; fails on anything else."""
    if status != 200:
        assert status in (429, 502, 503, 504), (status, body)
        return str(orjson.loads(body)["error"]["code"])
    frames = parse_sse(body.decode())
    assert frames[-1].data == "[DONE]", body[-300:]
    last: Any = frames[-2].json()
    if "error" in last:
        return str(last["error"]["code"])
    assert last["choices"][0]["finish_reason"] is not None
    return "ok"


async def load(bridge: RunningBridge, count: int) -> list[asyncio.Task[tuple[int, bytes]]]:
    """`count` long streams; returns once every slot runs one on the model, the rest queued."""
    seen = len(bridge.demo.requests)
    tasks = [
        asyncio.create_task(chat(bridge, f"load {i} {LONG_STREAM}", stream=True))
        for i in range(count)
    ]
    await wait_until(
        lambda: (
            bridge.pool.active_turns == SLOTS
            and bridge.pool.waiting == count - SLOTS
            and len(bridge.demo.requests) >= seen + SLOTS
        ),
        timeout=WAIT_S,
    )
    return tasks


async def test_every_request_ends_cleanly_and_the_worker_returns_when_killed_under_load(
    bridge: RunningBridge,
) -> None:
    worker = bridge.pool.workers[0]
    old_pid = worker.pid
    assert old_pid is not None
    tasks = await load(bridge, SLOTS + 2)
    os.kill(old_pid, signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    outcomes = [outcome(*r) for r in results]
    assert outcomes.count("worker_crashed") >= 1
    assert set(outcomes) <= {"ok", "worker_crashed"}
    await wait_until(lambda: worker.ready and worker.pid != old_pid, timeout=WAIT_S)


async def test_every_request_ends_cleanly_and_the_worker_is_replaced_when_sigstopped_under_load(
    bridge: RunningBridge,
) -> None:
    worker = bridge.pool.workers[0]
    old_pid = worker.pid
    assert old_pid is not None
    tasks = await load(bridge, SLOTS + 2)
    os.kill(old_pid, signal.SIGSTOP)
    try:
        results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
        await wait_until(lambda: worker.ready and worker.pid != old_pid, timeout=WAIT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old_pid, signal.SIGCONT)
            os.kill(old_pid, signal.SIGKILL)
    outcomes = [outcome(*r) for r in results]
    # Streams on the stopped worker end by the idle deadline or when it is killed.
    assert set(outcomes) <= {"ok", "worker_crashed", "timeout"}
    assert outcomes.count("ok") < len(outcomes)


async def test_a_stream_whose_upstream_hangs_mid_reply_ends_with_a_timeout_error(
    bridge: RunningBridge,
) -> None:
    status, body = await asyncio.wait_for(
        chat(bridge, "[[words=20]] [[hang_after=3]]", stream=True), WAIT_S
    )
    assert outcome(status, body) == "timeout"
    assert b'"content":"w1 "' in body  # what arrived before the hang was delivered


async def test_a_client_that_leaves_while_queued_frees_its_place(bridge: RunningBridge) -> None:
    tasks = await load(bridge, SLOTS + 1)
    queued = tasks.pop()
    queued.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await queued
    await wait_until(lambda: bridge.pool.waiting == 0, timeout=WAIT_S)
    assert bridge.pool.active_turns == SLOTS
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_client_that_leaves_before_the_first_token_frees_its_slot(
    bridge: RunningBridge,
) -> None:
    seen = len(bridge.demo.requests)
    task = asyncio.create_task(chat(bridge, "[[ttfb_ms=20000]] [[reply=late]]", stream=True))
    await wait_until(
        lambda: bridge.pool.active_turns == 1 and len(bridge.demo.requests) > seen,
        timeout=WAIT_S,
    )
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await wait_until(lambda: bridge.pool.active_turns == 0, timeout=WAIT_S)


async def test_a_client_that_leaves_mid_stream_frees_its_slot(bridge: RunningBridge) -> None:
    body = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": LONG_STREAM}],
        "stream": True,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as r:
            assert r.status == 200
            received = b""
            async with asyncio.timeout(WAIT_S):
                while b'"content":"w2 "' not in received:
                    received += await r.content.readany()
            r.close()  # the client goes away mid-stream
    await wait_until(lambda: bridge.pool.active_turns == 0, timeout=WAIT_S)
