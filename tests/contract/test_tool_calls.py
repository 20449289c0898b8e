"""Client function tools, natively through Codex dynamic tools, with the official SDK as the client."""

from __future__ import annotations

import json
from typing import Any

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bridge.api.pending import PENDING
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Current time"},
    },
]
ASK = 'weather? [[tool=get_weather]] [[args={"city":"Paris"}]]'


def follow_up(messages: list[Any], message: Any, results: dict[str, str]) -> list[Any]:
    assistant = {
        "role": "assistant",
        "content": message.content,
        "tool_calls": [tc.model_dump() for tc in message.tool_calls],
    }
    tools = [{"role": "tool", "tool_call_id": cid, "content": out} for cid, out in results.items()]
    return [*messages, assistant, *tools]


async def test_tool_call_round_trip_continues_the_same_codex_turn(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    messages: list[Any] = [{"role": "user", "content": ASK}]
    raw = await client.chat.completions.with_raw_response.create(
        model=DEMO_MODEL_ID, messages=messages, tools=TOOLS
    )
    first = ChatCompletion.model_validate(orjson.loads(raw.content))
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert len(bridge.app[PENDING]) == 1
    upstream_before = len(bridge.demo.requests)

    second = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=follow_up(messages, choice.message, {call.id: "Sunny, 21C"}),
        tools=TOOLS,
    )
    assert second.choices[0].message.content == "Tool results: Sunny, 21C"
    assert second.choices[0].finish_reason == "stop"
    assert len(bridge.app[PENDING]) == 0
    # One more model call, on the same thread: the conversation was not replayed.
    assert len(bridge.demo.requests) == upstream_before + 1
    last = bridge.demo.requests[-1]["input"]
    assert (
        sum(1 for item in last if item.get("type") == "message" and item.get("role") == "user") >= 1
    )
    assert [i["type"] for i in last[-2:]] == ["function_call", "function_call_output"]


async def test_streamed_tool_call_follows_the_chunk_rules(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.with_streaming_response.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": ASK}],
        tools=TOOLS,
        stream=True,
    ) as raw:
        lines = [line async for line in raw.iter_lines()]
    payloads = [line[6:] for line in lines if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(orjson.loads(p)) for p in payloads[:-1]]
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [d.index for d in deltas] == [0, 0]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    assert deltas[1].id is None and deltas[1].function and deltas[1].function.name is None
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_sdk_stream_helper_accumulates_the_tool_call(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model=DEMO_MODEL_ID, messages=[{"role": "user", "content": ASK}], tools=TOOLS
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_two_tool_calls_come_one_round_trip_at_a_time(client: openai.AsyncOpenAI) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "both [[tool=get_weather]] [[tool=get_time]]"}
    ]
    names = []
    for _ in range(3):
        completion = await client.chat.completions.create(
            model=DEMO_MODEL_ID, messages=messages, tools=TOOLS
        )
        message = completion.choices[0].message
        if not message.tool_calls:
            break
        names.append(message.tool_calls[0].function.name)
        results = {tc.id: f"result of {tc.function.name}" for tc in message.tool_calls}
        messages = follow_up(messages, message, results)
    assert names == ["get_weather", "get_time"]
    assert message.content == "Tool results: result of get_weather; result of get_time"


async def test_follow_up_without_a_parked_turn_replays_the_conversation(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    messages: list[Any] = [
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_from_elsewhere",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_from_elsewhere", "content": "Snow"},
    ]
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=messages, tools=TOOLS
    )
    assert completion.choices[0].message.content == "Tool results: Snow"
    upstream = bridge.demo.requests[-1]["input"]
    assert upstream[-1]["type"] == "function_call_output"
    assert (upstream[-1]["call_id"], upstream[-1]["output"]) == ("call_from_elsewhere", "Snow")
    assert upstream[-2]["type"] == "function_call"


async def test_tool_choice_none_offers_no_tools(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[echo_tools]]"}],
        tools=TOOLS,
        tool_choice="none",
    )
    assert "get_weather" not in (completion.choices[0].message.content or "")
    offered = await client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "[[echo_tools]]"}], tools=TOOLS
    )
    assert "get_weather" in (offered.choices[0].message.content or "")


async def test_non_function_tool_types_are_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "custom", "custom": {"name": "x"}}],  # type: ignore[list-item]
        )
    assert error.value.param == "tools[0].type"


async def test_legacy_functions_round_trip_with_function_call(client: openai.AsyncOpenAI) -> None:
    functions: Any = [TOOLS[0]["function"]]
    messages: list[Any] = [{"role": "user", "content": ASK}]
    first = await client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=messages, functions=functions
    )
    choice = first.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    assert choice.message.function_call is not None
    assert choice.message.function_call.name == "get_weather"
    messages += [
        {
            "role": "assistant",
            "content": None,
            "function_call": choice.message.function_call.model_dump(),
        },
        {"role": "function", "name": "get_weather", "content": "Windy"},
    ]
    second = await client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=messages, functions=functions
    )
    assert second.choices[0].message.content == "Tool results: Windy"
