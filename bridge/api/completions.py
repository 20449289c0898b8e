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

from bridge.api.chat import limiters_for
from bridge.api.conversation import Said, build_turn_request
from bridge.api.drive import drive
from bridge.api.fanout import open_sessions
from bridge.api.middleware import ACCESS
from bridge.api.schemas import CompletionRequest
from bridge.api.sse import ClientGone, SSEStream
from bridge.api.turns import hold_headers, overall_deadline
from bridge.api.validation import ignored_params_headers, parse_json_body
from bridge.appkeys import CATALOG, SETTINGS
from bridge.codex.events import ReasoningDelta, ToolCall, Usage
from bridge.errors import BridgeError, InvalidRequest

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


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


class _Choices:
    """ChoiceSink for both shapes: collects, and writes frames when streaming."""

    def __init__(
        self, base: dict[str, Any], echo: list[str], stream: SSEStream | None, include_usage: bool
    ) -> None:
        self._base = base
        self.texts = list(echo)
        self.reasons = ["stop"] * len(echo)
        self.usage = Usage()
        self._stream = stream
        self._include_usage = include_usage

    def frame(self, index: int, text: str, finish: str | None) -> bytes:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
        body: dict[str, Any] = {**self._base, "choices": [choice]}
        if self._include_usage:
            body["usage"] = None
        return orjson.dumps(body)

    async def start(self) -> None:
        if self._stream is not None:
            for index, text in enumerate(self.texts):
                if text:
                    await self._stream.data(self.frame(index, text, None))

    async def text(self, index: int, text: str) -> None:
        if self._stream is not None:
            await self._stream.data(self.frame(index, text, None))
        else:
            self.texts[index] += text

    async def tool_call(self, index: int, call: ToolCall) -> None:
        pass  # no tools are offered on legacy completions

    async def reasoning(self, index: int, delta: ReasoningDelta) -> None:
        pass  # legacy completions have no field for a reasoning summary

    async def finish(self, index: int, reason: str, usage: Usage) -> None:
        self.reasons[index] = reason
        self.usage = self.usage + usage
        if self._stream is not None:
            await self._stream.data(self.frame(index, "", reason))

    async def keepalive(self) -> None:
        if self._stream is not None:
            await self._stream.keepalive()

    async def flush(self) -> None:
        if self._stream is not None:
            await self._stream.flush()

    def body(self) -> dict[str, Any]:
        choices = [
            {"text": text, "index": i, "logprobs": None, "finish_reason": self.reasons[i]}
            for i, text in enumerate(self.texts)
        ]
        return {**self._base, "choices": choices, "usage": _usage(self.usage)}

    async def end(self) -> None:
        assert self._stream is not None
        if self._include_usage:
            final = {**self._base, "choices": [], "usage": _usage(self.usage)}
            await self._stream.data(orjson.dumps(final))
        await self._stream.done()


async def create_completion(request: web.Request) -> web.StreamResponse:
    app = request.app
    req = parse_json_body(await request.read(), CompletionRequest)
    entry = app[CATALOG].resolve(req.model)
    _check_supported(req)
    prompts = prompts_of(req)
    turn_requests = [
        build_turn_request(
            [Said("user", p)],
            codex_model=entry.codex_model,
            effort=entry.effort,
            # Legacy completions have no field for a summary: ask for none.
            reasoning_summary="none",
            param="prompt",
        )
        for p in prompts
    ]
    limiters = limiters_for(req.stop, req.max_tokens, len(prompts))
    ignored = req.ignored_params()
    headers = ignored_params_headers(ignored, request)
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
        request, turn_requests, endpoint="completions", stream=bool(req.stream), param="prompt"
    ) as sessions:
        if not req.stream:
            collected = _Choices(base, echo, None, False)
            async with overall_deadline(sessions):
                await drive(sessions, limiters, collected)
            return web.Response(
                body=orjson.dumps(collected.body()),
                content_type="application/json",
                headers=headers,
            )
        server = app[SETTINGS].server
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        # A failure before any content is still a plain HTTP error.
        await hold_headers(sessions, server.stream_header_hold_s)
        stream = SSEStream(request, headers, write_timeout_s=server.sse_write_timeout_s)
        choices = _Choices(base, echo, stream, include_usage)
        try:
            await stream.open()
            try:
                async with overall_deadline(sessions):
                    await choices.start()
                    await drive(sessions, limiters, choices, keepalive_s=server.sse_keepalive_s)
                    await choices.end()
            except BridgeError as exc:
                await stream.data(orjson.dumps(exc.envelope()))
                await stream.done()
            await stream.end()
        except ClientGone as gone:
            # A deadline or failure that came first stays the request's outcome.
            if request[ACCESS].outcome == "ok":
                request[ACCESS].outcome = gone.outcome
        return await stream.close()
