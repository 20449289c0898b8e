"""Streams that fail before any content answer a real HTTP status, as the SDK expects.

The bridge holds a stream's headers until the turn's first content
(`server.stream_header_hold_s`), so an upstream 429 or 5xx before any text
reaches the client as the status and envelope a non-streaming request gets:
the SDK raises `RateLimitError` / `APIStatusError` at `create()` and can
retry. After content, failures stay in-stream (tested elsewhere).
"""

from __future__ import annotations

import openai
import pytest

from bridge.api.limits import MAX_STOP_CHARS
from bridge.demo import DEMO_MODEL_ID


async def test_chat_stream_whose_upstream_answers_429_raises_rate_limit_error_at_create(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=[{"role": "user", "content": "x [[status=429]]"}],
            stream=True,
        )
    assert info.value.status_code == 429
    assert info.value.code == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) >= 1


async def test_chat_stream_whose_upstream_answers_500_raises_a_5xx_status_error_at_create(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=[{"role": "user", "content": "x [[status=500]]"}],
            stream=True,
        )
    assert info.value.status_code >= 500
    assert info.value.code == "upstream_error"


async def test_chat_stream_with_two_choices_whose_upstream_answers_429_raises_at_create(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=[{"role": "user", "content": "x [[status=429]]"}],
            stream=True,
            n=2,
        )
    assert info.value.status_code == 429


async def test_completions_stream_whose_upstream_answers_429_raises_rate_limit_error(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        await client.completions.create(model=DEMO_MODEL_ID, prompt="x [[status=429]]", stream=True)
    assert info.value.status_code == 429


async def test_responses_stream_whose_upstream_answers_429_raises_rate_limit_error(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        await client.responses.create(
            model=DEMO_MODEL_ID, input="x [[status=429]]", stream=True, store=False
        )
    assert info.value.status_code == 429
    assert "retry-after" in info.value.response.headers


async def test_responses_stream_whose_upstream_answers_503_raises_a_5xx_status_error(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await client.responses.create(
            model=DEMO_MODEL_ID, input="x [[status=503]]", stream=True, store=False
        )
    assert info.value.status_code >= 500


async def test_a_stream_that_succeeds_is_unchanged_by_the_header_hold(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[words=5]]"}],
        stream=True,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "w1 w2 w3 w4 w5"


async def test_a_stop_sequence_longer_than_the_cap_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model=DEMO_MODEL_ID,
            messages=[{"role": "user", "content": "hi"}],
            stop=["ok", "x" * (MAX_STOP_CHARS + 1)],
        )
    assert info.value.code == "string_above_max_length"
    assert info.value.param == "stop[1]"
