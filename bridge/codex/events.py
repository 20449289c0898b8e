"""The bridge's own turn vocabulary: what a Codex turn produces, in protocol-neutral form.

Every dialect (v2 today, v1 for legacy Codex) produces these events; every
OpenAI endpoint translates them. Knows no JSON-RPC method names and no OpenAI
shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bridge.errors import BridgeError

FinishReason = Literal["stop", "length", "tool_calls", "interrupted"]


@dataclass(slots=True, frozen=True)
class TextDelta:
    """A piece of the assistant's reply text, in order."""

    text: str


@dataclass(slots=True, frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning summary (not part of the reply).

    A turn's summary comes in reasoning items (one per model call that
    reasoned), each made of parts (sections); `item` and `part` say where
    this piece belongs, so renderers can keep items and parts apart.
    """

    text: str
    item: str = ""
    part: int = 0


@dataclass(slots=True, frozen=True)
class Usage:
    """Token usage of the whole turn (summed over every model call it made)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    def minus(self, other: Usage) -> Usage:
        """What is left of this usage after `other` was already reported; never below zero."""
        return Usage(
            max(0, self.input_tokens - other.input_tokens),
            max(0, self.cached_input_tokens - other.cached_input_tokens),
            max(0, self.output_tokens - other.output_tokens),
            max(0, self.reasoning_tokens - other.reasoning_tokens),
            max(0, self.cache_write_tokens - other.cache_write_tokens),
        )


@dataclass(slots=True, frozen=True)
class ToolCall:
    """The model called a client-defined tool; the turn waits for its result."""

    call_id: str
    name: str
    arguments: str
    """JSON text, as OpenAI clients expect it."""
    usage: Usage = Usage()
    """The usage to report with the response this call ends (Codex counts nothing
    while a call is pending, so the dialect estimates it; see `bridge.codex.estimate`)."""


@dataclass(slots=True, frozen=True)
class Finished:
    """The turn ended normally. Always the last event of a successful turn."""

    reason: FinishReason
    usage: Usage


@dataclass(slots=True, frozen=True)
class Failed:
    """The turn ended in an error. Always the last event of a failed turn."""

    error: BridgeError
    usage: Usage


TurnEvent = TextDelta | ReasoningDelta | ToolCall | Finished | Failed
