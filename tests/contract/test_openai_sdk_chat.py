"""The official `openai` SDK as the client, with every payload validated by the SDK's own models.

The SDK builds objects without validating them, so passing through it alone
proves little: raw JSON and every SSE chunk also go through
`ChatCompletion.model_validate` / `ChatCompletionChunk.model_validate`.
"""

from __future__ import annotations

import openai
import orjson
import pytest
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bridge.demo import DEMO_MODEL_ID


async def test_sdk_chat_completion_parses_and_validates(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=DEMO_MODEL_ID,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "hello [[reply=Hi there]]"},
        ],
    )
    validated = ChatCompletion.model_validate(orjson.loads(raw.content))
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hi there"
    assert validated.choices[0].finish_reason == "stop"
    assert validated.usage is not None and validated.usage.completion_tokens == 2
    assert raw.headers["content-type"].startswith("application/json")


async def test_sdk_streaming_chunks_validate_and_accumulate(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.with_streaming_response.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "go [[words=20]]"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        lines = [line async for line in response.iter_lines()]
    payloads = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(orjson.loads(p)) for p in payloads[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(f"w{i}" for i in range(1, 21))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


async def test_sdk_stream_helper_accumulates_a_valid_final_message(
    client: openai.AsyncOpenAI,
) -> None:
    # The helper concatenates every string field of the deltas: a repeated
    # role would become "assistantassistant" and fail here.
    async with client.chat.completions.stream(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[reply=one two three]]"}],
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content == "one two three"
    assert final.choices[0].finish_reason == "stop"


async def test_sdk_raises_typed_errors(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.chat.completions.create(
            model="missing", messages=[{"role": "user", "content": "x"}]
        )
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model=DEMO_MODEL_ID, messages=[])
    assert bad.value.param == "messages"


async def test_sdk_stream_raises_on_midstream_failure(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[words=6]] [[fail_after=2]]"}],
        stream=True,
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_sdk_models_list_and_retrieve(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    ids = [m.id for m in page.data]
    assert DEMO_MODEL_ID in ids
    for model in page.data:
        Model.model_validate(model.model_dump())
    retrieved = await client.models.retrieve(DEMO_MODEL_ID)
    assert retrieved.id == DEMO_MODEL_ID
