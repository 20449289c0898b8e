"""Parameters the bridge enforces itself (stop, max tokens, n), seen through the official SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from bridge.demo import DEMO_MODEL_ID
from bridge.tokens import count_tokens
from tests.harness import RunningBridge

TEN_WORDS = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"


async def test_stop_sequence_cuts_the_reply_before_the_match(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[words=10]]"}],
        stop=["w5", "never"],
    )
    assert completion.choices[0].message.content == "w1 w2 w3 w4 "
    assert completion.choices[0].finish_reason == "stop"


async def test_stop_sequence_split_across_deltas_is_matched_in_a_stream(
    client: openai.AsyncOpenAI,
) -> None:
    # The demo sends one word per delta: "w3 w4" spans two of them.
    stream = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[words=10]]"}],
        stop="w3 w4",
        stream=True,
    )
    text = ""
    reasons = []
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            reasons.append(chunk.choices[0].finish_reason)
    assert text == "w1 w2 "
    assert reasons[-1] == "stop"


async def test_max_tokens_cuts_at_the_limit_with_finish_reason_length(
    client: openai.AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[words=40]]"}],
        max_completion_tokens=7,
    )
    content = completion.choices[0].message.content or ""
    assert completion.choices[0].finish_reason == "length"
    assert count_tokens(content) == 7
    assert content and " ".join(f"w{i}" for i in range(1, 41)).startswith(content)
    assert completion.usage is not None and completion.usage.completion_tokens >= 7


async def test_n_3_runs_three_choices_with_their_indexes_and_summed_usage(
    client: openai.AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "[[reply=same]]"}], n=3
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert {c.message.content for c in completion.choices} == {"same"}
    assert completion.usage is not None and completion.usage.completion_tokens == 3


async def test_n_2_streams_each_choice_with_one_role_and_one_finish(
    client: openai.AsyncOpenAI,
) -> None:
    async with client.chat.completions.stream(
        model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "[[words=4]]"}], n=2
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    assert [c.message.content for c in final.choices] == ["w1 w2 w3 w4"] * 2
    assert [c.finish_reason for c in final.choices] == ["stop", "stop"]
    assert [c.message.role for c in final.choices] == ["assistant", "assistant"]


async def test_max_output_tokens_makes_the_response_incomplete(
    client: openai.AsyncOpenAI,
) -> None:
    response = await client.responses.create(
        model=DEMO_MODEL_ID, input="[[words=40]]", max_output_tokens=5
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert count_tokens(response.output_text) == 5


async def test_legacy_completion_honours_stop_and_max_tokens(client: openai.AsyncOpenAI) -> None:
    stopped = await client.completions.create(
        model=DEMO_MODEL_ID, prompt="[[words=10]]", stop=["w3"]
    )
    assert stopped.choices[0].text == "w1 w2 "
    limited = await client.completions.create(
        model=DEMO_MODEL_ID, prompt="[[words=30]]", max_tokens=4
    )
    assert limited.choices[0].finish_reason == "length"
    assert count_tokens(limited.choices[0].text) == 4


PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
    "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def test_image_inputs_reach_the_model_and_local_files_are_refused(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    completion = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this? [[reply=a pixel]]"},
                    {"type": "image_url", "image_url": {"url": PIXEL}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == "a pixel"
    parts = [
        part
        for item in bridge.demo.requests[-1]["input"]
        if item.get("role") == "user"
        for part in item.get("content", [])
    ]
    assert any(p.get("type") == "input_image" and p.get("image_url") == PIXEL for p in parts)
    for url in ("/etc/passwd", "file:///etc/passwd"):
        with pytest.raises(openai.BadRequestError) as error:
            await client.chat.completions.create(
                model=DEMO_MODEL_ID,
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ],
            )
        assert error.value.code == "invalid_image_url"
        assert error.value.param == "messages[0].content[0].image_url.url"


async def test_json_object_format_instructs_the_model_and_checks_the_reply(
    bridge: RunningBridge, client: openai.AsyncOpenAI
) -> None:
    fmt: Any = {"type": "json_object"}
    good = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "answer in JSON [[json]]"}],
        response_format=fmt,
    )
    assert good.choices[0].message.content == '{"answer":"demo","ok":true}'
    assert "valid JSON object" in str(bridge.demo.requests[-1]["input"])
    with pytest.raises(openai.InternalServerError) as bad:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=[{"role": "user", "content": "answer in JSON [[reply=not json]]"}],
            response_format=fmt,
        )
    assert bad.value.code == "invalid_json_output"
    with pytest.raises(openai.BadRequestError) as missing_word:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=[{"role": "user", "content": "no mention"}],
            response_format=fmt,
        )
    assert missing_word.value.param == "messages"
