"""Conversation affinity (`codex.affinity`) against a real Codex worker, the demo model and the SDK.

The demo model records every upstream request body: its `prompt_cache_key`
is the Codex thread id, and its `input` is the conversation the model saw.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Literal, cast

import openai
import pytest

from bridge.api.middleware import METRICS
from bridge.appkeys import AFFINITY
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until

ALICE = "sk-affinity-alice-0123456789"
BOB = "sk-affinity-bob-0123456789"
WAIT_S = 30.0
LEGACY_CODEX = (
    Path(__file__).resolve().parents[2] / ".codex-legacy" / "node_modules" / ".bin" / "codex"
)
SYSTEM: Final = {"role": "system", "content": "Be brief."}


class Sent:
    """The bridge's JSON-RPC requests to its worker, in order."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def __call__(self, direction: Literal["c2s", "s2c"], message: dict[str, Any]) -> None:
        if direction == "c2s" and "method" in message and "id" in message:
            self.methods.append(message["method"])


@asynccontextmanager
async def affinity_bridge(
    home: Path, **overrides: Any
) -> AsyncIterator[tuple[RunningBridge, Sent]]:
    sent = Sent()
    settings = bridge_test_settings(
        home,
        **{
            "auth.api_keys": (f"alice:{ALICE}", f"bob:{BOB}"),
            # Only the requests' own thread starts and probes none: counted below.
            "codex.prewarm_threads": 0,
            "codex.health_interval_s": 3600.0,
            **overrides,
        },
    )
    async with running_bridge(settings, also_hook=sent) as bridge:
        yield bridge, sent


@asynccontextmanager
async def sdk(bridge: RunningBridge, key: str = ALICE) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{bridge.base_url}/v1", api_key=key, max_retries=0
    ) as client:
        yield client


def user(i: int) -> dict[str, str]:
    return {"role": "user", "content": f"question {i} [[reply=answer {i}]]"}


async def ask(
    client: openai.AsyncOpenAI,
    messages: list[dict[str, str]],
    *,
    stream: bool = False,
    **extra: Any,
) -> str:
    sent = cast(Any, messages)
    if stream:
        chunks = await client.chat.completions.create(
            model=DEMO_MODEL_ID, messages=sent, stream=True, **extra
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    reply = await client.chat.completions.create(model=DEMO_MODEL_ID, messages=sent, **extra)
    return reply.choices[0].message.content or ""


async def converse(client: openai.AsyncOpenAI, turns: int) -> list[dict[str, str]]:
    """A conversation of `turns` turns, every other one streamed; returns its messages."""
    messages = [SYSTEM]
    for i in range(turns):
        messages.append(user(i))
        reply = await ask(client, messages, stream=i % 2 == 1)
        assert reply == f"answer {i}"
        messages.append({"role": "assistant", "content": reply})
    return messages


def cache_keys(bodies: list[dict[str, Any]]) -> list[str]:
    return [body["prompt_cache_key"] for body in bodies]


def seen(body: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The conversation a model request carries: roles and texts (no ids, status, annotations)."""
    assert all(item["type"] == "message" for item in body["input"])
    return [
        (item["role"], [(part["type"], part["text"]) for part in item["content"]])
        for item in body["input"]
    ]


def affinity_count(bridge: RunningBridge, outcome: str) -> float:
    value = bridge.app[METRICS].registry.get_sample_value(
        "codex_bridge_conversation_affinity_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_ten_turn_conversation_uses_one_prompt_cache_key_when_affinity_is_on(
    tmp_path: Path,
) -> None:
    async with affinity_bridge(tmp_path / "home") as (bridge, sent), sdk(bridge) as client:
        mark = len(sent.methods)  # after the worker's dialect detection
        await converse(client, 10)
        bodies = bridge.demo.requests[-10:]
        assert len(set(cache_keys(bodies))) == 1
        # One thread for the whole conversation; no turn replayed its history.
        methods = sent.methods[mark:]
        assert methods.count("thread/start") == 1
        assert "thread/inject_items" not in methods
        assert methods.count("turn/start") == 10
        assert affinity_count(bridge, "hit") == 9
        assert len(bridge.app[AFFINITY]) == 1
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=WAIT_S)


async def test_model_receives_the_same_conversation_when_it_continues_a_thread(
    tmp_path: Path,
) -> None:
    received: dict[bool, list[dict[str, Any]]] = {}
    for on in (True, False):
        async with (
            affinity_bridge(tmp_path / f"home-{on}", **{"codex.affinity": on}) as (bridge, _),
            sdk(bridge) as client,
        ):
            await converse(client, 4)
            received[on] = bridge.demo.requests[-4:]
    continued, cold = received[True], received[False]
    assert [seen(body) for body in continued] == [seen(body) for body in cold]
    assert seen(continued[-1])[-2] == ("assistant", [("output_text", "answer 2")])
    # Off, every turn is a new thread, a new cache key upstream.
    assert len(set(cache_keys(cold))) == 4
    assert len(set(cache_keys(continued))) == 1


async def test_another_key_sending_the_same_messages_does_not_continue_the_conversation(
    tmp_path: Path,
) -> None:
    async with affinity_bridge(tmp_path / "home") as (bridge, _):
        async with sdk(bridge, ALICE) as alice, sdk(bridge, BOB) as bob:
            messages = await converse(alice, 2)
            (alice_key,) = set(cache_keys(bridge.demo.requests[-2:]))
            assert await ask(bob, [*messages, user(2)]) == "answer 2"
            bob_key = bridge.demo.requests[-1]["prompt_cache_key"]
            assert bob_key != alice_key
            # Bob's request replayed the history into a thread of its own ...
            assert seen(bridge.demo.requests[-1])[-2] == (
                "assistant",
                [("output_text", "answer 1")],
            )
            # ... and left Alice's conversation where it was.
            assert await ask(alice, [*messages, user(2)]) == "answer 2"
            assert bridge.demo.requests[-1]["prompt_cache_key"] == alice_key


async def test_reply_cut_by_a_stop_sequence_is_not_continued(tmp_path: Path) -> None:
    async with affinity_bridge(tmp_path / "home") as (bridge, _), sdk(bridge) as client:
        first = {"role": "user", "content": "hi [[reply=alpha beta gamma delta]]"}
        cut = await ask(client, [SYSTEM, first], stop=["gamma"])
        assert cut == "alpha beta "
        first_key = bridge.demo.requests[-1]["prompt_cache_key"]
        await ask(client, [SYSTEM, first, {"role": "assistant", "content": cut}, user(1)])
        body = bridge.demo.requests[-1]
        assert body["prompt_cache_key"] != first_key
        # The model saw what the client received, not the thread's longer reply.
        assert seen(body)[-2] == ("assistant", [("output_text", "alpha beta ")])
        assert affinity_count(bridge, "hit") == 0
        assert affinity_count(bridge, "mismatch") == 1


async def test_edited_history_starts_a_new_thread_with_the_edited_conversation(
    tmp_path: Path,
) -> None:
    async with affinity_bridge(tmp_path / "home") as (bridge, _), sdk(bridge) as client:
        messages = await converse(client, 2)
        (key,) = set(cache_keys(bridge.demo.requests[-2:]))
        edited = [*messages[:-1], {"role": "assistant", "content": "answer 1, edited"}, user(2)]
        assert await ask(client, edited) == "answer 2"
        body = bridge.demo.requests[-1]
        assert body["prompt_cache_key"] != key
        assert seen(body)[-2] == ("assistant", [("output_text", "answer 1, edited")])
        # The original branch is still held: going back to it continues its thread.
        assert await ask(client, [*messages, user(2)]) == "answer 2"
        assert bridge.demo.requests[-1]["prompt_cache_key"] == key


async def test_concurrent_requests_extending_one_conversation_both_succeed_and_one_continues_it(
    tmp_path: Path,
) -> None:
    async with affinity_bridge(tmp_path / "home") as (bridge, _), sdk(bridge) as client:
        messages = await converse(client, 1)
        key = bridge.demo.requests[-1]["prompt_cache_key"]
        replies = await asyncio.gather(
            ask(client, [*messages, user(1)]), ask(client, [*messages, user(2)])
        )
        assert sorted(replies) == ["answer 1", "answer 2"]
        assert cache_keys(bridge.demo.requests[-2:]).count(key) == 1
        assert affinity_count(bridge, "hit") == 1
        assert affinity_count(bridge, "miss") == 1


async def test_next_turn_starts_cold_when_the_worker_restarted_between_turns(
    tmp_path: Path,
) -> None:
    async with affinity_bridge(tmp_path / "home") as (bridge, _), sdk(bridge) as client:
        messages = await converse(client, 2)
        key = bridge.demo.requests[-1]["prompt_cache_key"]
        worker = bridge.pool.workers[0]
        old_pid = worker.pid
        worker.kill()
        await wait_until(lambda: worker.ready and worker.pid != old_pid, timeout=WAIT_S)
        assert await ask(client, [*messages, user(2)]) == "answer 2"
        body = bridge.demo.requests[-1]
        assert body["prompt_cache_key"] != key
        assert seen(body)[-2] == ("assistant", [("output_text", "answer 1")])
        assert affinity_count(bridge, "stale") == 1


async def test_codex_0_77_keeps_no_conversation_thread(tmp_path: Path) -> None:
    assert LEGACY_CODEX.exists(), "scripts/setup installs Codex 0.77.0 into .codex-legacy/"
    async with (
        affinity_bridge(tmp_path / "home", **{"codex.bin": str(LEGACY_CODEX)}) as (bridge, _),
        sdk(bridge) as client,
    ):
        assert bridge.pool.workers[0].dialect == "v1"
        messages = [SYSTEM, user(0)]
        assert await ask(client, messages) == "answer 0"
        assert await ask(client, messages, stream=True) == "answer 0"
        assert len(bridge.app[AFFINITY]) == 0
        assert affinity_count(bridge, "kept") == 0
        # v1 carries no earlier messages, held thread or not: the same 400 as ever.
        with pytest.raises(openai.BadRequestError):
            await ask(client, [*messages, {"role": "assistant", "content": "answer 0"}, user(1)])


async def test_turn_starts_cold_within_the_request_when_codex_refuses_the_held_thread(
    tmp_path: Path,
) -> None:
    async with affinity_bridge(tmp_path / "home") as (bridge, sent), sdk(bridge) as client:
        messages = await converse(client, 2)
        index = bridge.app[AFFINITY]
        # Fault injection: the held tip now names a thread this Codex never had.
        ((digest, tip),) = index._tips.items()
        index._tips[digest] = dataclasses.replace(tip, thread_id=str(uuid.uuid4()))
        mark = len(sent.methods)
        assert await ask(client, [*messages, user(2)]) == "answer 2"
        # The refused turn/start, then the cold path (the refused thread is let go).
        methods = [m for m in sent.methods[mark:] if m != "thread/unsubscribe"]
        assert methods[:4] == [
            "turn/start",
            "thread/start",
            "thread/inject_items",
            "turn/start",
        ]
        assert seen(bridge.demo.requests[-1])[-2] == ("assistant", [("output_text", "answer 1")])
        assert affinity_count(bridge, "gone") == 1


async def test_turn_without_an_effort_does_not_inherit_the_previous_turns_effort(
    tmp_path: Path,
) -> None:
    async with affinity_bridge(tmp_path / "home") as (bridge, _), sdk(bridge) as client:
        messages = [SYSTEM, user(0)]
        reply = await ask(client, messages, reasoning_effort="high")
        assert bridge.demo.requests[-1]["reasoning"]["effort"] == "high"
        first_key = bridge.demo.requests[-1]["prompt_cache_key"]
        await ask(client, [*messages, {"role": "assistant", "content": reply}, user(1)])
        body = bridge.demo.requests[-1]
        # Codex keeps a turn's effort for the thread's later turns: continuing the
        # thread would have sent "high" for a request that asked for none.
        assert (body.get("reasoning") or {}).get("effort") != "high"
        assert body["prompt_cache_key"] != first_key


async def test_responses_request_re_sending_a_chat_does_not_use_up_its_thread(
    tmp_path: Path,
) -> None:
    async with affinity_bridge(tmp_path / "home") as (bridge, _), sdk(bridge) as client:
        messages = await converse(client, 2)
        (chat_key,) = set(cache_keys(bridge.demo.requests[-2:]))
        response = await client.responses.create(
            model=DEMO_MODEL_ID, input=cast(Any, [*messages, user(2)]), store=False
        )
        assert response.output_text == "answer 2"
        assert bridge.demo.requests[-1]["prompt_cache_key"] != chat_key
        # The chat's own next turn still continues its thread.
        assert await ask(client, [*messages, user(2)]) == "answer 2"
        assert bridge.demo.requests[-1]["prompt_cache_key"] == chat_key
