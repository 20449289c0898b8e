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


# -- tool_choice kept ------------------------------------------------------------------------
def _offered(body: dict[str, Any]) -> set[str]:
    return {str(tool.get("name")) for tool in body.get("tools") or []}


def _forced_names(body: dict[str, Any]) -> list[str]:
    """The function names the upstream output schema allows, in order."""
    call = body["text"]["format"]["schema"]["properties"]["call"]
    return [branch["properties"]["name"]["const"] for branch in call.get("anyOf", [call])]


async def test_required_tool_choice_yields_a_tool_call_when_the_model_would_answer_text(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Just say hello."}]
    chatty = await client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=messages, tools=TOOLS
    )
    assert chatty.choices[0].finish_reason == "stop"  # left to itself, the model answers text
    raw = await client.chat.completions.with_raw_response.create(
        model=DEMO_MODEL_ID, messages=messages, tools=TOOLS, tool_choice="required"
    )
    forced = ChatCompletion.model_validate(orjson.loads(raw.content))
    choice = forced.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    # The model answered null for the optional `city` (strict mode makes it
    # nullable); an absent argument is what the client's schema means.
    assert json.loads(call.function.arguments) == {}
    assert "tool_choice" not in raw.headers.get("x-codex-bridge-ignored-params", "")
    upstream = bridge.demo.requests[-1]
    # The model could only answer with a call: the functions became its output schema.
    assert _forced_names(upstream) == ["get_weather", "get_time"]
    assert upstream["text"]["format"]["strict"] is True
    assert not {"get_weather", "get_time"} & _offered(upstream)
    # A forced call is complete when it is returned: nothing waits for its result.
    assert len(bridge.app[PENDING]) == 0


async def test_named_tool_choice_calls_that_function_with_schema_valid_arguments(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": 'Paris? [[args={"city":"Paris"}]]'}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    (call,) = completion.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )
    upstream = bridge.demo.requests[-1]
    assert _forced_names(upstream) == ["get_weather"]
    arguments = upstream["text"]["format"]["schema"]["properties"]["call"]["properties"]
    # The optional `city` is required-but-nullable, as strict mode wants it.
    assert arguments["arguments"]["required"] == ["city"]
    assert arguments["arguments"]["additionalProperties"] is False


async def test_streamed_forced_call_reaches_the_sdk_stream_helper_as_a_tool_call(
    client: openai.AsyncOpenAI,
) -> None:
    async with client.chat.completions.stream(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "What time is it?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    (call,) = choice.message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_time", {})


async def test_forced_call_result_continues_on_a_fresh_turn_with_the_call_replayed(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Rome?"}]
    first = await client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=messages, tools=TOOLS, tool_choice="required"
    )
    message = first.choices[0].message
    (call,) = message.tool_calls or []
    second = await client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=follow_up(messages, message, {call.id: "Hot"}), tools=TOOLS
    )
    assert second.choices[0].message.content == "Tool results: Hot"
    upstream = bridge.demo.requests[-1]["input"]
    assert [i["type"] for i in upstream[-2:]] == ["function_call", "function_call_output"]
    assert upstream[-2]["call_id"] == upstream[-1]["call_id"] == call.id


async def test_forced_call_the_model_does_not_make_is_an_upstream_error_not_text(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.InternalServerError) as error:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=[{"role": "user", "content": "[[reply=I would rather chat.]]"}],
            tools=TOOLS,
            tool_choice="required",
        )
    assert error.value.status_code == 502
    assert error.value.code == "invalid_tool_call_output"


async def test_tool_choice_naming_no_offered_function_is_a_400(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as unknown:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=[{"role": "user", "content": "x"}],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_stock"}},
        )
    assert unknown.value.param == "tool_choice"
    with pytest.raises(openai.BadRequestError) as no_tools:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "x"}], tool_choice="required"
        )
    assert no_tools.value.param == "tool_choice"


async def test_allowed_tools_offer_only_the_listed_functions(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    allowed: Any = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "auto",
            "tools": [{"type": "function", "function": {"name": "get_time"}}],
        },
    }
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[echo_tools]]"}],
        tools=TOOLS,
        tool_choice=allowed,
    )
    offered = completion.choices[0].message.content or ""
    assert "get_time" in offered and "get_weather" not in offered


async def test_responses_named_tool_choice_yields_a_function_call_item(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    tools: Any = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": TOOLS[0]["function"]["parameters"],
        },
        {"type": "function", "name": "get_time", "description": "Current time"},
    ]
    response = await client.responses.create(
        model=DEMO_MODEL_ID,
        input='Tell me a joke. [[args={"city":"Lima"}]]',
        tools=tools,
        tool_choice={"type": "function", "name": "get_weather"},
    )
    (item,) = response.output
    assert item.type == "function_call"
    assert (item.name, json.loads(item.arguments)) == ("get_weather", {"city": "Lima"})
    assert item.call_id.startswith("call_")
    upstream = bridge.demo.requests[-1]
    assert _forced_names(upstream) == ["get_weather"]
    assert not {"get_weather", "get_time"} & _offered(upstream)


async def test_responses_forced_call_result_by_previous_response_id_replays_the_call(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    tools: Any = [{"type": "function", "name": "get_time", "description": "Current time"}]
    first = await client.responses.create(
        model=DEMO_MODEL_ID, input="Time?", tools=tools, tool_choice="required"
    )
    (call,) = first.output
    assert call.type == "function_call"
    second = await client.responses.create(
        model=DEMO_MODEL_ID,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "noon"}],
        tools=tools,
    )
    assert second.output_text == "Tool results: noon"
    upstream = bridge.demo.requests[-1]["input"]
    assert [(i["type"], i.get("call_id")) for i in upstream[-2:]] == [
        ("function_call", call.call_id),
        ("function_call_output", call.call_id),
    ]
