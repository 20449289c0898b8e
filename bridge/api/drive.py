"""Runs an endpoint's choices to their end: events in, limits applied, text and finishes out.

Every endpoint hands its sessions (one per choice or prompt), one
`OutputLimiter` per choice and a `ChoiceSink` that renders its own wire
shape. A limit hit mid-stream interrupts that choice's turn; its finish is
reported when the turn has actually ended, with Codex's usage, except that
`output_tokens` then counts the text the client received. Reasoning summaries
pass through untouched (limits apply to the reply only). With a forced tool
call (`bridge.api.forced`) the reply text is held back and becomes the call.
The first failed choice ends the whole request with its error.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Final, Protocol

from bridge.api.fanout import merged_events
from bridge.api.forced import ForcedCall
from bridge.api.limits import OutputLimiter
from bridge.api.turns import TurnSession
from bridge.codex.events import Failed, Finished, ReasoningDelta, TextDelta, ToolCall, Usage

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
    async def reasoning(self, index: int, delta: ReasoningDelta) -> None: ...
    async def tool_call(self, index: int, call: ToolCall) -> None: ...
    async def finish(self, index: int, reason: str, usage: Usage) -> None: ...
    async def keepalive(self) -> None: ...
    async def flush(self) -> None:
        """Sends what the sink buffered; called before waiting for an event that is not there yet."""
        ...


async def drive(
    sessions: Sequence[TurnSession],
    limiters: Sequence[OutputLimiter],
    sink: ChoiceSink,
    *,
    keepalive_s: float | None = None,
    forced: ForcedCall | None = None,
) -> dict[int, list[ToolCall]]:
    """Runs until every choice finished; returns the tool calls its choices are waiting on.

    Raises the first failed choice's BridgeError.
    """
    stopped: dict[int, str] = {}
    waiting: dict[int, list[ToolCall]] = {}
    held: dict[int, list[str]] = {}
    open_choices = len(sessions)
    # Closed on the way out (a failed choice raises here), so its per-choice
    # readers stop before the sessions clean up: a reader still running
    # would swallow the final event each cleanup waits for.
    merged = merged_events(sessions, keepalive_s=keepalive_s, on_idle=sink.flush)
    async with contextlib.aclosing(merged) as events:
        async for index, event in events:
            if event is None:
                await sink.keepalive()
                continue
            limiter = limiters[index]
            if isinstance(event, TextDelta):
                if index in stopped:
                    continue
                if forced is not None:
                    held.setdefault(index, []).append(event.text)
                    if limiter.active and limiter.feed(event.text)[1] is not None:
                        stopped[index] = "length"
                        await _interrupt(sink, sessions[index])
                    continue
                if not limiter.active:
                    await sink.text(index, event.text)
                    continue
                text, reason = limiter.feed(event.text)
                if text:
                    await sink.text(index, text)
                if reason is not None:
                    stopped[index] = reason
                    await _interrupt(sink, sessions[index])
            elif isinstance(event, ReasoningDelta):
                await sink.reasoning(index, event)
            elif isinstance(event, Finished):
                usage = event.usage
                reason = stopped.pop(index, None)
                if reason is not None:
                    # The bridge cut the reply: count what the client received,
                    # whatever Codex counted for the model call it interrupted.
                    usage = dataclasses.replace(
                        usage, output_tokens=limiter.tokens, reasoning_tokens=0
                    )
                elif forced is not None and event.reason == "stop":
                    call = forced.to_call("".join(held.pop(index, [])), usage)
                    await sink.tool_call(index, call)
                    reason = "tool_calls"
                else:
                    tail = limiter.flush()
                    if tail and forced is None:
                        await sink.text(index, tail)
                    reason = FINISH_REASONS[event.reason]
                await sink.finish(index, reason, usage)
                open_choices -= 1
            elif isinstance(event, ToolCall):
                # Codex asks for one client tool at a time and blocks until it is
                # answered, so this response ends here (at most one call per
                # response: parallel_tool_calls=false holds); the turn stays parked.
                waiting.setdefault(index, []).append(event)
                await sink.tool_call(index, event)
                await sink.finish(index, "tool_calls", event.usage)
                open_choices -= 1
            elif isinstance(event, Failed):
                raise event.error
            if open_choices == 0:
                break
    return waiting


async def _interrupt(sink: ChoiceSink, session: TurnSession) -> None:
    """Cuts a reply short; what the client may read goes out before the interrupt's round trip."""
    await sink.flush()
    await session.interrupt()
