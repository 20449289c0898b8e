"""Usage right at the edges: tool-call responses, replies the bridge cut, with the SDK as client."""

from __future__ import annotations

from typing import Any

import openai

from bridge.demo import DEMO_MODEL_ID
from bridge.demo.script import parse_script, split_deltas
from tests.contract.test_tool_calls import ASK, TOOLS, follow_up
from tests.harness import RunningBridge


def _demo_usage(bodies: list[dict[str, Any]]) -> tuple[int, int]:
    """What the demo model billed Codex for these requests: (input, output) tokens."""
    scripts = [parse_script(body) for body in bodies]
    inputs = sum(s.input_tokens for s in scripts)
    outputs = sum(
        max(1, 0 if s.tool_calls else len(split_deltas(s.reply))) + s.reasoning_tokens
        for s in scripts
    )
    return inputs, outputs


async def test_tool_call_response_has_usage_and_the_follow_up_reconciles_it(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    messages: list[Any] = [{"role": "user", "content": ASK}]
    before = len(bridge.demo.requests)
    first = await client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=messages, tools=TOOLS
    )
    assert first.usage is not None
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    (call,) = first.choices[0].message.tool_calls or []
    second = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=follow_up(messages, first.choices[0].message, {call.id: "Sunny"}),
        tools=TOOLS,
    )
    assert second.usage is not None
    real_input, real_output = _demo_usage(bridge.demo.requests[before:])
    # The two responses of one Codex turn add up to what the model billed (or
    # to the first response's estimate where that ran higher), never to more.
    assert first.usage.prompt_tokens + second.usage.prompt_tokens == max(
        real_input, first.usage.prompt_tokens
    )
    assert first.usage.completion_tokens + second.usage.completion_tokens == max(
        real_output, first.usage.completion_tokens
    )


async def test_responses_function_call_has_usage(client: openai.AsyncOpenAI) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    response = await client.responses.create(
        model=DEMO_MODEL_ID, input="[[tool=get_weather]]", tools=tools
    )
    assert [item.type for item in response.output] == ["function_call"]
    assert response.usage is not None
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


async def test_responses_reply_cut_by_max_output_tokens_reports_input_tokens(
    client: openai.AsyncOpenAI,
) -> None:
    response = await client.responses.create(
        model=DEMO_MODEL_ID, input="[[words=60]] [[delay_ms=20]]", max_output_tokens=4
    )
    assert response.status == "incomplete"
    assert response.usage is not None
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens == 4


async def test_completion_tokens_count_what_the_client_received_when_the_bridge_cut(
    client: openai.AsyncOpenAI,
) -> None:
    # The demo sends all 40 words at once: Codex counts the whole model call
    # before the bridge's interrupt lands.
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[words=40]]"}],
        max_tokens=3,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert completion.usage.prompt_tokens > 0
