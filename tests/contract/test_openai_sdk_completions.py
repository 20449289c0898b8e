"""Legacy completions through the official SDK, validated with the SDK's `Completion` model."""

from __future__ import annotations

import openai
import orjson
import pytest
from openai.types import Completion

from bridge.demo import DEMO_MODEL_ID


async def test_completion_with_one_prompt_and_echo(client: openai.AsyncOpenAI) -> None:
    raw = await client.completions.with_raw_response.create(
        model=DEMO_MODEL_ID, prompt="Say [[reply=it]]", echo=True
    )
    completion = Completion.model_validate(orjson.loads(raw.content))
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.choices[0].text == "Say [[reply=it]]it"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].logprobs is None


async def test_several_prompts_give_one_choice_each_in_order(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(
        model=DEMO_MODEL_ID,
        prompt=["[[reply=zero]]", "[[reply=one]]", "[[reply=two]]"],
        logprobs=None,
        seed=None,
    )
    assert [(c.index, c.text) for c in completion.choices] == [
        (0, "zero"),
        (1, "one"),
        (2, "two"),
    ]
    assert completion.usage is not None and completion.usage.completion_tokens == 3


async def test_streamed_completion_frames_validate_and_end_with_done(
    client: openai.AsyncOpenAI,
) -> None:
    async with client.completions.with_streaming_response.create(
        model=DEMO_MODEL_ID,
        prompt="[[words=5]]",
        stream=True,
        stream_options={"include_usage": True},
    ) as raw:
        lines = [line async for line in raw.iter_lines()]
    payloads = [line[6:] for line in lines if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    decoded = [orjson.loads(p) for p in payloads[:-1]]
    # OpenAI streams `finish_reason: null` until the last content frame, but
    # the SDK types the field as non-null (it reuses `Completion` for chunks):
    # validate everything else as-is.
    for body in decoded:
        for choice in body["choices"]:
            if choice["finish_reason"] is None:
                choice["finish_reason"] = "length"
    frames = [Completion.model_validate(body) for body in decoded]
    assert all(f.object == "text_completion" for f in frames)
    text = "".join(c.text for f in frames for c in f.choices)
    assert text == "w1 w2 w3 w4 w5"
    assert orjson.loads(payloads[-3])["choices"][0]["finish_reason"] == "stop"
    assert orjson.loads(payloads[0])["choices"][0]["finish_reason"] is None
    assert frames[-1].choices == [] and frames[-1].usage is not None


async def test_what_codex_cannot_do_is_refused_naming_the_param(
    client: openai.AsyncOpenAI,
) -> None:
    for kwargs, param in (
        ({"prompt": "x", "suffix": "end"}, "suffix"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "logprobs": 9}, "logprobs"),
    ):
        with pytest.raises(openai.BadRequestError) as error:
            await client.completions.create(model=DEMO_MODEL_ID, **kwargs)  # type: ignore[call-overload]
        assert error.value.param == param
