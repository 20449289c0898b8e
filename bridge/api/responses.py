"""`POST /v1/responses`: the Responses API over Codex turns.

Input items become a conversation (`bridge.api.conversation`), the turn runs
in a `TurnSession`, and `ResponseRenderer` turns its events into the
`response` object or the typed SSE event sequence. With `store` (OpenAI's
default) the response is saved, owned by the caller's key, with its input
items and its Codex thread before its final event or body is sent, and a
later `previous_response_id` from the same key forks that thread so nothing
is re-sent; when the thread is not in this instance's Codex home (a shared
store, another instance ran it) the conversation is replayed from the store
into a fresh thread instead (`bridge.api.replay`). Reading, listing, deleting and counting are
`bridge.api.stored_responses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
from aiohttp import web

from bridge.api.chat import park_waiting, single_session, trailing_tool_outputs
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
from bridge.api.forced import ForcedCall, ToolChoice, plan_tools
from bridge.api.images import IMAGE_FETCHES
from bridge.api.limits import OutputLimiter
from bridge.api.middleware import ACCESS, METRICS
from bridge.api.pending import PENDING, owner_of
from bridge.api.replay import replayed_conversation, thread_is_here
from bridge.api.responses_render import Frame, ResponseEcho, ResponseRenderer
from bridge.api.schemas import (
    FlatFunctionTool,
    FormatJSONObject,
    FormatJSONSchema,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputMessage,
    InputText,
    OtherItem,
    OutputText,
    Refusal,
    ResponseCreateRequest,
)
from bridge.api.sse import ClientGone, SSEStream
from bridge.api.stored_responses import Persist, input_items_of, saver
from bridge.api.turns import TurnSession, caller_of, hold_headers, overall_deadline
from bridge.api.validation import ignored_params_headers, parse_json_body
from bridge.appkeys import CATALOG, SETTINGS, STATE, STORE
from bridge.catalog import CatalogEntry
from bridge.codex.events import ReasoningDelta, ToolCall, Usage
from bridge.codex.turn import HistoryToolCall, HistoryToolOutput, ToolSpec, TurnRequest
from bridge.errors import BridgeError, InvalidRequest, NotFound

# Items Codex CLI and others send back that carry nothing the model needs here.
_SKIPPED_ITEMS: Final = frozenset({"reasoning", "item_reference"})


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="unsupported_parameter")


def _output_text(output: str | list[dict[str, Any]]) -> str:
    if isinstance(output, str):
        return output
    return "\n".join(str(p.get("text", "")) for p in output if isinstance(p, dict))


def conversation_of(req: ResponseCreateRequest) -> list[Item]:
    if isinstance(req.input, str):
        return [Said("user", req.input)]
    said: list[Item] = []
    for i, item in enumerate(req.input):
        if isinstance(item, InputMessage):
            if isinstance(item.content, str):
                said.append(Said(item.role, item.content))
                continue
            texts: list[str] = []
            images: list[ImageRef] = []
            for j, part in enumerate(item.content):
                if isinstance(part, Refusal):
                    texts.append(part.refusal)
                elif isinstance(part, InputText | OutputText):
                    texts.append(part.text)
                elif isinstance(part, InputImage) and part.image_url:
                    images.append(image_url(part.image_url, f"input[{i}].content[{j}].image_url"))
                else:
                    raise _refuse(
                        f"Content parts of type '{part.type}' are not supported yet.",
                        f"input[{i}].content[{j}]",
                    )
            said.append(Said(item.role, "\n".join(texts), tuple(images)))
        elif isinstance(item, FunctionCallItem):
            said.append(HistoryToolCall(item.call_id, item.name, item.arguments))
        elif isinstance(item, FunctionCallOutputItem):
            said.append(HistoryToolOutput(item.call_id, _output_text(item.output)))
        elif isinstance(item, OtherItem) and item.type not in _SKIPPED_ITEMS:
            raise _refuse(f"Input items of type '{item.type}' are not supported.", f"input[{i}]")
    return said


def tools_of(req: ResponseCreateRequest) -> tuple[list[ToolSpec], list[str]]:
    """Function tools for Codex, and the built-in tool types ignored.

    Built-in tool types (web_search, namespace, ...) are ignored and reported,
    not refused: Codex CLI sends them when it uses the bridge as its provider.
    """
    if not req.tools or req.tool_choice == "none":
        return [], []
    specs: list[ToolSpec] = []
    ignored: list[str] = []
    for tool in req.tools:
        if isinstance(tool, FlatFunctionTool):
            specs.append(
                ToolSpec(
                    tool.name,
                    tool.description or "",
                    tool.parameters or {"type": "object", "properties": {}},
                )
            )
        else:
            ignored.append(f"tools:{tool.type}")
    return specs, ignored


def tool_choice_of(choice: object) -> ToolChoice | None:
    """The choice over function tools; None for a built-in tool's choice (ignored, reported)."""
    if choice in ("none", "required"):
        return ToolChoice(choice)
    if not isinstance(choice, dict):
        return ToolChoice()
    if choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str):
            raise InvalidRequest(
                "'tool_choice' of type 'function' needs the function's 'name'.",
                param="tool_choice.name",
                code="missing_required_parameter",
            )
        return ToolChoice("required", (name,))
    if choice.get("type") == "allowed_tools":
        mode = choice.get("mode")
        tools = choice.get("tools")
        if mode not in ("auto", "required") or not isinstance(tools, list):
            raise InvalidRequest(
                "'tool_choice' of type 'allowed_tools' needs 'mode' ('auto' or 'required') "
                "and 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
        names = [t.get("name") for t in tools if isinstance(t, dict)]
        if len(names) != len(tools) or not all(isinstance(n, str) for n in names):
            raise InvalidRequest(
                "'tool_choice.tools' lists functions as objects of type 'function' with a 'name'.",
                param="tool_choice.tools",
                code="invalid_value",
            )
        return ToolChoice(mode, tuple(str(n) for n in names))
    return None


def _was_forced(body: dict[str, Any]) -> bool:
    """Whether a stored response's tool_choice made the bridge force its call."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return choice == "required"
    kind = choice.get("type")
    return kind == "function" or (kind == "allowed_tools" and choice.get("mode") == "required")


def _with_forced_calls(conversation: list[Item], body: dict[str, Any]) -> list[Item]:
    calls: list[Item] = [
        HistoryToolCall(str(item["call_id"]), str(item["name"]), str(item["arguments"]))
        for item in body.get("output") or []
        if isinstance(item, dict) and item.get("type") == "function_call"
    ]
    tail = len(conversation)
    while tail and isinstance(conversation[tail - 1], HistoryToolOutput):
        tail -= 1
    return [*conversation[:tail], *calls, *conversation[tail:]]


def _check_supported(req: ResponseCreateRequest) -> None:
    if req.conversation is not None:
        raise _refuse("Conversations are not supported; use previous_response_id.", "conversation")
    if req.background:
        raise _refuse("Background responses are not supported.", "background")
    if req.text and isinstance(req.text.format, FormatJSONObject):
        raise _refuse(
            "text.format 'json_object' is not supported yet; use 'json_schema'.", "text.format"
        )


async def create_response(request: web.Request) -> web.StreamResponse:
    app = request.app
    req = parse_json_body(await request.read(), ResponseCreateRequest)
    entry = app[CATALOG].resolve(req.model)
    _check_supported(req)
    input_items = input_items_of(req) if req.store is not False else []
    store = app[STORE]
    keep = req.store is not False
    continue_from = None
    replayed: list[Item] | None = None
    previous_body: dict[str, Any] | None = None
    if req.previous_response_id:
        # Another key's response is as absent as one that never existed.
        previous = await store.get(req.previous_response_id, caller_of(request))
        if previous is None or previous.thread_id is None or previous.turn_id is None:
            raise NotFound(
                f"Previous response with id '{req.previous_response_id}' not found.",
                param="previous_response_id",
            )
        previous_body = previous.body
        # Without a shared store every stored response ran on this instance, so its thread
        # is here: no glob over the homes' session folders on the request path.
        shared = bool(app[SETTINGS].store.url)
        if not shared or await thread_is_here(app[STATE].homes, previous.thread_id):
            continue_from = (previous.thread_id, previous.turn_id)
        else:
            # Another instance ran it (shared store): rebuilt from the store, not forked.
            replayed = await replayed_conversation(store, previous, caller_of(request))
            app[METRICS].replayed_continuations.inc()
    output_schema = None
    if req.text and isinstance(req.text.format, FormatJSONSchema):
        output_schema = req.text.format.schema_
    tools, ignored_tools = tools_of(req)
    choice = tool_choice_of(req.tool_choice)
    plan = plan_tools(tools, choice or ToolChoice())
    if plan.forced is not None:
        # A forced call's reply is the call; text.format shapes text replies.
        output_schema = plan.forced.schema
    summary = (req.reasoning.summary or req.reasoning.generate_summary) if req.reasoning else None
    items = conversation_of(req)
    outputs = trailing_tool_outputs(items)
    echo = ResponseEcho(
        model=req.model,
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        previous_response_id=req.previous_response_id,
        store=keep,
        metadata=dict(req.metadata or {}),
        text={
            "format": {"type": "text"},
            **(req.text.model_dump(by_alias=True, exclude_none=True) if req.text else {}),
        },
        tools=[tool.model_dump(by_alias=True, exclude_none=True) for tool in req.tools or []],
        tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
        reasoning={
            "effort": None,
            "summary": None,
            **(req.reasoning.model_dump(exclude_none=True) if req.reasoning else {}),
        },
        reasoning_effort=req.reasoning.effort if req.reasoning else None,
        temperature=req.temperature,
        top_p=req.top_p,
        user=req.user,
        parallel_tool_calls=req.parallel_tool_calls is not False,
    )
    renderer = ResponseRenderer(echo, summaries=summary is not None)
    ignored = [*req.ignored_params(), *ignored_tools]
    if choice is None:
        ignored.append("tool_choice")  # a built-in tool's choice: none of those run here
    headers = ignored_params_headers(ignored, request)
    request[ACCESS].model = req.model
    limiters = [OutputLimiter((), req.max_output_tokens)]
    stream = bool(req.stream)
    # Claimed first: an adopted turn goes on from its own thread, so this
    # request's history (and its images) never reach Codex and are not
    # checked or fetched. Nothing between the claim and the adoption raises.
    parked = app[PENDING].claim(outputs, owner_of(request, "responses")) if outputs else None
    if parked is not None:
        for call_id, output in outputs.items():
            parked.resolve_tool_call(call_id, output)
        sessions_cm: Any = single_session(
            parked.adopted(request, endpoint="responses", stream=stream)
        )
    else:
        turn_request = await _turn_request(
            request,
            req,
            entry,
            items,
            plan.tools,
            output_schema,
            summary,
            continue_from,
            previous_body,
            replayed,
        )
        sessions_cm = open_sessions(request, [turn_request], endpoint="responses", stream=stream)
    async with sessions_cm as sessions:
        # Stored before the final event or body goes out: a client that
        # continues the moment it sees the end must find the response.
        persist = saver(request, renderer, sessions[0], input_items) if keep else None
        if req.stream:
            response, waiting = await _stream(
                request, sessions, limiters, renderer, headers, forced=plan.forced, persist=persist
            )
        else:
            async with overall_deadline(sessions):
                waiting = await drive(
                    sessions, limiters, _Sink(renderer, None, persist), forced=plan.forced
                )
            response = web.Response(
                body=orjson.dumps(renderer.response_object()),
                content_type="application/json",
                headers=headers,
            )
        park_waiting(app[PENDING], sessions, waiting)
    return response


async def _turn_request(
    request: web.Request,
    req: ResponseCreateRequest,
    entry: CatalogEntry,
    items: list[Item],
    tools: Sequence[ToolSpec],
    output_schema: dict[str, Any] | None,
    summary: str | None,
    continue_from: tuple[str, str] | None,
    previous_body: dict[str, Any] | None,
    replayed: list[Item] | None,
) -> TurnRequest:
    """The fresh turn of a request no parked turn took: images checked, history rebuilt
    (ahead of it the `replayed` conversation, when its thread is on another instance)."""
    app = request.app
    # Images are measured (and remote ones fetched) before any worker sees them.
    conversation = await with_checked_images(
        items, app[SETTINGS].images, param="input", fetches=app[IMAGE_FETCHES]
    )
    if req.previous_response_id and trailing_tool_outputs(conversation):
        # Tool results for a response whose turn is gone: continue from its
        # thread, where the model's function call already is.
        conversation = [item for item in conversation if not isinstance(item, HistoryToolCall)]
        if replayed is None and previous_body is not None and _was_forced(previous_body):
            # A forced call's thread holds the structured reply, not a call:
            # the call comes from the stored response, ahead of its results.
            conversation = _with_forced_calls(conversation, previous_body)
    if replayed is not None:
        conversation = [*replayed, *conversation]
    return build_turn_request(
        conversation,
        codex_model=entry.codex_model,
        instructions=req.instructions or None,
        tools=tools,
        effort=(req.reasoning.effort if req.reasoning else None) or entry.effort,
        # OpenAI returns a reasoning summary only when asked for one.
        reasoning_summary=summary or "none",
        output_schema=output_schema,
        param="input",
        persist=req.store is not False,
        continue_from=continue_from,
    )


class _Sink:
    """ChoiceSink over the renderer; writes its frames when streaming."""

    def __init__(
        self, renderer: ResponseRenderer, stream: SSEStream | None, persist: Persist | None = None
    ) -> None:
        self._renderer = renderer
        self._stream = stream
        self._persist = persist

    async def send(self, frames: list[Frame]) -> None:
        if self._stream is not None:
            for event_type, data in frames:
                await self._stream.event(event_type, data)

    async def text(self, index: int, text: str) -> None:
        await self.send(self._renderer.text(text))

    async def reasoning(self, index: int, delta: ReasoningDelta) -> None:
        await self.send(self._renderer.reasoning(delta.text, delta.item, delta.part))

    async def tool_call(self, index: int, call: ToolCall) -> None:
        await self.send(self._renderer.function_call(call.call_id, call.name, call.arguments))

    async def finish(self, index: int, reason: str, usage: Usage) -> None:
        if reason == "length":
            frames = self._renderer.incomplete(usage, "max_output_tokens")
        else:
            frames = self._renderer.complete(usage)
        if self._persist is not None:
            await self.flush()  # what the client may read already does not wait for the store
            await self._persist()
        await self.send(frames)

    async def keepalive(self) -> None:
        if self._stream is not None:
            await self._stream.keepalive()

    async def flush(self) -> None:
        if self._stream is not None:
            await self._stream.flush()


async def _stream(
    request: web.Request,
    sessions: list[TurnSession],
    limiters: list[OutputLimiter],
    renderer: ResponseRenderer,
    headers: dict[str, str],
    *,
    forced: ForcedCall | None = None,
    persist: Persist | None = None,
) -> tuple[web.StreamResponse, dict[int, list[ToolCall]]]:
    server = request.app[SETTINGS].server
    # A failure before any content is still a plain HTTP error.
    await hold_headers(sessions, server.stream_header_hold_s)
    stream = SSEStream(request, headers, write_timeout_s=server.sse_write_timeout_s)
    sink = _Sink(renderer, stream, persist)
    waiting: dict[int, list[ToolCall]] = {}
    try:
        await stream.open()
        try:
            async with overall_deadline(sessions):
                await sink.send(renderer.start())
                waiting = await drive(
                    sessions, limiters, sink, keepalive_s=server.sse_keepalive_s, forced=forced
                )
        except BridgeError as exc:
            await sink.send(renderer.fail(exc, None))
        await stream.end()
    except ClientGone as gone:
        # A deadline or failure that came first stays the request's outcome.
        if request[ACCESS].outcome == "ok":
            request[ACCESS].outcome = gone.outcome
    return await stream.close(), waiting
