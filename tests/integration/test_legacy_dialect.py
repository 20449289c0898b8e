"""Dialect v1 against the real legacy Codex 0.77.0 (installed from npm by scripts/setup).

The same HTTP surface, auto-detected protocol, every RPC message checked
against the 0.77 schema bundle; what v1 cannot carry is a clear 400.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until

LEGACY_CODEX = (
    Path(__file__).resolve().parents[2] / ".codex-legacy" / "node_modules" / ".bin" / "codex"
)
WAIT_S = 30.0


@pytest.fixture(scope="module")
async def legacy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBridge]:
    assert LEGACY_CODEX.exists(), "scripts/setup installs Codex 0.77.0 into .codex-legacy/"
    settings = bridge_test_settings(
        tmp_path_factory.mktemp("legacy"), **{"codex.bin": str(LEGACY_CODEX)}
    )  # dialect "auto"
    async with running_bridge(settings) as bridge:
        yield bridge


@pytest.fixture
async def sdk(legacy: RunningBridge) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{legacy.base_url}/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


async def test_auto_detection_picks_v1_for_codex_0_77(legacy: RunningBridge) -> None:
    worker = legacy.pool.workers[0]
    assert worker.dialect == "v1"
    assert worker.user_agent is not None and "0.77.0" in worker.user_agent
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{legacy.base_url}/readyz") as r:
            assert (await r.json())["dialect"] == ["v1"]
        async with http.get(f"{legacy.base_url}/metrics") as r:
            assert 'codex_bridge_worker_dialect{dialect="v1",worker="0"} 1.0' in await r.text()


async def test_chat_completion_on_v1(sdk: openai.AsyncOpenAI) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(
        model=DEMO_MODEL_ID,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "[[reply=legacy works]] [[cached=3]]"},
        ],
    )
    completion = ChatCompletion.model_validate(orjson.loads(raw.content))
    assert completion.choices[0].message.content == "legacy works"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 3


async def test_streaming_chat_with_usage_on_v1(sdk: openai.AsyncOpenAI) -> None:
    async with sdk.chat.completions.with_streaming_response.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": "[[words=6]]"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as raw:
        lines = [line async for line in raw.iter_lines()]
    payloads = [line[6:] for line in lines if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(orjson.loads(p)) for p in payloads[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w1 w2 w3 w4 w5 w6"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


async def test_stop_and_completions_and_responses_work_on_v1(sdk: openai.AsyncOpenAI) -> None:
    stopped = await sdk.chat.completions.create(
        model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "[[words=9]]"}], stop="w4"
    )
    assert stopped.choices[0].message.content == "w1 w2 w3 "
    completion = await sdk.completions.create(model=DEMO_MODEL_ID, prompt="[[reply=legacy]]")
    assert completion.choices[0].text == "legacy"
    response = await sdk.responses.create(model=DEMO_MODEL_ID, input="[[reply=r1]]", store=False)
    assert response.output_text == "r1"


async def test_upstream_failure_is_a_clean_502_on_v1(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as error:
        await sdk.chat.completions.create(
            model=DEMO_MODEL_ID, messages=[{"role": "user", "content": "[[status=500]]"}]
        )
    assert error.value.status_code == 502
    assert error.value.code == "upstream_error"


async def test_what_v1_cannot_carry_is_a_400_naming_the_param(sdk: openai.AsyncOpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
            "messages",
        ),
        (
            {
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tools",
        ),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as error:
            await sdk.chat.completions.create(model=DEMO_MODEL_ID, **kwargs)
        assert error.value.param == param
        assert error.value.code == "unsupported_by_dialect"


async def test_client_disconnect_interrupts_the_v1_conversation(legacy: RunningBridge) -> None:
    aborted = legacy.demo.aborted_streams
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{legacy.base_url}/v1/chat/completions",
            json={
                "model": DEMO_MODEL_ID,
                "messages": [{"role": "user", "content": "[[words=200]] [[delay_ms=100]]"}],
                "stream": True,
            },
        )
        received = b""
        while b'"content":"w1 "' not in received:
            received += await response.content.readany()
        response.close()
    await wait_until(
        lambda: legacy.pool.active_turns == 0 and legacy.demo.aborted_streams > aborted,
        timeout=WAIT_S,
    )
