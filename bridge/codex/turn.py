"""What the HTTP layer asks of Codex (`TurnRequest`) and what it gets back (`Turn`).

A `Turn` is an async stream of `TurnEvent`s that can be interrupted. The
request is protocol-neutral: roles and texts, not JSON-RPC items. Knows no
OpenAI shapes and no JSON-RPC method names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bridge.codex.events import TurnEvent

HistoryRole = Literal["user", "assistant", "developer"]


@dataclass(slots=True, frozen=True)
class HistoryMessage:
    """One earlier message of the conversation, replayed into the thread with its role."""

    role: HistoryRole
    text: str
    images: tuple[str, ...] = ()
    """Image URLs (http(s) or data:) attached to the message."""


@dataclass(slots=True, frozen=True)
class HistoryToolCall:
    """An earlier call of a client tool by the model."""

    call_id: str
    name: str
    arguments: str


@dataclass(slots=True, frozen=True)
class HistoryToolOutput:
    """The client's result for an earlier tool call."""

    call_id: str
    output: str


HistoryItem = HistoryMessage | HistoryToolCall | HistoryToolOutput


@dataclass(slots=True, frozen=True)
class ToolSpec:
    """A client-defined function the model may call; the client runs it."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(slots=True, frozen=True)
class TurnRequest:
    """One turn to run on a fresh Codex thread."""

    input: str | None
    """The new user message; None when the turn continues from tool outputs in the history."""
    input_images: tuple[str, ...] = ()
    model: str | None = None
    """Codex model id; None lets the worker's configured model answer."""
    instructions: str | None = None
    """The client's system/developer text, joined in order; None when it sent none."""
    history: tuple[HistoryItem, ...] = ()
    """Prior conversation, oldest first, without the new input."""
    effort: str | None = None
    reasoning_summary: str | None = None
    """"auto" | "concise" | "detailed" | "none"; None leaves Codex's configured default."""
    output_schema: dict[str, Any] | None = None
    tools: tuple[ToolSpec, ...] = ()
    persist: bool = False
    """Keep the thread on disk so a later request can continue it."""
    continue_from: tuple[str, str] | None = None
    """(thread id, turn id) of a stored response: fork that thread instead of starting one."""
    on_thread: str | None = None
    """An idle ephemeral thread of the leased worker that already holds exactly `history`
    (conversation affinity, `bridge.codex.affinity`): the turn runs on it, with no thread
    start and no replay; if Codex no longer has it, the turn starts cold after all."""


@dataclass(frozen=True, slots=True)
class TurnLimits:
    """Deadlines for one turn: to the first reply text, between events, and overall."""

    first_token_s: float
    idle_s: float
    deadline_s: float


class Turn(Protocol):
    """A running turn: events until one `Finished` or `Failed`, then nothing more."""

    thread_id: str
    turn_id: str | None
    backlog_high_water: int
    """Most events that ever waited for the consumer at once (bounded by the worker's
    `max_queued_events`; past it the turn fails)."""

    async def next_event(self) -> TurnEvent:
        """The next event. Cancellation-safe: a timeout around it loses nothing."""
        ...

    def has_event(self) -> bool:
        """Whether `next_event` would return at once, without waiting (never waits itself)."""
        ...

    async def interrupt(self) -> None:
        """Ask Codex to stop the turn; its events then end with Finished("interrupted")."""
        ...

    def resolve_tool_call(self, call_id: str, output: str, *, success: bool = True) -> bool:
        """Answer a pending client tool call; False if the turn is not waiting for it."""
        ...

    def keep_thread(self, reply_text: str) -> bool:
        """Keep the thread loaded after `aclose` for the conversation's next turn.

        Only when the turn completed by itself with exactly one reply message
        whose text is `reply_text` (what the client received) and nothing else
        (no tool call): then the thread holds what the client will re-send.
        False (and the thread is closed as usual) otherwise.
        """
        ...

    async def aclose(self) -> None:
        """Release the turn's resources (thread subscription unless kept); idempotent."""
        ...
