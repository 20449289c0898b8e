"""`n` choices and legacy prompt lists against capacity: impossible counts are 400, the rest all-or-nothing.

A request that fans out to more turns than the pool or the caller's key can
ever run at once is refused before anything starts; one that fits takes
every slot it needs before it starts any billed turn.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until

ALICE = "sk-alice-fanout-0123456789"  # at most 2 turns at once
BOB = "sk-bob-fanout-0123456789"  # no key limit
SLOTS = 3
WAIT_S = 30.0


@pytest.fixture(scope="module")
async def small(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBridge]:
    settings = bridge_test_settings(
        tmp_path_factory.mktemp("fanout"),
        **{
            "codex.workers": 1,
            "codex.max_turns_per_worker": SLOTS,
            "auth.api_keys": [f"alice:{ALICE}:2", f"bob:{BOB}"],
        },
    )
    async with running_bridge(settings) as bridge:
        yield bridge


def marker() -> str:
    return "fanout-" + secrets.token_hex(6)


def model_saw(bridge: RunningBridge, mark: str) -> int:
    return sum(mark in orjson.dumps(body).decode() for body in bridge.demo.requests)


async def test_n_above_the_pool_capacity_is_400_at_once_and_another_request_is_served(
    bridge: RunningBridge,
) -> None:
    capacity = len(bridge.pool.workers) * bridge.pool.max_turns_per_worker
    too_many, other = marker(), marker()
    async with openai.AsyncOpenAI(
        base_url=f"{bridge.base_url}/v1", api_key="unused", max_retries=0
    ) as client:
        refused, served = await asyncio.gather(
            client.chat.completions.create(
                model=DEMO_MODEL_ID,
                messages=[{"role": "user", "content": too_many}],
                n=capacity + 1,
            ),
            client.chat.completions.create(
                model=DEMO_MODEL_ID,
                messages=[{"role": "user", "content": f"{other} [[reply=served]]"}],
            ),
            return_exceptions=True,
        )
    assert isinstance(refused, openai.BadRequestError)
    assert isinstance(refused.body, dict)
    assert refused.body["param"] == "n"
    assert refused.body["code"] == "integer_above_max_value"
    assert f"at most {capacity}" in refused.body["message"]
    assert model_saw(bridge, too_many) == 0
    assert isinstance(served, openai.types.chat.ChatCompletion)
    assert served.choices[0].message.content == "served"
    assert model_saw(bridge, other) == 1


async def test_counts_above_the_key_limit_are_400_naming_n_or_prompt(
    small: RunningBridge,
) -> None:
    mark = marker()
    async with openai.AsyncOpenAI(
        base_url=f"{small.base_url}/v1", api_key=ALICE, max_retries=0
    ) as client:
        with pytest.raises(openai.BadRequestError) as chat_error:
            await client.chat.completions.create(
                model=DEMO_MODEL_ID, messages=[{"role": "user", "content": mark}], n=3
            )
        with pytest.raises(openai.BadRequestError) as prompts_error:
            await client.completions.create(model=DEMO_MODEL_ID, prompt=[mark] * 3)
        # Within the key's limit, the same request runs.
        ok = await client.completions.create(model=DEMO_MODEL_ID, prompt=["a", "b"])
    assert isinstance(chat_error.value.body, dict) and isinstance(prompts_error.value.body, dict)
    assert chat_error.value.body["param"] == "n"
    assert "alice" in chat_error.value.body["message"]
    assert prompts_error.value.body["param"] == "prompt"
    assert model_saw(small, mark) == 0
    assert len(ok.choices) == 2


async def test_a_fanout_starts_no_turn_until_it_holds_every_slot_it_needs(
    small: RunningBridge,
) -> None:
    holder_mark, fanout_mark = marker(), marker()
    headers = {"Authorization": f"Bearer {BOB}"}

    async def post(http: aiohttp.ClientSession, body: dict[str, Any]) -> dict[str, Any]:
        async with http.post(
            f"{small.base_url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            assert response.status == 200, await response.text()
            result: dict[str, Any] = await response.json()
            return result

    async with aiohttp.ClientSession() as http:
        # One slot is taken by a turn whose model never answers.
        holder = asyncio.create_task(
            post(
                http,
                {
                    "model": DEMO_MODEL_ID,
                    "messages": [{"role": "user", "content": f"{holder_mark} [[hang_after=0]]"}],
                },
            )
        )
        await wait_until(lambda: model_saw(small, holder_mark) == 1, timeout=WAIT_S)
        fanout = asyncio.create_task(
            post(
                http,
                {
                    "model": DEMO_MODEL_ID,
                    "messages": [{"role": "user", "content": f"{fanout_mark} [[reply=all]]"}],
                    "n": SLOTS,
                },
            )
        )
        # Two slots are free, the third is not: the fan-out waits for it, holding
        # none of the free ones meanwhile (all or nothing)...
        await wait_until(lambda: small.pool.waiting == 1, timeout=WAIT_S)
        assert small.pool.active_turns == 1
        # ...without having started any of its turns.
        assert model_saw(small, fanout_mark) == 0
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        result = await asyncio.wait_for(fanout, WAIT_S)
    assert [c["message"]["content"] for c in result["choices"]] == ["all"] * SLOTS
    assert model_saw(small, fanout_mark) == SLOTS
    await wait_until(lambda: small.pool.active_turns == 0, timeout=WAIT_S)
