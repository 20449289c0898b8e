"""`POST /v1/chat/completions`: OpenAI chat requests in, Codex turns run, `chat.completion` out.

Translates a validated `ChatCompletionRequest` into a `TurnRequest`
(leading system/developer messages become instructions, the rest of the
conversation is replayed with its roles, the last user message is the turn's
input), runs it through a `TurnSession`, and renders the events as one
`chat.completion` or as `chat.completion.chunk` SSE frames. Knows OpenAI chat
shapes and turn events; knows no JSON-RPC.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Final

import orjson
from aiohttp import web

from bridge.api.conversation import Said, build_turn_request
from bridge.api.middleware import ACCESS
from bridge.api.schemas import (
    AssistantMessage,
    ChatCompletionRequest,
    JSONObjectFormat,
    JSONSchemaFormat,
)
from bridge.api.sse import ClientGone, SSEStream
from bridge.api.turns import TurnSession
from bridge.api.validation import parse_json_body
from bridge.appkeys import CATALOG, SETTINGS
from bridge.catalog import CatalogEntry
from bridge.codex.events import Failed, Finished, TextDelta, Usage
from bridge.codex.turn import TurnRequest
from bridge.errors import BridgeError, InvalidRequest

IGNORED_PARAMS_HEADER: Final = "x-codex-bridge-ignored-params"

_FINISH_REASONS: Final = {
    "stop": "stop",
    "interrupted": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
}

# Parameters not carried to Codex yet; refused clearly rather than ignored.
_NOT_YET: Final = (
    ("tools", "Function tools are not supported yet."),
    ("functions", "Function calling is not supported yet."),
    ("tool_choice", "tool_choice is not supported yet."),
    ("function_call", "function_call is not supported yet."),
    ("audio", "Audio output is not supported."),
)


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _text_of(content: Any, param: str) -> str:
    """Text of a message's content: a string, or text/refusal parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = getattr(part, "type", None)
        if kind == "text":
            texts.append(part.text)
        elif kind == "refusal":
            texts.append(part.refusal)
        else:
            raise InvalidRequest(
                f"Content parts of type '{kind}' are not supported by this bridge yet.",
                param=f"{param}[{j}]",
                code="unsupported_content",
            )
    return "\n".join(texts)


def to_turn_request(req: ChatCompletionRequest, entry: CatalogEntry) -> TurnRequest:
    conversation: list[Said] = []
    for i, message in enumerate(req.messages):
        if message.role in ("tool", "function"):
            raise InvalidRequest(
                f"Messages with role '{message.role}' are not supported yet.",
                param=f"messages[{i}].role",
            )
        if isinstance(message, AssistantMessage) and (message.tool_calls or message.function_call):
            raise InvalidRequest(
                "Assistant tool calls in the history are not supported yet.",
                param=f"messages[{i}].tool_calls",
            )
        conversation.append(Said(message.role, _text_of(message.content, f"messages[{i}].content")))
    output_schema = None
    fmt = req.response_format
    if isinstance(fmt, JSONSchemaFormat):
        output_schema = fmt.json_schema.schema_ or {"type": "object"}
    elif isinstance(fmt, JSONObjectFormat):
        raise InvalidRequest(
            "response_format 'json_object' is not supported yet; use 'json_schema'.",
            param="response_format",
        )
    return build_turn_request(
        conversation,
        codex_model=entry.codex_model,
        effort=req.reasoning_effort,
        output_schema=output_schema,
    )


def _check_supported(req: ChatCompletionRequest) -> None:
    for name, message in _NOT_YET:
        if getattr(req, name, None) is not None:
            raise InvalidRequest(message, param=name, code="unsupported_parameter")
    if req.n is not None and req.n != 1:
        raise InvalidRequest("Only n=1 is supported yet.", param="n", code="unsupported_value")


def _ignored(req: ChatCompletionRequest) -> list[str]:
    ignored = list(req.ignored_params())
    # Not enforced yet: said out loud instead of silently claimed.
    for name in ("max_tokens", "max_completion_tokens", "stop"):
        if getattr(req, name, None) is not None and name not in ignored:
            ignored.append(name)
    return ignored


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    app = request.app
    req = parse_json_body(await request.read(), ChatCompletionRequest)
    entry = app[CATALOG].resolve(req.model)
    _check_supported(req)
    turn_request = to_turn_request(req, entry)
    ignored = _ignored(req)
    headers = {IGNORED_PARAMS_HEADER: ",".join(ignored)} if ignored else {}
    request[ACCESS].model = req.model
    session = TurnSession(request, turn_request, endpoint="chat", stream=bool(req.stream))
    # Admission and turn start happen before any byte is sent, so their
    # errors are plain JSON with a real status (error middleware).
    async with session:
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await _stream(request, session, req.model, include_usage, headers)
        return await _complete(session, req.model, headers)


async def _complete(session: TurnSession, model: str, headers: dict[str, str]) -> web.Response:
    parts: list[str] = []
    while True:
        event = await session.next_event()
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Finished):
            body = {
                "id": completion_id(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "".join(parts),
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": _FINISH_REASONS[event.reason],
                    }
                ],
                "usage": usage_object(event.usage),
            }
            return web.Response(
                body=orjson.dumps(body), content_type="application/json", headers=headers
            )
        elif isinstance(event, Failed):
            raise event.error


class _ChunkWriter:
    """Pre-renders the constant parts of every chunk; the delta path only splices text."""

    def __init__(self, stream: SSEStream, model: str, include_usage: bool) -> None:
        self._stream = stream
        self._base: dict[str, Any] = {
            "id": completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }
        self._include_usage = include_usage
        head = orjson.dumps(self._base)[:-1]
        self._delta_prefix = head + b',"choices":[{"index":0,"delta":{"content":'
        self._delta_suffix = (
            b'},"logprobs":null,"finish_reason":null}]'
            + (b',"usage":null' if include_usage else b"")
            + b"}"
        )

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {**self._base, "choices": choices, **extra}
        if self._include_usage and "usage" not in extra:
            body["usage"] = None
        return orjson.dumps(body)

    async def role(self) -> None:
        delta = {"role": "assistant", "content": "", "refusal": None}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        await self._stream.data(self._chunk([choice]))

    async def text(self, text: str) -> None:
        await self._stream.data(self._delta_prefix + orjson.dumps(text) + self._delta_suffix)

    async def finish(self, reason: str, usage: Usage) -> None:
        choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}
        await self._stream.data(self._chunk([choice]))
        if self._include_usage:
            await self._stream.data(self._chunk([], usage=usage_object(usage)))
        await self._stream.done()

    async def error(self, error: BridgeError) -> None:
        await self._stream.data(orjson.dumps(error.envelope()))
        await self._stream.done()


async def _stream(
    request: web.Request,
    session: TurnSession,
    model: str,
    include_usage: bool,
    headers: dict[str, str],
) -> web.StreamResponse:
    stream = SSEStream(request, headers)
    await stream.open()
    writer = _ChunkWriter(stream, model, include_usage)
    keepalive = request.app[SETTINGS].server.sse_keepalive_s
    try:
        await writer.role()
        while True:
            try:
                event = await session.next_event(keepalive_s=keepalive)
            except BridgeError as exc:
                await writer.error(exc)
                break
            if event is None:
                await stream.keepalive()
            elif isinstance(event, TextDelta):
                await writer.text(event.text)
            elif isinstance(event, Finished):
                await writer.finish(_FINISH_REASONS[event.reason], event.usage)
                break
            elif isinstance(event, Failed):
                await writer.error(event.error)
                break
    except ClientGone:
        request[ACCESS].outcome = "client_disconnected"
    return await stream.close()
