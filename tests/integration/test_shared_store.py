"""Bridges on a shared Redis store (`store.url`), against a real redis-server on loopback.

One bridge keeps its responses in Redis and continues them; Redis taken away
mid-run costs continuation (503) but not plain chat, `/readyz` and the
metrics say so, and Redis brought back is used again without restarting the
bridge. Two bridges sharing one Redis continue each other's responses and
hold a key's concurrency cap together.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as redis

from bridge.api.pending import PENDING
from bridge.appkeys import STATE, STORE
from bridge.codex.threads import has_rollout
from bridge.demo import DEMO_MODEL_ID
from bridge.redis_store import KEY_PREFIX
from bridge.retention import RETENTION
from bridge.store import ANONYMOUS_OWNER
from tests.harness import bridge_test_settings, running_bridge, wait_until
from tests.redis_server import RedisServer


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def _respond(
    http: aiohttp.ClientSession, base: str, text: str, previous: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": DEMO_MODEL_ID, "input": text}
    if previous is not None:
        body["previous_response_id"] = previous
    status, answer = await _post(http, f"{base}/v1/responses", body)
    assert status == 200, answer
    return answer


def _text(response: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


async def _readyz(http: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{base}/readyz") as resp:
        return resp.status, await resp.json()


async def _store_up(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("codex_bridge_store_up "):
                return float(line.split()[1])
    raise AssertionError("codex_bridge_store_up not exported")


async def test_a_bridge_with_store_url_keeps_responses_in_redis_and_continues_them(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    settings = bridge_test_settings(tmp_path / "home", **{"store.url": redis_server.url})
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        first = await _respond(http, bridge.base_url, "first [[reply=one]]")
        probe = redis.Redis.from_url(redis_server.url)
        try:
            assert await probe.exists(f"{KEY_PREFIX}resp:{first['id']}") == 1
        finally:
            await probe.aclose()
        second = await _respond(http, bridge.base_url, "second [[echo_input]]", first["id"])
        seen = _text(second).splitlines()
        assert "user: first [[reply=one]]" in seen and "assistant: one" in seen
        status, ready = await _readyz(http, bridge.base_url)
        assert status == 200 and ready["store"] == "ok"


async def test_redis_down_refuses_continuation_serves_plain_chat_and_recovers_when_it_returns(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    settings = bridge_test_settings(tmp_path / "home", **{"store.url": own_redis.url})
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        base = bridge.base_url
        before = await _respond(http, base, "kept [[reply=kept]]")
        own_redis.stop()

        status, error = await _post(
            http,
            f"{base}/v1/responses",
            {"model": DEMO_MODEL_ID, "input": "more", "previous_response_id": before["id"]},
        )
        assert status == 503
        assert error["error"]["code"] == "store_unavailable"
        assert "Redis" in error["error"]["message"]
        # Without continuity the instance still answers: chat, and responses (not kept).
        status, chat = await _post(
            http,
            f"{base}/v1/chat/completions",
            {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": "[[reply=up]]"}]},
        )
        assert status == 200 and chat["choices"][0]["message"]["content"] == "up"
        assert _text(await _respond(http, base, "[[reply=still]]")) == "still"
        status, ready = await _readyz(http, base)
        assert status == 200 and ready["store"] == "unavailable"
        assert await _store_up(http, base) == 0

        own_redis.start()
        status, ready = await _readyz(http, base)
        assert status == 200 and ready["store"] == "ok"
        assert await _store_up(http, base) == 1
        # The response from before the outage continues on the same bridge process.
        after = await _respond(http, base, "again [[echo_input]]", before["id"])
        assert "assistant: kept" in _text(after).splitlines()


async def _replays(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("codex_bridge_replayed_continuations_total "):
                return float(line.split()[1])
    raise AssertionError("codex_bridge_replayed_continuations not exported")


WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


async def test_a_response_created_on_one_instance_is_continued_on_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    shared = {"store.url": redis_server.url}
    settings_a = bridge_test_settings(tmp_path / "home-a", **shared)
    settings_b = bridge_test_settings(tmp_path / "home-b", **shared)
    async with (
        running_bridge(settings_a) as a,
        running_bridge(settings_b) as b,
        aiohttp.ClientSession() as http,
    ):
        first = await _respond(http, a.base_url, "first [[reply=one]]")
        second = await _respond(http, a.base_url, "second [[reply=two]]", first["id"])
        # B never ran either turn: its Codex home has no thread to fork.
        third = await _respond(http, b.base_url, "third [[echo_input]]", second["id"])
        assert _text(third).splitlines()[-5:] == [
            "user: first [[reply=one]]",
            "assistant: one",
            "user: second [[reply=two]]",
            "assistant: two",
            "user: third [[echo_input]]",
        ]
        assert third["previous_response_id"] == second["id"]
        assert await _replays(http, b.base_url) == 1
        # On A the thread is local: the fork, not a replay.
        again = await _respond(http, a.base_url, "fourth [[echo_input]]", second["id"])
        history = _text(third).splitlines()[-5:-1]
        assert _text(again).splitlines()[-5:] == [*history, "user: fourth [[echo_input]]"]
        assert await _replays(http, a.base_url) == 0
        # B's answer is stored too, and continues on A by the same replay.
        fifth = await _respond(http, a.base_url, "fifth [[echo_input]]", third["id"])
        assert "user: third [[echo_input]]" in _text(fifth).splitlines()
        assert await _replays(http, a.base_url) == 1


async def test_a_tool_call_parked_on_one_instance_is_answered_on_another(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    shared = {"store.url": redis_server.url}
    settings_a = bridge_test_settings(tmp_path / "home-a", **shared)
    settings_b = bridge_test_settings(tmp_path / "home-b", **shared)
    async with (
        running_bridge(settings_a) as a,
        running_bridge(settings_b) as b,
        aiohttp.ClientSession() as http,
    ):
        ask = 'weather? [[tool=get_weather]] [[args={"city":"Paris"}]]'
        status, first = await _post(
            http,
            f"{a.base_url}/v1/responses",
            {"model": DEMO_MODEL_ID, "input": ask, "tools": [WEATHER]},
        )
        assert status == 200, first
        (call,) = [item for item in first["output"] if item["type"] == "function_call"]
        assert len(a.app[PENDING]) == 1  # the turn waits on A for the result
        status, second = await _post(
            http,
            f"{b.base_url}/v1/responses",
            {
                "model": DEMO_MODEL_ID,
                "previous_response_id": first["id"],
                "input": [
                    {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
                ],
                "tools": [WEATHER],
            },
        )
        assert status == 200, second
        assert _text(second) == "Tool results: sunny"
        upstream = b.demo.requests[-1]["input"]
        assert [(i["type"], i.get("call_id")) for i in upstream[-2:]] == [
            ("function_call", call["call_id"]),
            ("function_call_output", call["call_id"]),
        ]
        assert any("weather?" in str(i.get("content")) for i in upstream)


async def test_a_per_key_cap_of_two_holds_across_two_instances(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    key = "sk-alice-cluster-cap"
    shared = {
        "store.url": redis_server.url,
        "auth.api_keys": (f"alice:{key}:2",),
        # A refused third request is a 429 after this wait, not after 30 s.
        "codex.queue_timeout_s": 1.0,
    }
    settings_a = bridge_test_settings(tmp_path / "home-a", **shared)
    settings_b = bridge_test_settings(tmp_path / "home-b", **shared)
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        running_bridge(settings_a) as a,
        running_bridge(settings_b) as b,
        aiohttp.ClientSession(headers=headers) as http,
    ):
        hanging = [
            asyncio.create_task(
                _post(
                    http,
                    f"{a.base_url}/v1/responses",
                    {"model": DEMO_MODEL_ID, "input": "[[hang_after=0]]", "store": False},
                )
            )
            for _ in range(2)
        ]
        try:
            await wait_until(lambda: a.pool.active_turns == 2, timeout=30)
            status, refused = await _post(
                http, f"{b.base_url}/v1/responses", {"model": DEMO_MODEL_ID, "input": "[[reply=b]]"}
            )
            assert status == 429, refused
            assert refused["error"]["code"] == "rate_limit_exceeded"
            assert b.pool.active_turns == 0
        finally:
            for task in hanging:
                task.cancel()
            await asyncio.gather(*hanging, return_exceptions=True)
        await wait_until(lambda: a.pool.active_turns == 0, timeout=30)
        # A's slots are back (released, not waited out): B serves the key again.
        served = await _respond(http, b.base_url, "[[reply=b]]")
        assert _text(served) == "b"


async def test_usage_gives_the_same_answer_on_every_instance(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    key = "sk-usage-shared-key"
    shared = {"store.url": redis_server.url, "auth.api_keys": (f"carol-{tmp_path.name}:{key}",)}
    settings_a = bridge_test_settings(tmp_path / "home-a", **shared)
    settings_b = bridge_test_settings(tmp_path / "home-b", **shared)
    async with (
        running_bridge(settings_a) as a,
        running_bridge(settings_b) as b,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http,
    ):
        await _respond(http, a.base_url, "[[reply=on a]]")
        await _respond(http, b.base_url, "[[reply=on b]]")
        await _respond(http, b.base_url, "[[reply=on b again]]")
        pages = []
        for base in (a.base_url, b.base_url):
            async with http.get(f"{base}/v1/usage") as resp:
                assert resp.status == 200
                pages.append(await resp.json())
        assert pages[0] == pages[1]
        (result,) = [r for bucket in pages[0]["data"] for r in bucket["results"]]
        assert result["num_model_requests"] == 3
        assert result["api_key_name"] == f"carol-{tmp_path.name}"
        assert result["output_tokens"] > 0


async def test_a_thread_deleted_through_one_instance_goes_from_the_instance_that_holds_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    shared = {"store.url": redis_server.url}
    settings_a = bridge_test_settings(tmp_path / "home-a", **shared)
    settings_b = bridge_test_settings(tmp_path / "home-b", **shared)
    async with (
        running_bridge(settings_a) as a,
        running_bridge(settings_b) as b,
        aiohttp.ClientSession() as http,
    ):
        made = await _respond(http, a.base_url, "[[reply=short-lived]]")
        record = await a.app[STORE].get(made["id"], ANONYMOUS_OWNER)
        assert record is not None and record.thread_id is not None
        home_a = a.app[STATE].codex_home
        assert has_rollout(home_a, record.thread_id)
        async with http.delete(f"{b.base_url}/v1/responses/{made['id']}") as resp:
            assert resp.status == 200
        # B has no copy to delete; A deletes its own at its next retention pass.
        assert has_rollout(home_a, record.thread_id)
        await a.app[RETENTION].purge()
        assert not has_rollout(home_a, record.thread_id)
