"""Stored responses over HTTP: read, list input items, delete, cancel, count input tokens.

`GET /v1/responses/{id}`, `GET /v1/responses/{id}/input_items` (OpenAI
cursor pagination), `DELETE /v1/responses/{id}` (the record, and its Codex
thread unless another response or a parked turn still uses it),
`POST /v1/responses/{id}/cancel` (only background responses can be
cancelled, and the bridge runs none: 400) and `POST /v1/responses/input_tokens`
(the bridge's tokenizer, `bridge.tokens`). Every lookup is scoped to the
caller's key: another key's response answers 404 exactly like a missing one.

Also builds what `POST /v1/responses` stores: the input items with ids, and
`saver`, which writes the finished response before its final event is sent.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from bridge.api.middleware import METRICS
from bridge.api.pending import PENDING
from bridge.api.responses_render import ResponseRenderer
from bridge.api.schemas import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputMessage,
    InputText,
    InputTokensRequest,
    OtherItem,
    OutputText,
    Refusal,
    ResponseCreateRequest,
)
from bridge.api.turns import TurnSession, caller_of
from bridge.api.validation import parse_json_body
from bridge.appkeys import CATALOG, STORE
from bridge.errors import InvalidRequest, NotFound, StoreUnavailable
from bridge.retention import RETENTION
from bridge.store import StoredResponse
from bridge.tokens import count_tokens

log = structlog.get_logger("bridge.stored_responses")

# OpenAI's page size bounds for input_items.
DEFAULT_PAGE_LIMIT: Final = 20
MAX_PAGE_LIMIT: Final = 100
# Items that only point at other items carry nothing to list.
_UNLISTED_ITEMS: Final = frozenset({"item_reference"})

Persist = Callable[[], Awaitable[None]]


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


# -- what POST /v1/responses stores ---------------------------------------------------


def _image_part(part: InputImage) -> dict[str, Any]:
    # data: URLs can be megabytes: the stored item keeps only remote URLs.
    url = part.image_url if part.image_url and not part.image_url.startswith("data:") else None
    return {
        "type": "input_image",
        "detail": part.detail or "auto",
        "image_url": url,
        "file_id": part.file_id,
    }


def _message_item(item: InputMessage) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    assistant = item.role == "assistant"
    parts = (
        [InputText(type="input_text", text=item.content)]
        if isinstance(item.content, str)
        else item.content
    )
    for part in parts:
        if isinstance(part, Refusal):
            content.append({"type": "refusal", "refusal": part.refusal})
        elif isinstance(part, InputText | OutputText):
            if assistant:
                content.append({"type": "output_text", "text": part.text, "annotations": []})
            else:
                content.append({"type": "input_text", "text": part.text})
        elif isinstance(part, InputImage):
            content.append(_image_part(part))
        else:
            content.append(part.model_dump(exclude_none=True))
    return {
        "id": item.id or _new_id("msg"),
        "type": "message",
        "role": item.role,
        "status": "completed",
        "content": content,
    }


def input_items_of(req: ResponseCreateRequest) -> list[dict[str, Any]]:
    """The request's input as OpenAI's `ResponseItem`s, each with an id, in input order."""
    if req.input is None:
        return []
    if isinstance(req.input, str):
        return [_message_item(InputMessage(role="user", content=req.input))]
    items: list[dict[str, Any]] = []
    for item in req.input:
        if isinstance(item, InputMessage):
            items.append(_message_item(item))
        elif isinstance(item, FunctionCallItem):
            items.append(
                {
                    "id": item.id or _new_id("fc"),
                    "type": "function_call",
                    "call_id": item.call_id,
                    "name": item.name,
                    "arguments": item.arguments,
                    "status": "completed",
                }
            )
        elif isinstance(item, FunctionCallOutputItem):
            items.append(
                {
                    "id": item.id or _new_id("fco"),
                    "type": "function_call_output",
                    "call_id": item.call_id,
                    "output": item.output,
                    "status": "completed",
                }
            )
        elif isinstance(item, OtherItem) and item.type not in _UNLISTED_ITEMS:
            dumped = item.model_dump()
            dumped.setdefault("id", _new_id("item"))
            items.append(dumped)
    return items


def saver(
    request: web.Request,
    renderer: ResponseRenderer,
    session: TurnSession,
    input_items: list[dict[str, Any]],
) -> Persist:
    """Writes the finished response, owned by the caller; called before its final event."""
    app = request.app
    owner = caller_of(request)

    async def persist() -> None:
        if renderer.status not in ("completed", "incomplete"):
            return
        thread_id, turn_id = session.thread_and_turn()
        record = StoredResponse(
            id=renderer.id,
            thread_id=thread_id,
            turn_id=turn_id,
            created_at=time.time(),
            body=renderer.response_object(),
            owner=owner,
            input_items=input_items,
        )
        try:
            await app[STORE].put(record)
        except (sqlite3.Error, OSError, StoreUnavailable) as exc:
            # The answer still goes out; only retrieval and continuation are lost.
            log.error("response not stored", response=renderer.id, error=repr(exc))
            return
        app[METRICS].stored_responses.inc()

    return persist


# -- handlers -------------------------------------------------------------------------


async def _owned(request: web.Request) -> StoredResponse:
    response_id = request.match_info["response_id"]
    record = await request.app[STORE].get(response_id, caller_of(request))
    if record is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return record


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def get_response(request: web.Request) -> web.Response:
    return _json((await _owned(request)).body)


async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    app = request.app
    record = await app[STORE].delete(response_id, caller_of(request))
    if record is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    thread_id = record.thread_id
    if thread_id is not None and thread_id in app[PENDING].thread_ids():
        # A parked turn still runs on it; the thread goes with the last response on it.
        thread_id = None
    await app[RETENTION].forget_thread(thread_id)
    return _json({"id": response_id, "object": "response", "deleted": True})


async def cancel_response(request: web.Request) -> web.Response:
    record = await _owned(request)
    raise InvalidRequest(
        f"Response '{record.id}' cannot be cancelled: only responses created with "
        "background=true can be cancelled, and this bridge runs no background responses.",
        param="response_id",
    )


def _page_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"Invalid type for 'limit': expected an integer, but got '{raw}' instead.",
            param="limit",
            code="invalid_type",
        ) from None
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidRequest(
            f"Invalid 'limit': expected a value between 1 and {MAX_PAGE_LIMIT}, got {limit}.",
            param="limit",
            code="integer_above_max_value" if limit > MAX_PAGE_LIMIT else "integer_below_min_value",
        )
    return limit


def _position(items: list[dict[str, Any]], item_id: str, param: str) -> int:
    for index, item in enumerate(items):
        if item.get("id") == item_id:
            return index
    raise InvalidRequest(
        f"No input item with id '{item_id}' in this response.", param=param, code="invalid_value"
    )


async def list_input_items(request: web.Request) -> web.Response:
    """OpenAI's cursor page: newest first by default; `after`/`before` are item ids."""
    record = await _owned(request)
    query = request.query
    limit = _page_limit(query.get("limit"))
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(
            f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.",
            param="order",
            code="invalid_value",
        )
    # `include` asks for fields the stored items either have or cannot have: nothing to do.
    items = list(record.input_items)
    if order == "desc":
        items.reverse()
    start, end = 0, len(items)
    if "after" in query:
        start = _position(items, query["after"], "after") + 1
    if "before" in query:
        end = _position(items, query["before"], "before")
    window = items[start:end]
    page = window[:limit]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(window) > limit,
        }
    )


def _texts(value: Any) -> Iterator[str]:
    """Every string a model would read in an item: text, refusals, names, arguments, outputs."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for element in value:
            yield from _texts(element)
    elif isinstance(value, dict):
        for key in ("text", "refusal", "name", "arguments", "output", "content", "summary"):
            if key in value:
                yield from _texts(value[key])


async def count_input_tokens(request: web.Request) -> web.Response:
    """The input a `POST /v1/responses` with this body would send, in tokens.

    Counted with the bridge's tokenizer over instructions, input items, the
    previous response's input and output, tool definitions and the text
    format's schema; Codex's own framing and images are not included.
    """
    req = parse_json_body(await request.read(), InputTokensRequest)
    app = request.app
    if req.model is not None:
        app[CATALOG].resolve(req.model)
    texts: list[str] = []
    if req.previous_response_id:
        previous = await app[STORE].get(req.previous_response_id, caller_of(request))
        if previous is None:
            raise NotFound(
                f"Previous response with id '{req.previous_response_id}' not found.",
                param="previous_response_id",
            )
        texts.extend(_texts(previous.input_items))
        texts.extend(_texts(previous.body.get("output", [])))
    if req.instructions:
        texts.append(req.instructions)
    texts.extend(_texts(input_items_of(req)))
    for tool in req.tools or []:
        texts.append(orjson.dumps(tool.model_dump(by_alias=True, exclude_none=True)).decode())
    if req.text is not None and req.text.format is not None:
        texts.append(orjson.dumps(req.text.format.model_dump(by_alias=True)).decode())
    total = sum(count_tokens(text) for text in texts)
    return _json({"object": "response.input_tokens", "input_tokens": total})
