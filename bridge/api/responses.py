"""`POST /v1/responses` and `GET /v1/responses/{id}`: the Responses API over Codex turns.

Input items become a conversation (`bridge.api.conversation`), the turn runs
in a `TurnSession`, and `ResponseRenderer` turns its events into the
`response` object or the typed SSE event sequence. With `store` (OpenAI's
default) the response is saved with its Codex thread, and a later
`previous_response_id` forks that thread so nothing is re-sent.
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson
from aiohttp import web

from bridge.api.chat import park_waiting, single_session, trailing_tool_outputs
from bridge.api.conversation import Item, Said, build_turn_request, image_url, tool_choice_hint
from bridge.api.drive import drive
from bridge.api.fanout import open_sessions
from bridge.api.limits import OutputLimiter
from bridge.api.middleware import ACCESS
from bridge.api.pending import PENDING
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
from bridge.api.turns import TurnSession
from bridge.api.validation import ignored_params_headers, parse_json_body
from bridge.appkeys import CATALOG, SETTINGS, STORE
from bridge.codex.events import ToolCall, Usage
from bridge.codex.turn import HistoryToolCall, HistoryToolOutput, ToolSpec
from bridge.errors import BridgeError, InvalidRequest, NotFound
from bridge.store import StoredResponse

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
            images: list[str] = []
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


def tools_of(req: ResponseCreateRequest) -> tuple[list[ToolSpec], str | None, list[str]]:
    """Function tools for Codex, a tool_choice hint, and the built-in tool types ignored.

    Built-in tool types (web_search, namespace, ...) are ignored and reported,
    not refused: Codex CLI sends them when it uses the bridge as its provider.
    """
    if not req.tools or req.tool_choice == "none":
        return [], None, []
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
    choice = req.tool_choice
    named = str(choice["name"]) if isinstance(choice, dict) and choice.get("name") else None
    return specs, tool_choice_hint(choice, named), ignored


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
    store = app[STORE]
    keep = req.store is not False
    continue_from = None
    if req.previous_response_id:
        previous = await store.get(req.previous_response_id)
        if previous is None or previous.thread_id is None or previous.turn_id is None:
            raise NotFound(
                f"Previous response with id '{req.previous_response_id}' not found.",
                param="previous_response_id",
            )
        continue_from = (previous.thread_id, previous.turn_id)
    output_schema = None
    if req.text and isinstance(req.text.format, FormatJSONSchema):
        output_schema = req.text.format.schema_
    tools, hint, ignored_tools = tools_of(req)
    conversation = conversation_of(req)
    outputs = trailing_tool_outputs(conversation)
    parked = app[PENDING].claim(outputs) if outputs else None
    if parked is None and req.previous_response_id and outputs:
        # Tool results for a response whose turn is gone: continue from its
        # thread, where the model's function call already is.
        conversation = [item for item in conversation if not isinstance(item, HistoryToolCall)]
    instructions = "\n\n".join(filter(None, [req.instructions, hint])) or None
    turn_request = build_turn_request(
        conversation,
        codex_model=entry.codex_model,
        instructions=instructions,
        tools=tools,
        effort=(req.reasoning.effort if req.reasoning else None) or entry.effort,
        output_schema=output_schema,
        param="input",
        persist=keep,
        continue_from=continue_from,
    )
    echo = ResponseEcho(
        model=req.model,
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        previous_response_id=req.previous_response_id,
        store=keep,
        metadata=dict(req.metadata or {}),
        text=req.text.model_dump(by_alias=True, exclude_none=True)
        if req.text and req.text.format
        else {"format": {"type": "text"}},
        reasoning_effort=req.reasoning.effort if req.reasoning else None,
        temperature=req.temperature,
        top_p=req.top_p,
        user=req.user,
        parallel_tool_calls=req.parallel_tool_calls is not False,
    )
    renderer = ResponseRenderer(echo)
    ignored = [*req.ignored_params(), *ignored_tools]
    if req.tool_choice not in (None, "auto", "none"):
        ignored.append("tool_choice")  # asked of the model, not enforced
    headers = ignored_params_headers(ignored)
    request[ACCESS].model = req.model
    limiters = [OutputLimiter((), req.max_output_tokens)]
    stream = bool(req.stream)
    if parked is not None:
        for call_id, output in outputs.items():
            parked.resolve_tool_call(call_id, output)
        sessions_cm: Any = single_session(
            parked.adopted(request, endpoint="responses", stream=stream)
        )
    else:
        sessions_cm = open_sessions(request, [turn_request], endpoint="responses", stream=stream)
    async with sessions_cm as sessions:
        if req.stream:
            response, waiting = await _stream(request, sessions, limiters, renderer, headers)
        else:
            waiting = await drive(sessions, limiters, _Sink(renderer, None))
            response = web.Response(
                body=orjson.dumps(renderer.response_object()),
                content_type="application/json",
                headers=headers,
            )
        thread_id, turn_id = sessions[0].thread_and_turn()
        park_waiting(app[PENDING], sessions, waiting)
    if keep and renderer.status in ("completed", "incomplete"):
        await store.put(
            StoredResponse(
                id=renderer.id,
                thread_id=thread_id,
                turn_id=turn_id,
                created_at=time.time(),
                body=renderer.response_object(),
            )
        )
    return response


class _Sink:
    """ChoiceSink over the renderer; writes its frames when streaming."""

    def __init__(self, renderer: ResponseRenderer, stream: SSEStream | None) -> None:
        self._renderer = renderer
        self._stream = stream

    async def send(self, frames: list[Frame]) -> None:
        if self._stream is not None:
            for event_type, data in frames:
                await self._stream.event(event_type, data)

    async def text(self, index: int, text: str) -> None:
        await self.send(self._renderer.text(text))

    async def tool_call(self, index: int, call: ToolCall) -> None:
        await self.send(self._renderer.function_call(call.call_id, call.name, call.arguments))

    async def finish(self, index: int, reason: str, usage: Usage) -> None:
        if reason == "length":
            await self.send(self._renderer.incomplete(usage, "max_output_tokens"))
        else:
            await self.send(self._renderer.complete(usage))

    async def keepalive(self) -> None:
        if self._stream is not None:
            await self._stream.keepalive()


async def _stream(
    request: web.Request,
    sessions: list[TurnSession],
    limiters: list[OutputLimiter],
    renderer: ResponseRenderer,
    headers: dict[str, str],
) -> tuple[web.StreamResponse, dict[int, list[ToolCall]]]:
    stream = SSEStream(request, headers)
    await stream.open()
    sink = _Sink(renderer, stream)
    waiting: dict[int, list[ToolCall]] = {}
    try:
        await sink.send(renderer.start())
        try:
            waiting = await drive(
                sessions, limiters, sink, keepalive_s=request.app[SETTINGS].server.sse_keepalive_s
            )
        except BridgeError as exc:
            await sink.send(renderer.fail(exc, None))
    except ClientGone:
        request[ACCESS].outcome = "client_disconnected"
    return await stream.close(), waiting


async def get_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    record = await request.app[STORE].get(response_id)
    if record is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    body: dict[str, Any] = record.body
    return web.Response(body=orjson.dumps(body), content_type="application/json")
