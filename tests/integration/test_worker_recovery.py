"""Workers killed, stopped or broken: clients get a clean error, the worker comes back, the next request works."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.api.middleware import METRICS
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until
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


# Short enough that a hung or broken worker is replaced within seconds.
HEALTH_INTERVAL_S = 1.0
RPC_TIMEOUT_S = 2.0


@pytest.fixture
async def quick_bridge(tmp_path: Path) -> AsyncIterator[RunningBridge]:
    settings = bridge_test_settings(
        tmp_path / "codex-home",
        **{
            "codex.health_interval_s": HEALTH_INTERVAL_S,
            "codex.rpc_timeout_s": RPC_TIMEOUT_S,
            "codex.restart_backoff_initial_s": 0.1,
        },
    )
    async with running_bridge(settings) as running:
        yield running


async def chat(bridge: RunningBridge, text: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{bridge.base_url}/v1/chat/completions",
            json={"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": text}]},
        ) as r:
            return r.status, await r.json()


async def test_stopped_worker_is_killed_and_replaced_and_readyz_reflects_it_when_sigstopped(
    quick_bridge: RunningBridge,
) -> None:
    bridge = quick_bridge
    worker = bridge.pool.workers[0]
    old_pid = worker.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGSTOP)
    try:
        # A request on the hung worker ends with a clean terminal error, not a hang.
        status, body = await asyncio.wait_for(chat(bridge, "[[reply=lost]]"), RECOVERY_TIMEOUT_S)
        assert status in (502, 503, 504), body
        assert body["error"]["code"] in ("worker_crashed", "worker_unavailable", "timeout")
        ready_status = await _readyz_until(bridge, 503)
        await wait_until(lambda: worker.ready and worker.pid != old_pid, timeout=RECOVERY_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old_pid, signal.SIGCONT)
            os.kill(old_pid, signal.SIGKILL)
    assert ready_status == 503
    assert "unresponsive" in _restart_reasons(bridge)
    status, body = await chat(bridge, "[[reply=back]]")
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "back"


async def test_worker_whose_directory_was_deleted_is_replaced_and_requests_work_again(
    quick_bridge: RunningBridge,
) -> None:
    bridge = quick_bridge
    worker = bridge.pool.workers[0]
    old_pid = worker.pid
    workdir = worker.config.workdir
    shutil.rmtree(workdir)
    await wait_until(lambda: worker.ready and worker.pid != old_pid, timeout=RECOVERY_TIMEOUT_S)
    assert workdir.is_dir()
    assert "workdir_missing" in _restart_reasons(bridge)
    status, body = await chat(bridge, "[[reply=fine]]")
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "fine"


async def _readyz_until(bridge: RunningBridge, wanted: int) -> int:
    """Polls /readyz (bounded) until it answers `wanted`; returns the last status."""
    status = 0
    async with aiohttp.ClientSession() as http, asyncio.timeout(RECOVERY_TIMEOUT_S):
        while status != wanted:
            if status:
                await asyncio.sleep(0.05)  # poll interval
            async with http.get(f"{bridge.base_url}/readyz") as r:
                status = r.status
    return status


def _restart_reasons(bridge: RunningBridge) -> set[str]:
    metrics = bridge.app[METRICS]
    return {
        sample.labels["reason"]
        for metric in metrics.worker_restarts.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value > 0
    }
