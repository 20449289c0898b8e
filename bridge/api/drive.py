"""Runs an endpoint's choices to their end: events in, limits applied, text and finishes out.

Every endpoint hands its sessions (one per choice or prompt), one
`OutputLimiter` per choice and a `ChoiceSink` that renders its own wire
shape. A limit hit mid-stream interrupts that choice's turn; its finish is
reported when the turn has actually ended, with Codex's usage. The first
failed choice ends the whole request with its error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final, Protocol

from bridge.api.fanout import merged_events
from bridge.api.limits import OutputLimiter
from bridge.api.turns import TurnSession
from bridge.codex.events import Failed, Finished, TextDelta, Usage

# Codex finish reasons to OpenAI's; an interrupted turn the bridge did not
# stop for ended early on Codex's side.
FINISH_REASONS: Final = {
    "stop": "stop",
    "interrupted": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
}


class ChoiceSink(Protocol):
    async def text(self, index: int, text: str) -> None: ...
    async def finish(self, index: int, reason: str, usage: Usage) -> None: ...
    async def keepalive(self) -> None: ...


async def drive(
    sessions: Sequence[TurnSession],
    limiters: Sequence[OutputLimiter],
    sink: ChoiceSink,
    *,
    keepalive_s: float | None = None,
) -> None:
    """Raises the first choice's BridgeError; otherwise returns when every choice finished."""
    stopped: dict[int, str] = {}
    async for index, event in merged_events(sessions, keepalive_s=keepalive_s):
        if event is None:
            await sink.keepalive()
            continue
        limiter = limiters[index]
        if isinstance(event, TextDelta):
            if index in stopped:
                continue
            if not limiter.active:
                await sink.text(index, event.text)
                continue
            text, reason = limiter.feed(event.text)
            if text:
                await sink.text(index, text)
            if reason is not None:
                stopped[index] = reason
                await sessions[index].interrupt()
        elif isinstance(event, Finished):
            usage = event.usage
            reason = stopped.pop(index, None)
            if reason is None:
                tail = limiter.flush()
                if tail:
                    await sink.text(index, tail)
                reason = FINISH_REASONS[event.reason]
            elif usage.output_tokens == 0:
                # Codex reports no usage for a model call it cut short.
                usage = dataclasses.replace(usage, output_tokens=limiter.tokens)
            await sink.finish(index, reason, usage)
        elif isinstance(event, Failed):
            raise event.error
