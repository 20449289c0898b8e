"""The plumbing between a request and its turns: how a failed fan-out lets go of its
choices, which choice's error a held stream reports, and cancellation during cleanup.

Stand-in sessions replace `TurnSession` here: what is tested is the order of
events between tasks, which a real turn cannot be made to produce on demand.
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from bridge.api.drive import drive
from bridge.api.limits import OutputLimiter
from bridge.api.turns import TurnSession, _bounded_cleanup, hold_headers
from bridge.codex.events import (
    Failed,
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    TurnEvent,
    Usage,
)
from bridge.errors import BridgeError, RateLimited, UpstreamFailed

WAIT_S = 5.0


class _Sink:
    async def text(self, index: int, text: str) -> None:
        pass

    async def reasoning(self, index: int, delta: ReasoningDelta) -> None:
        pass

    async def tool_call(self, index: int, call: ToolCall) -> None:
        pass

    async def finish(self, index: int, reason: str, usage: Usage) -> None:
        pass

    async def keepalive(self) -> None:
        pass

    async def flush(self) -> None:
        pass


class _FailingChoice:
    async def next_event(self, *, keepalive_s: float | None = None) -> TurnEvent | None:
        return Failed(UpstreamFailed("choice 0 failed"), Usage())


class _RunningChoice:
    """A choice whose turn runs on; remembers whether its reader let go of it."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.released = False

    async def next_event(self, *, keepalive_s: float | None = None) -> TurnEvent | None:
        self.reading.set()
        try:
            await asyncio.Event().wait()  # the turn's next event never comes here
        finally:
            self.released = True
        raise AssertionError("unreachable")


async def test_a_failed_fanout_stops_reading_its_other_choices_before_they_clean_up() -> None:
    running = _RunningChoice()
    sessions = cast(list[TurnSession], [_FailingChoice(), running])
    limiters = [OutputLimiter((), None), OutputLimiter((), None)]
    with pytest.raises(UpstreamFailed):
        # Awaited directly: no loop turn between its end and the checks below.
        await drive(sessions, limiters, _Sink())
    # By the time the error leaves `drive` (and the sessions' cleanup runs),
    # nobody reads choice 1 any more: its cleanup gets the turn's final event.
    assert running.reading.is_set()
    assert running.released


class _HeldChoice:
    def __init__(self, error: BridgeError, after: asyncio.Event | None, then: asyncio.Event):
        self._error = error
        self._after = after
        self._then = then

    async def hold_for_content(self, hold_s: float) -> None:
        if self._after is not None:
            await self._after.wait()
        self._then.set()
        raise self._error


async def test_a_held_stream_reports_the_choice_that_failed_first_not_the_first_listed() -> None:
    first_failed, second_failed = asyncio.Event(), asyncio.Event()
    # Choice 1 fails first; choice 0 fails right after, before the hold looks.
    late = _HeldChoice(RateLimited("choice 0"), first_failed, second_failed)
    early = _HeldChoice(UpstreamFailed("choice 1"), None, first_failed)
    sessions = cast(list[TurnSession], [late, early])
    with pytest.raises(BridgeError) as raised:
        await asyncio.wait_for(hold_headers(sessions, WAIT_S), WAIT_S)
    assert second_failed.is_set()  # both had failed: the order decides
    assert str(raised.value) == "choice 1"


async def test_a_second_cancel_during_the_bounded_cleanup_stops_the_handler() -> None:
    working, cleaning, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()
    carried_on = False

    async def cleanup() -> None:
        cleaning.set()
        await finish.wait()

    async def handler() -> None:
        nonlocal carried_on
        try:
            working.set()
            await asyncio.Event().wait()  # the request's work, until the client leaves
        except asyncio.CancelledError:
            await _bounded_cleanup(cleanup())
            carried_on = True  # what a handler that lost the second cancel would do
            raise

    task = asyncio.create_task(handler())
    await asyncio.wait_for(working.wait(), WAIT_S)
    task.cancel()  # the client left: the handler cleans up
    await asyncio.wait_for(cleaning.wait(), WAIT_S)
    task.cancel()  # shutdown's grace is over: stop now
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT_S)
    assert not carried_on
    finish.set()


class _ReadyThenWaitingChoice:
    """A choice with two events at hand; its third (the end) has to be waited for."""

    def __init__(self, log: list[str]) -> None:
        self._log = log
        self._ready: list[TurnEvent] = [TextDelta("a"), TextDelta("b")]

    def has_event(self) -> bool:
        return bool(self._ready)

    async def next_event(self, *, keepalive_s: float | None = None) -> TurnEvent | None:
        if self._ready:
            return self._ready.pop(0)
        self._log.append("wait")
        return Finished("stop", Usage())


class _LoggingSink(_Sink):
    def __init__(self, log: list[str]) -> None:
        self._log = log

    async def text(self, index: int, text: str) -> None:
        self._log.append(f"text {text}")

    async def finish(self, index: int, reason: str, usage: Usage) -> None:
        self._log.append("finish")

    async def flush(self) -> None:
        self._log.append("flush")


async def test_drive_flushes_the_sink_only_before_waiting_when_events_are_ready_together() -> None:
    log: list[str] = []
    sessions = cast(list[TurnSession], [_ReadyThenWaitingChoice(log)])
    await drive(sessions, [OutputLimiter((), None)], _LoggingSink(log))
    # Both deltas at hand go into one write; the flush comes before the wait, not per delta.
    assert log == ["text a", "text b", "flush", "wait", "finish"]
