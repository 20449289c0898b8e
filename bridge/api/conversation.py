"""From an OpenAI conversation (any endpoint's items, flattened) to a `TurnRequest`.

Leading system/developer messages become the instructions; later ones stay
in the history as developer messages; user and assistant messages keep
their roles; tool calls and their outputs stay in place. The conversation
must end with the user's message (the turn's input) or with tool outputs
(the turn continues from them). Shared by every endpoint.

Also what every endpoint checks before Codex sees a request, so a client's
mistake is a 400 naming it rather than Codex's rejection as a 5xx: the
turn's input length, tool names (unique) and schema depth, and the images
(count here; each image's bytes in `bridge.api.images`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from bridge.api.images import (
    MAX_FETCHES_PER_REQUEST,
    ByteBudget,
    RemoteFetches,
    checked_data_url,
    fetch_image,
)
from bridge.codex.turn import (
    HistoryItem,
    HistoryMessage,
    HistoryToolCall,
    HistoryToolOutput,
    ToolSpec,
    TurnRequest,
)
from bridge.config import ImageSettings
from bridge.errors import InvalidRequest

# Codex refuses a turn whose input text is longer (turn/start answers
# -32602 `input_too_large`); checked here so the client gets OpenAI's 400.
MAX_INPUT_CHARS: Final = 1_048_576
# JSON nesting allowed in a tool's parameters or an output schema. Codex
# parses each request with serde_json (recursion limit 128) and the bridge's
# encoder gives up at 254 levels: this leaves room for the levels around it.
MAX_SCHEMA_DEPTH: Final = 64


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image of the conversation: its URL, where the client put it, and whether it was checked."""

    url: str
    param: str
    checked: bool = False


@dataclass(frozen=True, slots=True)
class Said:
    role: str  # system | developer | user | assistant
    text: str
    images: tuple[ImageRef, ...] = ()


# Images reach the model by URL; a path or file: URL would make the worker
# read the bridge host's disk on a caller's behalf.
IMAGE_SCHEMES: Final = ("https://", "http://", "data:image/")


def image_url(url: str, param: str) -> ImageRef:
    if not url[:16].lower().startswith(IMAGE_SCHEMES):
        raise InvalidRequest(
            "Image URLs must be http(s) or data:image/ URLs; local files are not accepted.",
            param=param,
            code="invalid_image_url",
        )
    return ImageRef(url, param)


Item = Said | HistoryToolCall | HistoryToolOutput


async def with_checked_images(
    items: Sequence[Item],
    settings: ImageSettings,
    *,
    param: str,
    fetches: RemoteFetches | None,
) -> list[Item]:
    """The conversation with every image checked: count, then each image's bytes.

    `data:` URLs are measured; `http(s)` URLs are fetched and become `data:`
    URLs: up to MAX_FETCHES_PER_REQUEST at once, each in one of the
    bridge-wide `fetches` slots, all of them within one `images.max_total_bytes`
    budget. The first failure is the request's 400 (or 503 when no fetch
    slot frees up in time).
    """
    refs = [ref for item in items if isinstance(item, Said) for ref in item.images]
    if not refs:
        return list(items)
    if len(refs) > settings.max_per_request:
        raise InvalidRequest(
            f"This request carries {len(refs)} images; at most {settings.max_per_request} "
            "are accepted per request.",
            param=param,
            code="too_many_images",
        )
    budget = ByteBudget(settings.max_total_bytes)
    per_request = asyncio.Semaphore(MAX_FETCHES_PER_REQUEST)

    async def fetch(ref: ImageRef) -> str:
        async with per_request:
            return await fetch_image(ref.url, ref.param, settings, fetches=fetches, budget=budget)

    tasks: list[asyncio.Task[str]] = []
    try:
        async with asyncio.TaskGroup() as group:
            for ref in refs:
                check = (
                    checked_data_url(ref.url, ref.param, settings)
                    if ref.url[:5].lower() == "data:"
                    else fetch(ref)
                )
                tasks.append(group.create_task(check))
    except BaseExceptionGroup as group_error:
        raise _first(group_error) from None
    urls = iter(task.result() for task in tasks)
    checked: list[Item] = []
    for item in items:
        if isinstance(item, Said) and item.images:
            images = tuple(ImageRef(next(urls), ref.param, checked=True) for ref in item.images)
            item = replace(item, images=images)
        checked.append(item)
    return checked


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of a task group, unwrapped (they are the tasks' own 400s)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def check_tools(tools: Sequence[ToolSpec]) -> None:
    """Tool names unique, parameter schemas not nested too deep (Codex refuses both)."""
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise InvalidRequest(
                f"Duplicate tool name '{tool.name}': each tool needs a unique name.",
                param="tools",
                code="invalid_value",
            )
        seen.add(tool.name)
        if _too_deep(tool.parameters):
            raise InvalidRequest(
                f"Invalid schema for function '{tool.name}': its parameters are nested more "
                f"than {MAX_SCHEMA_DEPTH} levels deep.",
                param="tools",
                code="invalid_function_parameters",
            )


def check_schema(schema: dict[str, Any] | None, *, param: str) -> None:
    """An output schema not nested too deep."""
    if schema is not None and _too_deep(schema):
        raise InvalidRequest(
            f"Invalid schema: nested more than {MAX_SCHEMA_DEPTH} levels deep.",
            param=param,
            code="invalid_value",
        )


def _too_deep(value: object) -> bool:
    """Whether JSON `value` nests deeper than MAX_SCHEMA_DEPTH; iterative, so any depth is safe."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            return True
        if isinstance(node, dict):
            stack.extend(
                (child, depth + 1) for child in node.values() if isinstance(child, dict | list)
            )
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return False


def build_turn_request(
    conversation: Iterable[Item],
    *,
    codex_model: str | None,
    instructions: str | None = None,
    effort: str | None = None,
    reasoning_summary: str | None = None,
    output_schema: dict[str, Any] | None = None,
    param: str = "messages",
    tools: Sequence[ToolSpec] = (),
    persist: bool = False,
    continue_from: tuple[str, str] | None = None,
) -> TurnRequest:
    system: list[str] = [instructions] if instructions else []
    history: list[HistoryItem] = []
    for item in conversation:
        if not isinstance(item, Said):
            history.append(item)
        elif item.role in ("system", "developer"):
            if history:
                history.append(HistoryMessage("developer", item.text))
            else:
                system.append(item.text)
        elif item.role == "user":
            if not all(ref.checked for ref in item.images):
                # with_checked_images must run first: no unchecked image reaches Codex.
                raise AssertionError("unchecked image in the conversation")
            urls = tuple(ref.url for ref in item.images)
            history.append(HistoryMessage("user", item.text, urls))
        elif item.text:
            history.append(HistoryMessage("assistant", item.text))
    last = history[-1] if history else None
    images: tuple[str, ...] = ()
    if isinstance(last, HistoryMessage) and last.role == "user":
        new_input: str | None = last.text
        images = last.images
        history.pop()
    elif isinstance(last, HistoryToolOutput):
        new_input = None
    elif continue_from is not None and not history:
        raise InvalidRequest("Input must not be empty.", param=param, code="empty_array")
    else:
        raise InvalidRequest(
            "The conversation must end with a user message or tool results.",
            param=param,
            code="invalid_value",
        )
    if new_input is not None and len(new_input) > MAX_INPUT_CHARS:
        raise InvalidRequest(
            f"Invalid '{param}': the last user message is {len(new_input)} characters long; "
            f"Codex accepts at most {MAX_INPUT_CHARS} characters of input per turn.",
            param=param,
            code="string_above_max_length",
        )
    if output_schema is not None:
        schema_param = (
            "response_format.json_schema.schema" if param == "messages" else "text.format.schema"
        )
        check_schema(output_schema, param=schema_param)
    check_tools(tools)
    return TurnRequest(
        input=new_input,
        input_images=images,
        model=codex_model,
        instructions="\n\n".join(system) if system else None,
        history=tuple(history),
        effort=effort,
        reasoning_summary=reasoning_summary,
        output_schema=output_schema,
        tools=tuple(tools),
        persist=persist,
        continue_from=continue_from,
    )
