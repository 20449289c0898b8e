"""`POST /v1/chat/completions`: OpenAI chat requests in, Codex turns run, `chat.completion` out.

Translates a validated `ChatCompletionRequest` into a `TurnRequest`
(leading system/developer messages become instructions, the rest of the
conversation is replayed with its roles, the last user message is the turn's
input), runs it through a `TurnSession`, and renders the events as one
`chat.completion` or as `chat.completion.chunk` SSE frames. A single choice
that ended by itself with text only offers its reply to conversation
affinity (`TurnSession.keep_conversation`). Knows OpenAI chat shapes and
turn events; knows no JSON-RPC.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import orjson
from aiohttp import web

from bridge.api.conversation import (
    ImageRef,
    Item,
    Said,
    build_turn_request,
    image_url,
    with_checked_images,
)
from bridge.api.drive import drive
from bridge.api.fanout import open_sessions
from bridge.api.forced import ToolChoice, ToolPlan, plan_tools
from bridge.api.images import IMAGE_FETCHES
from bridge.api.limits import OutputLimiter, stop_sequences
from bridge.api.middleware import ACCESS
from bridge.api.pending import PENDING, PendingToolCalls, owner_of
from bridge.api.schemas import (
    AllowedToolsChoice,
    AssistantMessage,
    ChatCompletionRequest,
    FunctionMessage,
    FunctionTool,
    ImagePart,
    JSONObjectFormat,
    JSONSchemaFormat,
    NamedFunction,
    NamedToolChoice,
    OtherTool,
    RefusalPart,
    TextPart,
    ToolMessage,
    UserMessage,
)
from bridge.api.sse import ClientGone, SSEStream
from bridge.api.turns import TurnSession, hold_headers, overall_deadline
from bridge.api.validation import ignored_params_headers, parse_json_body
from bridge.appkeys import CATALOG, SETTINGS
from bridge.catalog import CatalogEntry
from bridge.codex.events import ReasoningDelta, ToolCall, Usage
from bridge.codex.turn import HistoryToolCall, HistoryToolOutput, ToolSpec, TurnRequest
from bridge.errors import BridgeError, InvalidRequest, UpstreamFailed

# Parameters not carried to Codex yet; refused clearly rather than ignored.
_NOT_YET: Final = (("audio", "Audio output is not supported."),)


# json_object has no Codex equivalent: the model is told, and the reply checked.
JSON_OBJECT_INSTRUCTION: Final = "Respond with one valid JSON object and nothing else."


def legacy_reason(reason: str) -> str:
    """Legacy `functions` callers expect `function_call` where tools say `tool_calls`."""
    return "function_call" if reason == "tool_calls" else reason


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


def content_of(
    content: Any, param: str, *, images_allowed: bool = False
) -> tuple[str, tuple[ImageRef, ...]]:
    """Text (text/refusal parts joined) and image URLs of a message's content."""
    if content is None:
        return "", ()
    if isinstance(content, str):
        return content, ()
    texts: list[str] = []
    images: list[ImageRef] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, RefusalPart):
            texts.append(part.refusal)
        elif isinstance(part, ImagePart) and images_allowed:
            images.append(image_url(part.image_url.url, f"{param}[{j}].image_url.url"))
        else:
            raise InvalidRequest(
                f"Content parts of type '{part.type}' are not supported here.",
                param=f"{param}[{j}]",
                code="unsupported_content",
            )
    return "\n".join(texts), tuple(images)


def _text_of(content: Any, param: str) -> str:
    return content_of(content, param)[0]


def tool_specs(tools: Sequence[FunctionTool | OtherTool] | None) -> list[ToolSpec]:
    """The client's function tools; any other tool type is refused."""
    specs: list[ToolSpec] = []
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, FunctionTool):
            raise InvalidRequest(
                f"Tools of type '{tool.type}' are not supported; only 'function'.",
                param=f"tools[{i}].type",
                code="unsupported_value",
            )
        fn = tool.function
        specs.append(
            ToolSpec(
                name=fn.name,
                description=fn.description or "",
                parameters=fn.parameters or {"type": "object", "properties": {}},
            )
        )
    return specs


def tool_choice_of(choice: object, param: str = "tool_choice") -> ToolChoice:
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("required", (choice.function.name,), param)
    if isinstance(choice, AllowedToolsChoice):
        allowed = choice.allowed_tools
        mode = allowed.get("mode")
        tools = allowed.get("tools")
        if mode not in ("auto", "required") or not isinstance(tools, list):
            raise InvalidRequest(
                "'tool_choice.allowed_tools' needs 'mode' ('auto' or 'required') and 'tools'.",
                param=f"{param}.allowed_tools",
                code="invalid_value",
            )
        names: list[str] = []
        for tool in tools:
            fn = tool.get("function") if isinstance(tool, dict) else None
            name = fn.get("name") if isinstance(fn, dict) else None
            if not isinstance(name, str):
                raise InvalidRequest(
                    "'tool_choice.allowed_tools.tools' lists functions as "
                    '{"type": "function", "function": {"name": ...}}.',
                    param=f"{param}.allowed_tools.tools",
                    code="invalid_value",
                )
            names.append(name)
        return ToolChoice(mode, tuple(names), param)
    if choice in ("none", "required"):
        return ToolChoice(choice, None, param)
    return ToolChoice("auto", None, param)


def plan_of(req: ChatCompletionRequest) -> ToolPlan:
    tools, choice = _tools_and_choice(req)
    param = "function_call" if tools is not req.tools else "tool_choice"
    return plan_tools(tool_specs(tools), tool_choice_of(choice, param))


def _tools_and_choice(
    req: ChatCompletionRequest,
) -> tuple[Sequence[FunctionTool | OtherTool] | None, object]:
    """`tools`/`tool_choice`, or the legacy `functions`/`function_call` mapped onto them."""
    if req.tools is not None or req.functions is None:
        return req.tools, req.tool_choice
    tools = [FunctionTool(type="function", function=fn) for fn in req.functions]
    choice: object = req.function_call
    if isinstance(req.function_call, NamedFunction):
        choice = NamedToolChoice(type="function", function=req.function_call)
    return tools, choice


def conversation_of(req: ChatCompletionRequest) -> list[Item]:
    items: list[Item] = []
    for i, message in enumerate(req.messages):
        param = f"messages[{i}].content"
        if isinstance(message, ToolMessage):
            items.append(HistoryToolOutput(message.tool_call_id, _text_of(message.content, param)))
        elif isinstance(message, FunctionMessage):
            # Legacy results carry no call id: they answer the last call of that name.
            items.append(HistoryToolOutput(f"legacy_{message.name}", message.content or ""))
        elif isinstance(message, AssistantMessage):
            items.append(Said("assistant", _text_of(message.content, param)))
            if message.function_call is not None:
                fc = message.function_call
                items.append(HistoryToolCall(f"legacy_{fc.name}", fc.name, fc.arguments))
            for call in message.tool_calls or []:
                items.append(HistoryToolCall(call.id, call.function.name, call.function.arguments))
        elif isinstance(message, UserMessage):
            text, images = content_of(message.content, param, images_allowed=True)
            items.append(Said("user", text, images))
        else:
            items.append(Said(message.role, _text_of(message.content, param)))
    return items


def trailing_tool_outputs(items: Sequence[Item]) -> dict[str, str]:
    """The tool results that end the conversation: what a parked turn waits for."""
    outputs: dict[str, str] = {}
    for item in reversed(items):
        if not isinstance(item, HistoryToolOutput):
            break
        outputs[item.call_id] = item.output
    return outputs


def to_turn_request(
    req: ChatCompletionRequest,
    entry: CatalogEntry,
    plan: ToolPlan,
    conversation: Sequence[Item],
    *,
    reasoning: bool = True,
) -> TurnRequest:
    output_schema = None
    fmt = req.response_format
    if plan.forced is not None:
        # A forced call's reply is the call; response_format shapes text replies.
        output_schema = plan.forced.schema
    elif isinstance(fmt, JSONSchemaFormat):
        output_schema = fmt.json_schema.schema_ or {"type": "object"}
    hint = None
    if isinstance(fmt, JSONObjectFormat) and plan.forced is None:
        if not any("json" in str(m.content).lower() for m in req.messages):
            raise InvalidRequest(
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                param="messages",
            )
        hint = "\n\n".join(filter(None, [hint, JSON_OBJECT_INSTRUCTION]))
    return build_turn_request(
        conversation,
        codex_model=entry.codex_model,
        instructions=hint,
        effort=req.reasoning_effort or entry.effort,
        # Summaries are asked for only when they reach the client.
        reasoning_summary=None if reasoning else "none",
        output_schema=output_schema,
        tools=plan.tools,
    )


def _check_supported(req: ChatCompletionRequest) -> None:
    for name, message in _NOT_YET:
        if getattr(req, name, None) is not None:
            raise InvalidRequest(message, param=name, code="unsupported_parameter")
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    if req.tools and req.n not in (None, 1):
        raise InvalidRequest(
            "n > 1 cannot be combined with tools.", param="n", code="unsupported_value"
        )
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )


def limiters_for(
    stop: str | list[str] | None, max_tokens: int | None, n: int
) -> list[OutputLimiter]:
    stops = stop_sequences(stop)
    return [OutputLimiter(stops, max_tokens) for _ in range(n)]


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    app = request.app
    req = parse_json_body(await request.read(), ChatCompletionRequest)
    entry = app[CATALOG].resolve(req.model)
    _check_supported(req)
    plan = plan_of(req)
    reasoning = app[SETTINGS].server.reasoning_content
    items = conversation_of(req)
    n = req.n or 1
    max_tokens = req.max_completion_tokens or req.max_tokens
    # Stop sequences apply to reply text; a forced call has none.
    limiters = limiters_for(None if plan.forced else req.stop, max_tokens, n)
    ignored = req.ignored_params()
    if any(getattr(m, "name", None) for m in req.messages if m.role != "function"):
        ignored.append("messages[].name")  # Codex has no participant names
    headers = ignored_params_headers(ignored, request)
    request[ACCESS].model = req.model
    stream = bool(req.stream)
    legacy = req.functions is not None and req.tools is None
    pending = app[PENDING]
    outputs = trailing_tool_outputs(items)
    # Claimed first: an adopted turn goes on from its own thread, so this
    # request's history (and its images) never reach Codex and are not
    # checked or fetched. Nothing between the claim and the adoption raises.
    parked = pending.claim(outputs, owner_of(request, "chat")) if outputs else None
    if parked is not None:
        # The same Codex turn goes on: answer its tool calls, stream the rest.
        for call_id, output in outputs.items():
            parked.resolve_tool_call(call_id, output)
        scope = parked.adopted(request, endpoint="chat", stream=stream)
        sessions_cm: Any = single_session(scope)
    else:
        # Images are measured (and remote ones fetched) before any worker sees them.
        conversation = await with_checked_images(
            items, app[SETTINGS].images, param="messages", fetches=app[IMAGE_FETCHES]
        )
        turn_request = to_turn_request(req, entry, plan, conversation, reasoning=reasoning)
        # Admission and turn start happen before any byte is sent, so their
        # errors are plain JSON with a real status (error middleware).
        sessions_cm = open_sessions(request, [turn_request] * n, endpoint="chat", stream=stream)
    # One choice of a fresh turn whose reply is the model's text: its thread may be kept
    # for the conversation's next turn (`TurnSession.keep_conversation`).
    keepable = parked is None and n == 1 and plan.forced is None and not legacy
    async with sessions_cm as sessions:
        server = app[SETTINGS].server
        if stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            # A failure before any content is still a plain HTTP error.
            await hold_headers(sessions, server.stream_header_hold_s)
            sse = SSEStream(request, headers, write_timeout_s=server.sse_write_timeout_s)
            writer = _ChunkWriter(
                sse, req.model, include_usage, n, legacy=legacy, reasoning=reasoning
            )
            reply = Reply(writer)
            try:
                await sse.open()
                try:
                    async with overall_deadline(sessions):
                        await writer.roles()
                        waiting = await drive(
                            sessions,
                            limiters,
                            reply if keepable else writer,
                            keepalive_s=server.sse_keepalive_s,
                            forced=plan.forced,
                        )
                        if keepable and reply.whole:
                            await sessions[0].keep_conversation(reply.received)
                        await writer.end()
                    if not legacy:
                        park_waiting(pending, sessions, waiting)
                except BridgeError as exc:
                    await writer.error(exc)
                await sse.end()
            except ClientGone as gone:
                # A deadline or failure that came first stays the request's outcome.
                if request[ACCESS].outcome == "ok":
                    request[ACCESS].outcome = gone.outcome
            return await sse.close()
        collector = _Collector(n, legacy=legacy, reasoning=reasoning)
        async with overall_deadline(sessions):
            waiting = await drive(sessions, limiters, collector, forced=plan.forced)
        # Legacy function results carry no call id to find a parked turn by:
        # their follow-up replays the conversation, so nothing is parked.
        if not legacy:
            park_waiting(pending, sessions, waiting)
        if isinstance(req.response_format, JSONObjectFormat):
            collector.check_json()
        if keepable and collector.reasons[0] == "stop" and not collector.calls[0]:
            await sessions[0].keep_conversation("".join(collector.texts[0]))
        return web.Response(
            body=orjson.dumps(collector.body(req.model)),
            content_type="application/json",
            headers=headers,
        )


@asynccontextmanager
async def single_session(
    scope: AbstractAsyncContextManager[TurnSession],
) -> AsyncIterator[list[TurnSession]]:
    async with scope as session:
        yield [session]


def park_waiting(
    pending: PendingToolCalls, sessions: Sequence[TurnSession], waiting: dict[int, list[ToolCall]]
) -> None:
    for index, calls in waiting.items():
        pending.park(sessions[index], [call.call_id for call in calls])


class Reply:
    """A single-choice stream's sink, recording what its client received of the reply."""

    __slots__ = ("_parts", "_sink", "whole")

    def __init__(self, sink: _ChunkWriter) -> None:
        self._sink = sink
        self._parts: list[str] = []
        self.whole = False
        """The reply ended by itself ("stop") with text only: no tool call, nothing cut."""

    @property
    def received(self) -> str:
        return "".join(self._parts)

    async def text(self, index: int, text: str) -> None:
        self._parts.append(text)
        await self._sink.text(index, text)

    async def reasoning(self, index: int, delta: ReasoningDelta) -> None:
        await self._sink.reasoning(index, delta)

    async def tool_call(self, index: int, call: ToolCall) -> None:
        await self._sink.tool_call(index, call)

    async def finish(self, index: int, reason: str, usage: Usage) -> None:
        self.whole = reason == "stop"
        await self._sink.finish(index, reason, usage)

    async def keepalive(self) -> None:
        await self._sink.keepalive()

    async def flush(self) -> None:
        await self._sink.flush()


class ReasoningText:
    """One choice's reasoning summary as one text: parts and items kept apart by a blank line."""

    __slots__ = ("_at", "_pieces")

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._at: tuple[str, int] | None = None

    def add(self, delta: ReasoningDelta) -> str:
        """Takes a delta; returns the text it adds (with a separator when a new part began)."""
        where = (delta.item, delta.part)
        piece = delta.text
        if self._at is not None and where != self._at:
            piece = "\n\n" + piece
        self._at = where
        self._pieces.append(piece)
        return piece

    @property
    def text(self) -> str:
        return "".join(self._pieces)


class _Collector:
    """ChoiceSink for the non-streaming answer."""

    def __init__(self, n: int, *, legacy: bool = False, reasoning: bool = True) -> None:
        self._legacy = legacy
        self._reasoning = reasoning
        self.texts: list[list[str]] = [[] for _ in range(n)]
        self.thoughts: list[ReasoningText] = [ReasoningText() for _ in range(n)]
        self.calls: list[list[ToolCall]] = [[] for _ in range(n)]
        self.reasons = ["stop"] * n
        self.usage = Usage()

    async def text(self, index: int, text: str) -> None:
        self.texts[index].append(text)

    async def reasoning(self, index: int, delta: ReasoningDelta) -> None:
        if self._reasoning:
            self.thoughts[index].add(delta)

    async def tool_call(self, index: int, call: ToolCall) -> None:
        self.calls[index].append(call)

    async def finish(self, index: int, reason: str, usage: Usage) -> None:
        self.reasons[index] = legacy_reason(reason) if self._legacy else reason
        self.usage = self.usage + usage

    async def keepalive(self) -> None:
        pass

    async def flush(self) -> None:
        pass

    def check_json(self) -> None:
        for index, parts in enumerate(self.texts):
            if self.reasons[index] != "stop":
                continue  # cut short: OpenAI does not promise valid JSON then either
            try:
                valid = isinstance(orjson.loads("".join(parts)), dict)
            except orjson.JSONDecodeError:
                valid = False
            if not valid:
                raise UpstreamFailed(
                    "The model did not produce a valid JSON object for response_format "
                    "'json_object'.",
                    code="invalid_json_output",
                )

    def _message(self, index: int) -> dict[str, Any]:
        calls = self.calls[index]
        text = "".join(self.texts[index])
        message: dict[str, Any] = {
            "role": "assistant",
            # A tool-call-only message has null content, not "" (agents check).
            "content": text if text or not calls else None,
            "refusal": None,
            "annotations": [],
        }
        thought = self.thoughts[index].text
        if thought:
            message["reasoning_content"] = thought
        if calls and self._legacy:
            message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
        elif calls:
            message["tool_calls"] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in calls
            ]
        return message

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
                    "message": self._message(i),
                    "logprobs": None,
                    "finish_reason": self.reasons[i],
                }
                for i in range(len(self.texts))
            ],
            "usage": usage_object(self.usage),
        }


class _ChunkWriter:
    """ChoiceSink for streams. Pre-renders each choice's constant bytes: the delta path only splices text."""

    def __init__(
        self,
        stream: SSEStream,
        model: str,
        include_usage: bool,
        n: int,
        *,
        legacy: bool = False,
        reasoning: bool = True,
    ) -> None:
        self._legacy = legacy
        self._reasoning = reasoning
        self._thoughts = [ReasoningText() for _ in range(n)]
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
        self._tool_counts = [0] * n
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

    async def reasoning(self, index: int, delta: ReasoningDelta) -> None:
        if not self._reasoning:
            return
        piece = self._thoughts[index].add(delta)
        choice = {
            "index": index,
            "delta": {"reasoning_content": piece},
            "logprobs": None,
            "finish_reason": None,
        }
        await self._stream.data(self._chunk([choice]))

    async def tool_call(self, index: int, call: ToolCall) -> None:
        # id, type and name only in the first delta of a call: SDKs
        # concatenate repeated strings. Arguments follow on their own.
        if self._legacy:
            for fn_piece in (
                {"name": call.name, "arguments": ""},
                {"arguments": call.arguments},
            ):
                choice: dict[str, Any] = {
                    "index": index,
                    "delta": {"function_call": fn_piece},
                    "logprobs": None,
                    "finish_reason": None,
                }
                await self._stream.data(self._chunk([choice]))
            return
        k = self._tool_counts[index]
        self._tool_counts[index] += 1
        first = {
            "index": k,
            "id": call.call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        rest = {"index": k, "function": {"arguments": call.arguments}}
        for piece in (first, rest):
            choice = {
                "index": index,
                "delta": {"tool_calls": [piece]},
                "logprobs": None,
                "finish_reason": None,
            }
            await self._stream.data(self._chunk([choice]))

    async def finish(self, index: int, reason: str, usage: Usage) -> None:
        self._usage = self._usage + usage
        if self._legacy:
            reason = legacy_reason(reason)
        choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}
        await self._stream.data(self._chunk([choice]))

    async def keepalive(self) -> None:
        await self._stream.keepalive()

    async def flush(self) -> None:
        await self._stream.flush()

    async def end(self) -> None:
        if self._include_usage:
            await self._stream.data(self._chunk([], usage=usage_object(self._usage)))
        await self._stream.done()

    async def error(self, error: BridgeError) -> None:
        await self._stream.data(orjson.dumps(error.envelope()))
        await self._stream.done()
