"""Reasoning summaries out: Responses `reasoning` items and chat `reasoning_content`, via the SDK."""

from __future__ import annotations

from typing import Any

import openai
import orjson
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import Response, ResponseReasoningItem

from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge

THINK = "[[reasoning=Thinking about it.||Then checking twice.]] [[reply=Done.]]"


async def test_responses_reasoning_summary_gives_a_reasoning_item_before_the_message(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    raw = await client.responses.with_raw_response.create(
        model=DEMO_MODEL_ID, input=THINK, reasoning={"summary": "detailed"}
    )
    response = Response.model_validate(orjson.loads(raw.content))
    assert bridge.demo.requests[-1]["reasoning"]["summary"] == "detailed"
    reasoning, message = response.output
    assert isinstance(reasoning, ResponseReasoningItem)
    assert reasoning.id.startswith("rs_")
    assert [(s.type, s.text) for s in reasoning.summary] == [
        ("summary_text", "Thinking about it."),
        ("summary_text", "Then checking twice."),
    ]
    assert message.type == "message"
    assert response.output_text == "Done."
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens > 0
    assert response.reasoning is not None and response.reasoning.summary == "detailed"


async def test_responses_without_reasoning_summary_return_no_reasoning_item(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    response = await client.responses.create(model=DEMO_MODEL_ID, input=THINK)
    # Asked for none, so Codex asks the model for none.
    assert bridge.demo.requests[-1]["reasoning"].get("summary") in (None, "none")
    assert [item.type for item in response.output] == ["message"]


async def test_streamed_reasoning_summary_events_come_in_openai_order(
    client: openai.AsyncOpenAI,
) -> None:
    async with client.responses.stream(
        model=DEMO_MODEL_ID, input=THINK, reasoning={"summary": "auto"}
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [event.type for event in events]
    reasoning_events = [
        k for k in kinds if "reasoning" in k or k.startswith("response.output_item")
    ]
    assert reasoning_events[:6] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
    ]
    assert kinds.index("response.reasoning_summary_part.done") < kinds.index(
        "response.output_text.delta"
    )
    summary_indexes = {
        getattr(e, "summary_index", None) for e in events if "reasoning_summary" in e.type
    }
    assert summary_indexes == {0, 1}
    first_item = final.output[0]
    assert isinstance(first_item, ResponseReasoningItem)
    assert "".join(s.text for s in first_item.summary) == "Thinking about it.Then checking twice."
    assert final.output_text == "Done."


async def test_chat_completion_carries_the_summary_as_reasoning_content(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=[{"role": "user", "content": THINK}]
    )
    message = completion.choices[0].message
    assert message.content == "Done."
    assert (message.model_extra or {})["reasoning_content"] == (
        "Thinking about it.\n\nThen checking twice."
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens > 0


async def test_streamed_chat_carries_reasoning_content_deltas_before_the_text(
    client: openai.AsyncOpenAI,
) -> None:
    async with client.chat.completions.with_streaming_response.create(
        model=DEMO_MODEL_ID, messages=[{"role": "user", "content": THINK}], stream=True
    ) as raw:
        lines = [line async for line in raw.iter_lines()]
    chunks = [
        ChatCompletionChunk.model_validate(orjson.loads(line[6:]))
        for line in lines
        if line.startswith("data: {")
    ]
    deltas: list[Any] = [c.choices[0].delta for c in chunks if c.choices]
    thoughts = [(d.model_extra or {}).get("reasoning_content") for d in deltas]
    texts = [d.content for d in deltas]
    first_text = next(i for i, t in enumerate(texts) if t)
    assert "".join(t for t in thoughts if t) == "Thinking about it.\n\nThen checking twice."
    assert all(not t for t in thoughts[first_text:])
    assert "".join(t for t in texts if t) == "Done."


async def test_reasoning_content_is_off_when_the_operator_switches_it_off(
    tmp_path_factory: Any,
) -> None:
    home = tmp_path_factory.mktemp("codex-home-no-reasoning")
    settings = bridge_test_settings(home, **{"server.reasoning_content": False})
    async with running_bridge(settings) as running:
        async with openai.AsyncOpenAI(
            base_url=f"{running.base_url}/v1", api_key="unused", max_retries=0
        ) as sdk:
            completion = await sdk.chat.completions.create(
                model=DEMO_MODEL_ID, messages=[{"role": "user", "content": THINK}]
            )
        upstream = running.demo.requests[-1]
    assert "reasoning_content" not in (completion.choices[0].message.model_extra or {})
    # Nothing is asked of the model that the client will not see.
    assert upstream["reasoning"].get("summary") in (None, "none")
