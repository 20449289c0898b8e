"""Chat completions through the bridge, against the real `codex app-server` and the demo model."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import orjson

from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge
from tests.sse import data_frames, read_sse


async def post_chat(bridge: RunningBridge, body: Any, **kwargs: Any) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bridge.base_url}/v1/chat/completions", json=body, **kwargs) as r:
            raw = await r.read()
            return r.status, r.headers, orjson.loads(raw)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": text}], **extra}


async def test_non_streaming_chat_returns_the_models_reply_with_usage(
    bridge: RunningBridge,
) -> None:
    status, _, body = await post_chat(bridge, chat("hi [[reply=Bonjour tout le monde]]"))
    assert status == 200, body
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == DEMO_MODEL_ID
    choice = body["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "Bonjour tout le monde",
        "refusal": None,
        "annotations": [],
    }
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 4  # the demo model counts one token per word
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_cached_and_reasoning_tokens_are_reported(bridge: RunningBridge) -> None:
    status, _, body = await post_chat(bridge, chat("hi [[cached=7]] [[reasoning_tokens=5]]"))
    assert status == 200, body
    usage = body["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 7
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 5


async def test_streaming_chat_sends_role_then_deltas_then_finish_then_usage_then_done(
    bridge: RunningBridge,
) -> None:
    body = chat("go [[words=12]]", stream=True, stream_options={"include_usage": True})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert r.headers["Cache-Control"] == "no-cache"
            frames = data_frames(await read_sse(r))
    assert frames[-1].data == "[DONE]"
    chunks = [f.json() for f in frames[:-1]]
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    first, *content, final, usage_chunk = chunks
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in [*content, final])
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text == " ".join(f"w{i}" for i in range(1, 13))
    assert len(content) == 12
    assert final["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all(c["usage"] is None for c in [first, *content, final])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 12


async def test_streaming_without_include_usage_omits_usage(bridge: RunningBridge) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{bridge.base_url}/v1/chat/completions", json=chat("x", stream=True)
        ) as r:
            frames = data_frames(await read_sse(r))
    chunks = [f.json() for f in frames[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_history_reaches_the_model_with_roles_kept(bridge: RunningBridge) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "second question [[echo_input]]"}]},
    ]
    status, _, body = await post_chat(bridge, {"model": DEMO_MODEL_ID, "messages": messages})
    assert status == 200, body
    seen = body["choices"][0]["message"]["content"].splitlines()
    assert "user: first question" in seen
    assert "assistant: first answer" in seen
    assert seen[-1] == "user: second question [[echo_input]]"
    assert seen.index("user: first question") < seen.index("assistant: first answer")


async def test_system_message_replaces_codex_agent_prompt_in_plain_profile(
    bridge: RunningBridge,
) -> None:
    messages = [
        {"role": "system", "content": "You answer in haiku."},
        {"role": "user", "content": "hello [[echo_input]]"},
    ]
    status, _, body = await post_chat(bridge, {"model": DEMO_MODEL_ID, "messages": messages})
    assert status == 200, body
    seen = body["choices"][0]["message"]["content"].splitlines()
    assert seen[0] == "developer: You answer in haiku."
    upstream = bridge.demo.requests[-1]
    assert len(orjson.dumps(upstream)) < 20_000  # no 20-40 KB Codex agent prompt


async def test_plain_profile_gives_the_model_no_host_tools(bridge: RunningBridge) -> None:
    status, _, body = await post_chat(bridge, chat("which tools? [[echo_tools]]"))
    assert status == 200, body
    tools = set(filter(None, body["choices"][0]["message"]["content"].split(",")))
    forbidden = {
        "exec_command",
        "write_stdin",
        "shell",
        "shell_command",
        "web_search",
        "view_image",
        "apply_patch",
        "spawn_agent",
        "update_plan",
    }
    assert not tools & forbidden, tools


async def test_model_issued_cat_of_a_host_file_never_reaches_model_or_client(
    bridge: RunningBridge, tmp_path: Any
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-7f3a9c")
    status, _, body = await post_chat(bridge, chat(f"read it [[shell=cat {secret}]]"))
    assert status == 200, body
    assert "TOP-SECRET-7f3a9c" not in orjson.dumps(body).decode()
    upstream_after_call = [
        r
        for r in bridge.demo.requests
        if any(
            isinstance(i, dict) and i.get("type") == "function_call_output"
            for i in r.get("input", [])
        )
    ]
    assert upstream_after_call, "the model's shell call should have been answered"
    for request in upstream_after_call:
        assert "TOP-SECRET-7f3a9c" not in orjson.dumps(request).decode()


async def test_unknown_model_is_404_model_not_found(bridge: RunningBridge) -> None:
    status, _, body = await post_chat(bridge, {**chat("x"), "model": "no-such-model"})
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["type"] == "invalid_request_error"


async def test_invalid_requests_get_400_in_the_openai_envelope(bridge: RunningBridge) -> None:
    cases: list[tuple[Any, str | None]] = [
        ({"model": DEMO_MODEL_ID}, "messages"),
        ({**chat("x"), "stream": -1}, "stream"),
        (
            {"model": DEMO_MODEL_ID, "messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role",
        ),
        ({**chat("x"), "n": "2"}, "n"),
        ({**chat("x"), "temperature": 3}, "temperature"),
    ]
    for payload, param in cases:
        status, _, body = await post_chat(bridge, payload)
        assert status == 400, (payload, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["param"] == param, (payload, body)


async def test_non_json_body_is_a_400(bridge: RunningBridge) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{bridge.base_url}/v1/chat/completions",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400
            body = await r.json()
    assert body["error"]["type"] == "invalid_request_error"


async def test_unknown_route_is_a_404_envelope(bridge: RunningBridge) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bridge.base_url}/v1/nope", json={}) as r:
            assert r.status == 404
            body = await r.json()
    assert body["error"]["message"] == "Invalid URL (POST /v1/nope)"


async def test_ignored_sampling_parameters_are_named_in_a_header(bridge: RunningBridge) -> None:
    status, headers, body = await post_chat(bridge, chat("x", temperature=0.2, seed=4))
    assert status == 200, body
    ignored = set(headers["x-codex-bridge-ignored-params"].split(","))
    assert {"temperature", "seed"} <= ignored
    named = {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": "x", "name": "ann"}]}
    status, headers, _ = await post_chat(bridge, named)
    assert status == 200
    assert "messages[].name" in headers["x-codex-bridge-ignored-params"].split(",")


async def test_upstream_500_becomes_a_clean_502(bridge: RunningBridge) -> None:
    status, _, body = await post_chat(bridge, chat("x [[status=500]]"))
    assert status == 502
    assert body["error"]["type"] == "server_error"
    assert body["error"]["code"] == "upstream_error"


async def test_upstream_429_becomes_a_429_with_retry_after(bridge: RunningBridge) -> None:
    status, headers, body = await post_chat(bridge, chat("x [[status=429]]"))
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert int(headers["Retry-After"]) >= 1


async def test_upstream_failure_mid_stream_ends_with_error_frame_then_done(
    bridge: RunningBridge,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{bridge.base_url}/v1/chat/completions",
            json=chat("x [[words=6]] [[fail_after=3]]", stream=True),
        ) as r:
            assert r.status == 200
            frames = data_frames(await read_sse(r))
    assert frames[-1].data == "[DONE]"
    error = frames[-2].json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert "w1 w2 w3" in "".join(
        f.json()["choices"][0]["delta"].get("content", "") for f in frames[1:-2]
    )


async def test_upstream_hang_hits_the_idle_timeout_and_returns_504(bridge: RunningBridge) -> None:
    status, _, body = await post_chat(bridge, chat("x [[words=5]] [[hang_after=2]]"))
    assert status == 504
    assert body["error"]["code"] == "timeout"


async def test_worker_stays_usable_after_failures(bridge: RunningBridge) -> None:
    await post_chat(bridge, chat("x [[status=500]]"))
    status, _, body = await post_chat(bridge, chat("x [[reply=still here]]"))
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "still here"


async def test_oversized_body_is_a_413_envelope(bridge: RunningBridge) -> None:
    limit = bridge.settings.server.max_body_bytes
    big = io.BytesIO(orjson.dumps(chat("x" * (limit + 1))))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{bridge.base_url}/v1/chat/completions",
            data=big,
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 413
            error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert str(limit) in error["message"]


async def test_wrong_method_is_a_405_envelope_with_allow(bridge: RunningBridge) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.base_url}/v1/chat/completions") as r:
            assert r.status == 405
            assert "POST" in r.headers["Allow"]
            assert set((await r.json())["error"]) == {"message", "type", "param", "code"}


async def test_agent_profile_declines_the_models_commands_so_host_files_stay_unread(
    tmp_path: Any,
) -> None:
    from tests.harness import bridge_test_settings, running_bridge

    secret = tmp_path / "secret.txt"
    secret.write_text("AGENT-SECRET-4b1d")
    settings = bridge_test_settings(tmp_path / "home", **{"codex.profile": "agent"})
    async with running_bridge(settings) as agent:
        offered = {t.get("name") for t in (await _tools_offered(agent))}
        assert "exec_command" in offered  # Codex's own tools: this is the agent profile
        for command in (f"cat {secret}", f"bash -lc 'cat {secret}'"):
            status, _, body = await post_chat(agent, chat(f"[[shell={command}]]"))
            assert status == 200, body
            assert "AGENT-SECRET-4b1d" not in orjson.dumps(body).decode()
            assert "rejected" in body["choices"][0]["message"]["content"]
        for request in agent.demo.requests:
            assert "AGENT-SECRET-4b1d" not in orjson.dumps(request).decode()


async def _tools_offered(bridge: RunningBridge) -> list[dict[str, Any]]:
    status, _, _ = await post_chat(bridge, chat("[[reply=ok]]"))
    assert status == 200
    tools: list[dict[str, Any]] = bridge.demo.requests[-1].get("tools", [])
    return tools


async def test_text_replayed_by_a_codex_stream_retry_reaches_the_client_once(
    tmp_path: Any,
) -> None:
    from tests.harness import bridge_test_settings, running_bridge
    from tests.sse import read_sse

    provider = "model_providers.codexbridge-demo"
    settings = bridge_test_settings(
        tmp_path,
        **{
            # Operator overrides come last: turn Codex's own stream retry back on.
            "codex.config_overrides": [
                f"{provider}.stream_max_retries=1",
                f"{provider}.stream_idle_timeout_ms=700",
            ]
        },
    )
    async with running_bridge(settings) as retrying, aiohttp.ClientSession() as http:
        body = chat("[[words=6]] [[hang_after=3]]", stream=True)
        async with http.post(f"{retrying.base_url}/v1/chat/completions", json=body) as r:
            frames = data_frames(await read_sse(r))
        attempts = len(retrying.demo.requests)
    assert attempts == 2  # the model call was retried and replayed "w1 w2 w3 "
    text = "".join(
        f.json()["choices"][0]["delta"].get("content", "")
        for f in frames
        if f.data != "[DONE]" and "choices" in f.json()
    )
    assert text == "w1 w2 w3 "
    assert "error" in frames[-2].json()
