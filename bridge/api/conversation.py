"""From an OpenAI conversation (any endpoint's messages, flattened to role + text) to a `TurnRequest`.

Leading system/developer messages become the instructions; later ones stay
in the history as developer messages; user and assistant messages keep
their roles; the last message must be the user's and becomes the turn's
input. Shared by chat completions, completions and responses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bridge.codex.turn import HistoryMessage, TurnRequest
from bridge.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Said:
    role: str  # system | developer | user | assistant
    text: str


def build_turn_request(
    conversation: Iterable[Said],
    *,
    codex_model: str | None,
    instructions: str | None = None,
    effort: str | None = None,
    output_schema: dict[str, Any] | None = None,
    param: str = "messages",
    persist: bool = False,
    continue_from: tuple[str, str] | None = None,
) -> TurnRequest:
    system: list[str] = [instructions] if instructions else []
    history: list[HistoryMessage] = []
    for said in conversation:
        if said.role in ("system", "developer"):
            if history:
                history.append(HistoryMessage("developer", said.text))
            else:
                system.append(said.text)
        elif said.role == "user":
            history.append(HistoryMessage("user", said.text))
        else:
            history.append(HistoryMessage("assistant", said.text))
    if not history or history[-1].role != "user":
        raise InvalidRequest(
            "The last message must have role 'user'.", param=param, code="invalid_value"
        )
    return TurnRequest(
        input=history[-1].text,
        model=codex_model,
        instructions="\n\n".join(system) if system else None,
        history=tuple(history[:-1]),
        effort=effort,
        output_schema=output_schema,
        persist=persist,
        continue_from=continue_from,
    )
