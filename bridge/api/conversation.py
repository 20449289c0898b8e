"""From an OpenAI conversation (any endpoint's items, flattened) to a `TurnRequest`.

Leading system/developer messages become the instructions; later ones stay
in the history as developer messages; user and assistant messages keep
their roles; tool calls and their outputs stay in place. The conversation
must end with the user's message (the turn's input) or with tool outputs
(the turn continues from them). Shared by every endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bridge.codex.turn import (
    HistoryItem,
    HistoryMessage,
    HistoryToolCall,
    HistoryToolOutput,
    ToolSpec,
    TurnRequest,
)
from bridge.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Said:
    role: str  # system | developer | user | assistant
    text: str
    images: tuple[str, ...] = ()


# Images reach the model by URL; a path or file: URL would make the worker
# read the bridge host's disk on a caller's behalf.
IMAGE_SCHEMES: Final = ("https://", "http://", "data:image/")


def image_url(url: str, param: str) -> str:
    if not url.startswith(IMAGE_SCHEMES):
        raise InvalidRequest(
            "Image URLs must be http(s) or data:image/ URLs; local files are not accepted.",
            param=param,
            code="invalid_image_url",
        )
    return url


Item = Said | HistoryToolCall | HistoryToolOutput


def tool_choice_hint(choice: object, named: str | None) -> str | None:
    """Codex cannot force a tool call: a `required` or named tool_choice is asked for in words."""
    if named:
        return f"Call the function `{named}` before answering."
    if choice == "required":
        return "Call one of the available functions before answering."
    return None


def build_turn_request(
    conversation: Iterable[Item],
    *,
    codex_model: str | None,
    instructions: str | None = None,
    effort: str | None = None,
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
            history.append(HistoryMessage("user", item.text, item.images))
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
    return TurnRequest(
        input=new_input,
        input_images=images,
        model=codex_model,
        instructions="\n\n".join(system) if system else None,
        history=tuple(history),
        effort=effort,
        output_schema=output_schema,
        tools=tuple(tools),
        persist=persist,
        continue_from=continue_from,
    )
