"""A client's mistake is a 400 with OpenAI's code and `x-should-retry: false`, never a retried 5xx.

Each case used to reach Codex and come back as a 500 the SDKs retried:
input over Codex's length limit, duplicate tool names, schemas nested too
deep for the encoder, invalid function names (reported as an unsupported
tool type). The last test lets one through the bridge's own check to show
that Codex's own rejection maps to 400 as well.
"""

from __future__ import annotations

from typing import Any, cast

import openai
import pytest

from bridge.api import conversation
from bridge.api.conversation import MAX_INPUT_CHARS, MAX_SCHEMA_DEPTH
from bridge.demo import DEMO_MODEL_ID

HELLO: Any = [{"role": "user", "content": "hi"}]


def nested(levels: int) -> dict[str, Any]:
    """An object schema whose JSON nests `levels` * 2 deep."""
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def tool(name: str, parameters: dict[str, Any] | None = None) -> Any:
    return {
        "type": "function",
        "function": {"name": name, "parameters": parameters or {"type": "object"}},
    }


def body_of(error: openai.BadRequestError) -> dict[str, Any]:
    assert error.response.headers["x-should-retry"] == "false"
    assert isinstance(error.body, dict)
    return error.body


async def test_input_over_codex_length_limit_is_400_string_above_max_length(
    client: openai.AsyncOpenAI,
) -> None:
    too_long = "a" * (MAX_INPUT_CHARS + 1)
    with pytest.raises(openai.BadRequestError) as chat:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID, messages=[{"role": "user", "content": too_long}]
        )
    with pytest.raises(openai.BadRequestError) as responses:
        await client.responses.create(model=DEMO_MODEL_ID, input=too_long, store=False)
    assert body_of(chat.value)["code"] == "string_above_max_length"
    assert body_of(chat.value)["param"] == "messages"
    assert body_of(responses.value)["code"] == "string_above_max_length"
    assert body_of(responses.value)["param"] == "input"
    assert str(MAX_INPUT_CHARS) in body_of(chat.value)["message"]


async def test_input_of_exactly_the_limit_is_accepted(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "a" * (MAX_INPUT_CHARS - 12) + "[[reply=ok]]"}],
    )
    assert completion.choices[0].message.content == "ok"


async def test_two_tools_with_the_same_name_are_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID, messages=HELLO, tools=[tool("lookup"), tool("lookup")]
        )
    flat: Any = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    with pytest.raises(openai.BadRequestError) as responses:
        await client.responses.create(
            model=DEMO_MODEL_ID, input="hi", tools=[flat, flat], store=False
        )
    for caught in (chat, responses):
        error = body_of(caught.value)
        assert error["code"] == "invalid_value"
        assert error["param"] == "tools"
        assert "Duplicate tool name 'lookup'" in error["message"]


async def test_tool_parameters_nested_too_deep_are_400_invalid_function_parameters(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID, messages=HELLO, tools=[tool("deep", nested(200))]
        )
    error = body_of(caught.value)
    assert error["code"] == "invalid_function_parameters"
    assert f"more than {MAX_SCHEMA_DEPTH} levels" in error["message"]


async def test_tool_parameters_nested_within_the_bound_are_accepted(
    client: openai.AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[reply=fine]]"}],
        tools=[tool("deep", nested(MAX_SCHEMA_DEPTH // 2 - 1))],
    )
    assert completion.choices[0].message.content == "fine"


async def test_output_schema_nested_too_deep_is_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=HELLO,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "deep", "schema": nested(200)},
            },
        )
    error = body_of(caught.value)
    assert error["param"] == "response_format.json_schema.schema"
    assert f"more than {MAX_SCHEMA_DEPTH} levels" in error["message"]


async def test_invalid_function_name_is_400_about_the_name(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID, messages=HELLO, tools=[tool("look up")]
        )
    with pytest.raises(openai.BadRequestError) as responses:
        await client.responses.create(
            model=DEMO_MODEL_ID,
            input="hi",
            tools=[cast(Any, {"type": "function", "name": "look.up", "parameters": {}})],
            store=False,
        )
    chat_error, responses_error = body_of(chat.value), body_of(responses.value)
    assert chat_error["param"] == "tools[0].function.name"
    assert responses_error["param"] == "tools[0].name"
    for error in (chat_error, responses_error):
        assert error["code"] == "invalid_value"
        assert "does not match pattern" in error["message"]
        assert "not supported" not in error["message"]


async def test_codex_rejecting_the_turn_as_invalid_is_400_not_500(
    client: openai.AsyncOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Let the over-long input past the bridge's own check: Codex refuses it
    # (JSON-RPC -32602 input_too_large) and that rejection is the client's 400.
    monkeypatch.setattr(conversation, "MAX_INPUT_CHARS", 4 * MAX_INPUT_CHARS)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "a" * (MAX_INPUT_CHARS + 1)}]
        )
    error = body_of(caught.value)
    assert error["code"] == "string_above_max_length"
    assert error["message"].startswith("Codex rejected the request: Input exceeds")
    assert caught.value.body is not None
    assert caught.value.status_code == 400
