"""The Responses API through the official SDK, every payload validated by the SDK's own models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent
from pydantic import TypeAdapter

from bridge.api.pending import PENDING
from bridge.appkeys import STORE
from bridge.demo import DEMO_MODEL_ID
from bridge.store import ANONYMOUS_OWNER
from bridge.tokens import count_tokens
from tests.harness import RunningBridge, bridge_test_settings, running_bridge

EVENT = TypeAdapter(ResponseStreamEvent)


async def test_non_streaming_response_validates_and_has_output_text(
    client: openai.AsyncOpenAI,
) -> None:
    raw = await client.responses.with_raw_response.create(
        model=DEMO_MODEL_ID, input="hi [[reply=Hello there]]", metadata={"k": "v"}
    )
    body = orjson.loads(raw.content)
    response = Response.model_validate(body)
    assert response.status == "completed"
    assert response.output_text == "Hello there"
    assert response.id.startswith("resp_")
    assert response.output[0].id.startswith("msg_")  # type: ignore[union-attr]
    assert response.usage is not None and response.usage.output_tokens == 2
    assert response.metadata == {"k": "v"}
    assert body["store"] is True


async def test_streaming_events_come_in_openai_order_with_sequence_numbers(
    bridge: RunningBridge,
    client: openai.AsyncOpenAI,
) -> None:
    async with client.responses.with_streaming_response.create(
        model=DEMO_MODEL_ID, input="[[words=4]]", stream=True
    ) as raw:
        lines = [line async for line in raw.iter_lines()]
    events: list[tuple[str, dict[str, Any]]] = []
    pending_type = None
    for line in lines:
        if line.startswith("event: "):
            pending_type = line[len("event: ") :]
        elif line.startswith("data: "):
            data = orjson.loads(line[len("data: ") :])
            assert data["type"] == pending_type
            EVENT.validate_python(data)
            events.append((pending_type, data))
    types = [t for t, _ in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    ids = {d["response"]["id"] for t, d in events if "response" in d}
    assert len(ids) == 1
    final = events[-1][1]["response"]
    assert Response.model_validate(final).output_text == "w1 w2 w3 w4"
    assert "[DONE]" not in "".join(lines)


async def test_sdk_stream_helper_gets_the_final_response(client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(model=DEMO_MODEL_ID, input="[[reply=a b c]]") as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.output_text == "a b c"


async def test_instructions_and_input_roles_reach_the_model(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model=DEMO_MODEL_ID,
        instructions="Speak like a pirate.",
        input=[
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "arr"},
            {"role": "user", "content": [{"type": "input_text", "text": "now [[echo_input]]"}]},
        ],
    )
    seen = response.output_text.splitlines()
    assert seen[0] == "developer: Speak like a pirate."
    assert seen.index("user: earlier") < seen.index("assistant: arr") < len(seen) - 1


async def test_previous_response_id_continues_the_codex_thread(
    client: openai.AsyncOpenAI,
) -> None:
    first = await client.responses.create(model=DEMO_MODEL_ID, input="first [[reply=one]]")
    second = await client.responses.create(
        model=DEMO_MODEL_ID, input="second [[echo_input]]", previous_response_id=first.id
    )
    seen = second.output_text.splitlines()
    assert "user: first [[reply=one]]" in seen
    assert "assistant: one" in seen
    assert seen[-1] == "user: second [[echo_input]]"
    retrieved = await client.responses.retrieve(second.id)
    assert retrieved.output_text == second.output_text
    assert retrieved.previous_response_id == first.id


async def test_unknown_previous_response_id_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        await client.responses.create(
            model=DEMO_MODEL_ID, input="x", previous_response_id="resp_nope"
        )
    assert error.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_nope")


async def test_store_false_is_not_retrievable(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(model=DEMO_MODEL_ID, input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)


async def test_json_schema_format_reaches_codex_as_output_schema(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "ok": {"type": "boolean"}},
        "required": ["answer", "ok"],
        "additionalProperties": False,
    }
    response = await client.responses.create(
        model=DEMO_MODEL_ID,
        input="[[json]]",
        text={"format": {"type": "json_schema", "name": "result", "schema": schema}},
    )
    assert orjson.loads(response.output_text) == {"answer": "demo", "ok": True}
    upstream_format = bridge.demo.requests[-1]["text"]["format"]
    assert upstream_format["type"] == "json_schema"
    assert upstream_format["schema"]["required"] == ["answer", "ok"]


async def test_midstream_failure_ends_with_response_failed(client: openai.AsyncOpenAI) -> None:
    async with client.responses.with_streaming_response.create(
        model=DEMO_MODEL_ID, input="[[words=5]] [[fail_after=2]]", stream=True
    ) as raw:
        lines = [line async for line in raw.iter_lines()]
    events = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    for event in events:
        EVENT.validate_python(event)


async def test_built_in_tool_types_are_ignored_and_reported_not_refused(
    client: openai.AsyncOpenAI,
) -> None:
    # Codex CLI sends these when it uses the bridge as its model provider.
    raw = await client.responses.with_raw_response.create(
        model=DEMO_MODEL_ID,
        input="[[reply=fine]]",
        tools=[{"type": "web_search"}],  # type: ignore[list-item]
    )
    assert raw.parse().output_text == "fine"
    assert "tools:web_search" in raw.headers["x-codex-bridge-ignored-params"]
    with pytest.raises(openai.BadRequestError) as error:
        await client.responses.create(model=DEMO_MODEL_ID, input="x", background=True)
    assert error.value.param == "background"


WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


async def test_function_call_round_trip_with_previous_response_id(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    first = await client.responses.create(
        model=DEMO_MODEL_ID,
        input='[[tool=get_weather]] [[args={"city":"Rome"}]]',
        tools=[WEATHER_TOOL],
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"  # type: ignore[union-attr]
    assert orjson.loads(call.arguments) == {"city": "Rome"}  # type: ignore[union-attr]
    second = await client.responses.create(
        model=DEMO_MODEL_ID,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Hot"}],  # type: ignore[union-attr]
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == "Tool results: Hot"
    assert len(bridge.app[PENDING]) == 0


async def test_streamed_function_call_events_validate(client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(
        model=DEMO_MODEL_ID, input="[[tool=get_weather]]", tools=[WEATHER_TOOL]
    ) as stream:
        types = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert "response.function_call_arguments.delta" in types
    assert types[-1] == "response.completed"
    assert final.output[-1].type == "function_call"


async def test_previous_response_id_survives_a_bridge_restart(tmp_path: Path) -> None:
    settings = bridge_test_settings(tmp_path / "home")
    async with running_bridge(settings) as bridge:
        async with openai.AsyncOpenAI(base_url=f"{bridge.base_url}/v1", api_key="x") as sdk:
            first = await sdk.responses.create(model=DEMO_MODEL_ID, input="remember [[reply=42]]")
    async with running_bridge(settings) as bridge:
        async with openai.AsyncOpenAI(base_url=f"{bridge.base_url}/v1", api_key="x") as sdk:
            second = await sdk.responses.create(
                model=DEMO_MODEL_ID, input="[[echo_input]]", previous_response_id=first.id
            )
    assert "assistant: 42" in second.output_text.splitlines()


# -- the rest of the Responses API: delete, input items, input tokens, cancel, echo ----------


def _rollouts(bridge: RunningBridge, thread_id: str) -> list[Path]:
    home = Path(bridge.settings.codex.home or "")
    return list(home.glob(f"sessions/*/*/*/rollout-*-{thread_id}.jsonl"))


async def test_delete_removes_the_response_and_its_codex_thread(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    response = await client.responses.create(model=DEMO_MODEL_ID, input="[[reply=bye]]")
    record = await bridge.app[STORE].get(response.id, ANONYMOUS_OWNER)
    assert record is not None and record.thread_id is not None
    assert _rollouts(bridge, record.thread_id)
    raw = await client.responses.with_raw_response.delete(response.id)
    assert orjson.loads(raw.content) == {"id": response.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(response.id)
    assert not _rollouts(bridge, record.thread_id)


async def test_input_items_are_listed_with_openai_cursor_pagination(
    client: openai.AsyncOpenAI,
) -> None:
    response = await client.responses.create(
        model=DEMO_MODEL_ID,
        input=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": [{"type": "input_text", "text": "second [[reply=x]]"}]},
        ],
    )
    raw = await client.responses.input_items.with_raw_response.list(
        response.id, order="asc", limit=3
    )
    page = ResponseItemList.model_validate(orjson.loads(raw.content))
    assert [item.role for item in page.data] == ["developer", "user", "assistant"]  # type: ignore[union-attr]
    assert page.has_more is True
    assert (page.first_id, page.last_id) == (page.data[0].id, page.data[-1].id)
    rest = await client.responses.input_items.list(response.id, order="asc", after=page.last_id)
    assert [item.role for item in rest.data] == ["user"]  # type: ignore[union-attr]
    assert rest.has_more is False
    # The SDK follows the cursor through every page; newest first by default.
    newest_first = [item async for item in client.responses.input_items.list(response.id, limit=1)]
    assert [item.id for item in newest_first] == [i.id for i in [*page.data, *rest.data]][::-1]
    assert newest_first[0].content[0].text == "second [[reply=x]]"  # type: ignore[union-attr,index]
    with pytest.raises(openai.BadRequestError) as error:
        await client.responses.input_items.list(response.id, limit=101)
    assert error.value.param == "limit"


async def test_input_tokens_are_counted_not_taken_for_a_response_id(
    client: openai.AsyncOpenAI,
) -> None:
    counted = await client.responses.input_tokens.count(
        model=DEMO_MODEL_ID, instructions="Be brief.", input="Hello there, how are you?"
    )
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == count_tokens("Be brief.") + count_tokens(
        "Hello there, how are you?"
    )
    with pytest.raises(openai.NotFoundError) as error:
        await client.responses.input_tokens.count(model="no-such-model", input="x")
    assert error.value.code == "model_not_found"


async def test_cancel_is_a_clear_400_for_a_response_that_was_not_background(
    client: openai.AsyncOpenAI,
) -> None:
    response = await client.responses.create(model=DEMO_MODEL_ID, input="[[reply=done]]")
    with pytest.raises(openai.BadRequestError) as error:
        await client.responses.cancel(response.id)
    assert "background" in error.value.message
    with pytest.raises(openai.NotFoundError):
        await client.responses.cancel("resp_nope")


async def test_the_response_echoes_the_request_as_sent(client: openai.AsyncOpenAI) -> None:
    raw = await client.responses.with_raw_response.create(
        model=DEMO_MODEL_ID,
        input="[[reply=echo]]",
        tools=[WEATHER_TOOL],
        tool_choice="auto",
        text={"format": {"type": "text"}, "verbosity": "low"},
        reasoning={"effort": "low"},
        metadata={"run": "7"},
        max_output_tokens=64,
        parallel_tool_calls=False,
    )
    body = orjson.loads(raw.content)
    Response.model_validate(body)
    assert body["tools"] == [WEATHER_TOOL]
    assert body["tool_choice"] == "auto"
    assert body["text"] == {"format": {"type": "text"}, "verbosity": "low"}
    assert body["reasoning"]["effort"] == "low"
    assert body["metadata"] == {"run": "7"}
    assert body["max_output_tokens"] == 64
    assert body["parallel_tool_calls"] is False
    named = await client.responses.create(
        model=DEMO_MODEL_ID,
        input='[[tool=get_weather]] [[args={"city":"Oslo"}]]',
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert named.tool_choice.type == "function"  # type: ignore[union-attr]


async def test_a_failed_response_marks_its_cut_message_incomplete(
    client: openai.AsyncOpenAI,
) -> None:
    async with client.responses.with_streaming_response.create(
        model=DEMO_MODEL_ID, input="[[words=5]] [[fail_after=2]]", stream=True
    ) as raw:
        lines = [line async for line in raw.iter_lines()]
    events = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [e["item"]["status"] for e in done] == ["incomplete"]
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "failed"
    assert [item.status for item in final.output] == ["incomplete"]  # type: ignore[union-attr]


async def test_a_response_is_stored_before_its_final_event_reaches_the_client(
    client: openai.AsyncOpenAI,
) -> None:
    for i in range(20):
        async with client.responses.stream(
            model=DEMO_MODEL_ID, input=f"turn {i} [[reply=r{i}]]"
        ) as stream:
            async for event in stream:
                if event.type == "response.completed":
                    # Still inside the stream: the handler has not finished yet.
                    got = await client.responses.retrieve(event.response.id)
                    assert got.output_text == f"r{i}"
                    follow = await client.responses.create(
                        model=DEMO_MODEL_ID,
                        input="[[echo_input]]",
                        previous_response_id=event.response.id,
                    )
                    assert f"assistant: r{i}" in follow.output_text.splitlines()
