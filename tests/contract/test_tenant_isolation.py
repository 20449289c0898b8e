"""What one API key leaves behind is invisible to another: parked tool-call turns and stored responses.

A bridge with two keys (alice, bob); the official SDK as each caller. Every
test plays bob as an attacker who knows alice's ids (call ids, response ids).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest

from bridge.api.pending import PENDING
from bridge.demo import DEMO_MODEL_ID
from tests.contract.test_tool_calls import ASK, TOOLS, follow_up
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until

ALICE = "sk-alice-0123456789"
BOB = "sk-bob-0123456789"
SETTLE_S = 10.0
# Long enough that a turn carrying it costs far more input than bob's own conversation.
SECRET = "alice-secret-plan " * 400


@pytest.fixture(scope="module")
async def two_keys(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBridge]:
    home = tmp_path_factory.mktemp("codex-home-two-keys")
    settings = bridge_test_settings(home, **{"auth.api_keys": [f"alice:{ALICE}", f"bob:{BOB}"]})
    async with running_bridge(settings) as running:
        yield running


def _sdk(bridge: RunningBridge, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{bridge.base_url}/v1", api_key=key, max_retries=0)


@pytest.fixture
async def alice(two_keys: RunningBridge) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _sdk(two_keys, ALICE) as sdk:
        yield sdk
    await two_keys.app[PENDING].close()
    await wait_until(lambda: two_keys.pool.active_turns == 0, timeout=SETTLE_S)


@pytest.fixture
async def bob(two_keys: RunningBridge) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _sdk(two_keys, BOB) as sdk:
        yield sdk


def _bob_claims(call: Any, call_id: str) -> list[Any]:
    """Bob's own conversation, ending in a tool result for `call_id`."""
    return [
        {"role": "user", "content": f"bob asks {ASK}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{**call.model_dump(), "id": call_id}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "Bob's result"},
    ]


async def test_tool_results_from_another_key_never_reach_the_parked_turn_nor_its_bill(
    two_keys: RunningBridge, alice: openai.AsyncOpenAI, bob: openai.AsyncOpenAI
) -> None:
    asked: list[Any] = [{"role": "user", "content": f"{SECRET} {ASK}"}]
    first = await alice.chat.completions.create(model=DEMO_MODEL_ID, messages=asked, tools=TOOLS)
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    pending = two_keys.app[PENDING]
    assert len(pending) == 1

    control = await bob.chat.completions.create(
        model=DEMO_MODEL_ID, messages=_bob_claims(call, "call_bob_own"), tools=TOOLS
    )
    stolen = await bob.chat.completions.create(
        model=DEMO_MODEL_ID, messages=_bob_claims(call, call.id), tools=TOOLS
    )
    # Bob got a fresh turn of his own conversation: alice's prompt never reached it ...
    assert stolen.choices[0].message.content == "Tool results: Bob's result"
    assert "alice-secret-plan" not in orjson.dumps(two_keys.demo.requests[-1]["input"]).decode()
    # ... and bob was billed for his own conversation, not for alice's turn.
    assert stolen.usage is not None and control.usage is not None
    assert abs(stolen.usage.prompt_tokens - control.usage.prompt_tokens) < 100
    # Alice's turn still waits for alice, and continues for her.
    assert len(pending) == 1
    upstream_before = len(two_keys.demo.requests)
    second = await alice.chat.completions.create(
        model=DEMO_MODEL_ID, messages=follow_up(asked, message, {call.id: "Sunny"}), tools=TOOLS
    )
    assert second.choices[0].message.content == "Tool results: Sunny"
    assert len(pending) == 0
    assert len(two_keys.demo.requests) == upstream_before + 1
    assert "alice-secret-plan" in orjson.dumps(two_keys.demo.requests[-1]["input"]).decode()


async def test_a_parked_chat_turn_is_not_resumed_through_the_responses_endpoint(
    two_keys: RunningBridge, alice: openai.AsyncOpenAI
) -> None:
    asked: list[Any] = [{"role": "user", "content": ASK}]
    first = await alice.chat.completions.create(model=DEMO_MODEL_ID, messages=asked, tools=TOOLS)
    (call,) = first.choices[0].message.tool_calls or []
    pending = two_keys.app[PENDING]
    assert len(pending) == 1
    response = await alice.responses.create(
        model=DEMO_MODEL_ID,
        input=[
            {"role": "user", "content": ASK},
            {
                "type": "function_call",
                "call_id": call.id,
                "name": call.function.name,  # type: ignore[union-attr]
                "arguments": call.function.arguments,  # type: ignore[union-attr]
            },
            {"type": "function_call_output", "call_id": call.id, "output": "Cloudy"},
        ],
    )
    assert response.output_text == "Tool results: Cloudy"
    assert len(pending) == 1  # the chat turn still waits for its chat follow-up


async def test_another_keys_stored_response_is_404_for_every_operation(
    two_keys: RunningBridge, alice: openai.AsyncOpenAI, bob: openai.AsyncOpenAI
) -> None:
    mine = await alice.responses.create(model=DEMO_MODEL_ID, input="alice private [[reply=ok]]")
    upstream_before = len(two_keys.demo.requests)
    with pytest.raises(openai.NotFoundError):
        await bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as continued:
        await bob.responses.create(
            model=DEMO_MODEL_ID, input="[[echo_input]]", previous_response_id=mine.id
        )
    assert continued.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        await bob.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        await bob.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        await bob.responses.cancel(mine.id)
    with pytest.raises(openai.NotFoundError):
        await bob.responses.input_tokens.count(
            model=DEMO_MODEL_ID, input="x", previous_response_id=mine.id
        )
    # Nothing of alice's reached a model on bob's behalf, and her response is intact.
    assert len(two_keys.demo.requests) == upstream_before
    assert (await alice.responses.retrieve(mine.id)).output_text == "ok"
    items = [item async for item in alice.responses.input_items.list(mine.id)]
    assert len(items) == 1
