"""Pre-warmed threads (`codex.prewarm_threads`) against a real Codex worker and the demo model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest

from bridge.codex.dialect import CodexDriver
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until

WAIT_S = 30.0


class Sent:
    """The bridge's JSON-RPC requests to its worker, in order."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, direction: Literal["c2s", "s2c"], message: dict[str, Any]) -> None:
        if direction == "c2s" and "method" in message and "id" in message:
            self.requests.append(message)

    def methods_since(self, mark: int) -> list[str]:
        return [m["method"] for m in self.requests[mark:]]


@pytest.fixture
async def prewarming(tmp_path: Path) -> AsyncIterator[tuple[RunningBridge, Sent]]:
    sent = Sent()
    settings = bridge_test_settings(
        tmp_path / "codex-home",
        **{"codex.prewarm_threads": 2, "codex.health_interval_s": 3600.0},
    )
    async with running_bridge(settings, also_hook=sent) as bridge:
        yield bridge, sent


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    """A model request minus what is new for every thread and turn either way (ids, cache key)."""
    per_thread = ("prompt_cache_key", "client_metadata", "input")
    kept = {k: v for k, v in body.items() if k not in per_thread}
    kept["input"] = [{k: v for k, v in item.items() if k != "id"} for item in body["input"]]
    return kept


def driver_of(bridge: RunningBridge) -> CodexDriver:
    driver = bridge.pool.workers[0].driver
    assert isinstance(driver, CodexDriver)
    return driver


async def chat(bridge: RunningBridge, **extra: Any) -> dict[str, Any]:
    body = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "hello [[words=3]]"}],
        **extra,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as r,
    ):
        assert r.status == 200
        result: dict[str, Any] = await r.json()
        return result


async def test_request_starts_its_turn_on_a_stocked_thread_when_the_worker_was_idle(
    prewarming: tuple[RunningBridge, Sent],
) -> None:
    bridge, sent = prewarming
    stock = driver_of(bridge).stock
    mark0 = len(sent.requests)
    first = await chat(bridge)
    await wait_until(lambda: len(stock) == 2, timeout=WAIT_S)
    mark = len(sent.requests)
    second = await chat(bridge)
    methods = sent.methods_since(mark)
    # The critical path is turn/start only: no thread/start before it.
    assert methods[0] == "turn/start"
    assert stock.hits == 1
    assert second["choices"][0]["message"] == first["choices"][0]["message"]
    # The model received the same request from the warm thread as from the cold one
    # (bar the per-thread cache key, new for every thread either way).
    cold, warm = (without_ids(body) for body in bridge.demo.requests[-2:])
    assert warm == cold
    # The stocked threads were started with exactly the params the cold start sent.
    starts = [m["params"] for m in sent.requests[mark0:mark] if m["method"] == "thread/start"]
    assert len(starts) == 3
    assert starts[1] == starts[2] == starts[0]
    assert starts[0]["ephemeral"] is True


async def test_stock_is_refilled_only_for_the_configurations_requests_use(
    prewarming: tuple[RunningBridge, Sent],
) -> None:
    bridge, _ = prewarming
    stock = driver_of(bridge).stock
    terse = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "a"}]
    await chat(bridge, messages=terse)
    await wait_until(lambda: len(stock) == 2, timeout=WAIT_S)
    assert [p["baseInstructions"] for p in stock.stocked()] == ["Be terse."] * 2
    await chat(bridge)
    # A second configuration in use: the stock splits evenly within its bound.
    await wait_until(
        lambda: (
            sorted(p["baseInstructions"] for p in stock.stocked())
            == ["Be terse.", "You are a helpful assistant."]
        ),
        timeout=WAIT_S,
    )
    assert len(stock) == 2


async def test_stock_is_emptied_when_the_worker_restarts(
    prewarming: tuple[RunningBridge, Sent],
) -> None:
    bridge, _ = prewarming
    worker = bridge.pool.workers[0]
    stock = driver_of(bridge).stock
    await chat(bridge)
    await wait_until(lambda: len(stock) == 2, timeout=WAIT_S)
    old_pid = worker.pid
    worker.kill()
    await wait_until(lambda: worker.ready and worker.pid != old_pid, timeout=WAIT_S)
    assert len(stock) == 0
    # A stale id of the dead process is never used: the next request starts cold.
    reply = await chat(bridge)
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert stock.hits == 0


async def test_stored_responses_start_their_thread_cold_when_prewarming_is_on(
    prewarming: tuple[RunningBridge, Sent],
) -> None:
    bridge, sent = prewarming
    stock = driver_of(bridge).stock
    await chat(bridge)
    await wait_until(lambda: len(stock) == 2, timeout=WAIT_S)
    mark = len(sent.requests)
    body = {"model": DEMO_MODEL_ID, "input": "hello [[words=2]]", "store": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{bridge.base_url}/v1/responses", json=body) as r,
    ):
        assert r.status == 200
    starts = [m["params"] for m in sent.requests[mark:] if m["method"] == "thread/start"]
    assert starts and starts[0]["ephemeral"] is False
    assert stock.hits == 0
