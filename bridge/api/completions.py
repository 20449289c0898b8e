"""`POST /v1/completions` (legacy): each prompt is one user turn, one `text_completion` choice.

Several prompts run as several turns at once (choice `index` = prompt
index). `echo` prepends the prompt; what Codex cannot do (`suffix`
insertion, token-id prompts, `n` > 1, `best_of` > 1) is refused with a 400
naming the parameter. Streams send whole `text_completion` objects per
delta, then `[DONE]`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Final

import orjson
from aiohttp import web

from bridge.api.chat import IGNORED_PARAMS_HEADER
from bridge.api.conversation import Said, build_turn_request
from bridge.api.fanout import merged_events, open_sessions
from bridge.api.middleware import ACCESS
from bridge.api.schemas import CompletionRequest
from bridge.api.sse import ClientGone, SSEStream
from bridge.api.validation import parse_json_body
from bridge.appkeys import CATALOG, SETTINGS
from bridge.codex.events import Failed, Finished, TextDelta, Usage
from bridge.errors import BridgeError, InvalidRequest

# Legacy completions know no tool calls; an interrupted turn ended early.
_FINISH: Final = {"stop": "stop", "interrupted": "stop", "length": "length", "tool_calls": "stop"}
# One request may fan out to at most this many turns.
MAX_PROMPTS: Final = 16


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


def prompts_of(req: CompletionRequest) -> list[str]:
    prompt = req.prompt
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(p, str) for p in prompt):
        if not prompt:
            raise InvalidRequest("'prompt' must not be empty.", param="prompt", code="empty_array")
        if len(prompt) > MAX_PROMPTS:
            raise InvalidRequest(
                f"At most {MAX_PROMPTS} prompts per request.", param="prompt", code="invalid_value"
            )
        return [str(p) for p in prompt]
    raise _refuse("Token-id prompts are not supported; send text.", "prompt")


def _check_supported(req: CompletionRequest) -> None:
    if req.suffix:
        raise _refuse("'suffix' (insertion) is not supported by Codex.", "suffix")
    if req.n is not None and req.n != 1:
        raise _refuse("Only n=1 is supported on /v1/completions.", "n")
    if req.best_of is not None and req.best_of != 1:
        raise _refuse("Only best_of=1 is supported.", "best_of")


def _ignored(req: CompletionRequest) -> list[str]:
    ignored = req.ignored_params()
    for name in ("max_tokens", "stop"):
        if getattr(req, name) is not None:
            ignored.append(name)  # not enforced yet: said, not claimed
    return ignored


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


async def create_completion(request: web.Request) -> web.StreamResponse:
    app = request.app
    req = parse_json_body(await request.read(), CompletionRequest)
    entry = app[CATALOG].resolve(req.model)
    _check_supported(req)
    prompts = prompts_of(req)
    turn_requests = [
        build_turn_request([Said("user", p)], codex_model=entry.codex_model, param="prompt")
        for p in prompts
    ]
    ignored = _ignored(req)
    headers = {IGNORED_PARAMS_HEADER: ",".join(ignored)} if ignored else {}
    request[ACCESS].model = req.model
    base: dict[str, Any] = {
        "id": "cmpl-" + secrets.token_hex(12),
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": None,
    }
    echo = [p if req.echo else "" for p in prompts]
    async with open_sessions(
        request, turn_requests, endpoint="completions", stream=bool(req.stream)
    ) as sessions:
        if not req.stream:
            texts = list(echo)
            reasons = [""] * len(prompts)
            total = Usage()
            async for index, event in merged_events(sessions):
                if isinstance(event, TextDelta):
                    texts[index] += event.text
                elif isinstance(event, Finished):
                    reasons[index] = _FINISH[event.reason]
                    total = total + event.usage
                elif isinstance(event, Failed):
                    raise event.error
            body = {
                **base,
                "choices": [
                    {"text": texts[i], "index": i, "logprobs": None, "finish_reason": reasons[i]}
                    for i in range(len(prompts))
                ],
                "usage": _usage(total),
            }
            return web.Response(
                body=orjson.dumps(body), content_type="application/json", headers=headers
            )

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        stream = SSEStream(request, headers)
        await stream.open()

        def frame(index: int, text: str, finish: str | None) -> bytes:
            choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
            body: dict[str, Any] = {**base, "choices": [choice]}
            if include_usage:
                body["usage"] = None
            return orjson.dumps(body)

        total = Usage()
        try:
            for index, text in enumerate(echo):
                if text:
                    await stream.data(frame(index, text, None))
            keepalive = app[SETTINGS].server.sse_keepalive_s
            async for index, event in merged_events(sessions, keepalive_s=keepalive):
                if event is None:
                    await stream.keepalive()
                elif isinstance(event, TextDelta):
                    await stream.data(frame(index, event.text, None))
                elif isinstance(event, Finished):
                    total = total + event.usage
                    await stream.data(frame(index, "", _FINISH[event.reason]))
                elif isinstance(event, Failed):
                    await _stream_error(stream, event.error)
                    return await stream.close()
            if include_usage:
                await stream.data(orjson.dumps({**base, "choices": [], "usage": _usage(total)}))
            await stream.done()
        except ClientGone:
            request[ACCESS].outcome = "client_disconnected"
        return await stream.close()


async def _stream_error(stream: SSEStream, error: BridgeError) -> None:
    await stream.data(orjson.dumps(error.envelope()))
    await stream.done()
