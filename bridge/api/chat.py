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
from bridge.api.drive import drive
from bridge.api.fanout import open_sessions
from bridge.api.limits import OutputLimiter
from bridge.api.middleware import ACCESS
from bridge.api.schemas import (
    AssistantMessage,
    ChatCompletionRequest,
    JSONObjectFormat,
    JSONSchemaFormat,
)
from bridge.api.sse import ClientGone, SSEStream
from bridge.api.validation import parse_json_body
from bridge.appkeys import CATALOG, SETTINGS
from bridge.catalog import CatalogEntry
from bridge.codex.events import Usage
from bridge.codex.turn import TurnRequest
from bridge.errors import BridgeError, InvalidRequest

IGNORED_PARAMS_HEADER: Final = "x-codex-bridge-ignored-params"

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
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )


def limiters_for(
    stop: str | list[str] | None, max_tokens: int | None, n: int
) -> list[OutputLimiter]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return [OutputLimiter(stops, max_tokens) for _ in range(n)]


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    app = request.app
    req = parse_json_body(await request.read(), ChatCompletionRequest)
    entry = app[CATALOG].resolve(req.model)
    _check_supported(req)
    turn_request = to_turn_request(req, entry)
    n = req.n or 1
    max_tokens = req.max_completion_tokens or req.max_tokens
    limiters = limiters_for(req.stop, max_tokens, n)
    ignored = req.ignored_params()
    headers = {IGNORED_PARAMS_HEADER: ",".join(ignored)} if ignored else {}
    request[ACCESS].model = req.model
    # Admission and turn start happen before any byte is sent, so their
    # errors are plain JSON with a real status (error middleware).
    async with open_sessions(
        request, [turn_request] * n, endpoint="chat", stream=bool(req.stream)
    ) as sessions:
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream = SSEStream(request, headers)
            await stream.open()
            writer = _ChunkWriter(stream, req.model, include_usage, n)
            try:
                await writer.roles()
                await drive(
                    sessions,
                    limiters,
                    writer,
                    keepalive_s=app[SETTINGS].server.sse_keepalive_s,
                )
                await writer.end()
            except BridgeError as exc:
                await writer.error(exc)
            except ClientGone:
                request[ACCESS].outcome = "client_disconnected"
            return await stream.close()
        collector = _Collector(n)
        await drive(sessions, limiters, collector)
        return web.Response(
            body=orjson.dumps(collector.body(req.model)),
            content_type="application/json",
            headers=headers,
        )


class _Collector:
    """ChoiceSink for the non-streaming answer."""

    def __init__(self, n: int) -> None:
        self.texts: list[list[str]] = [[] for _ in range(n)]
        self.reasons = ["stop"] * n
        self.usage = Usage()

    async def text(self, index: int, text: str) -> None:
        self.texts[index].append(text)

    async def finish(self, index: int, reason: str, usage: Usage) -> None:
        self.reasons[index] = reason
        self.usage = self.usage + usage

    async def keepalive(self) -> None:
        pass

    def body(self, model: str) -> dict[str, Any]:
        return {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": "".join(parts),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": self.reasons[i],
                }
                for i, parts in enumerate(self.texts)
            ],
            "usage": usage_object(self.usage),
        }


class _ChunkWriter:
    """ChoiceSink for streams. Pre-renders each choice's constant bytes: the delta path only splices text."""

    def __init__(self, stream: SSEStream, model: str, include_usage: bool, n: int) -> None:
        self._stream = stream
        self._base: dict[str, Any] = {
            "id": completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }
        self._include_usage = include_usage
        self._usage = Usage()
        head = orjson.dumps(self._base)[:-1]
        self._prefixes = [
            head + b',"choices":[{"index":' + str(i).encode() + b',"delta":{"content":'
            for i in range(n)
        ]
        self._suffix = (
            b'},"logprobs":null,"finish_reason":null}]'
            + (b',"usage":null' if include_usage else b"")
            + b"}"
        )

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {**self._base, "choices": choices, **extra}
        if self._include_usage and "usage" not in extra:
            body["usage"] = None
        return orjson.dumps(body)

    async def roles(self) -> None:
        # The role goes once per choice, in its first chunk: SDKs concatenate
        # every string field of the deltas.
        for i in range(len(self._prefixes)):
            delta = {"role": "assistant", "content": "", "refusal": None}
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": None}
            await self._stream.data(self._chunk([choice]))

    async def text(self, index: int, text: str) -> None:
        await self._stream.data(self._prefixes[index] + orjson.dumps(text) + self._suffix)

    async def finish(self, index: int, reason: str, usage: Usage) -> None:
        self._usage = self._usage + usage
        choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
        await self._stream.data(self._chunk([choice]))

    async def keepalive(self) -> None:
        await self._stream.keepalive()

    async def end(self) -> None:
        if self._include_usage:
            await self._stream.data(self._chunk([], usage=usage_object(self._usage)))
        await self._stream.done()

    async def error(self, error: BridgeError) -> None:
        await self._stream.data(orjson.dumps(error.envelope()))
        await self._stream.done()
