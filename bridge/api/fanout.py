"""Several turns as one request: `n` choices, or one choice per legacy prompt.

`open_sessions` refuses (400) a count that the pool or the caller's key can
never run at once, then admits every turn (key slot and worker slot) before
it starts any, so no billed turn runs while the others still wait, and
admission errors are plain HTTP errors before the first byte. The key slots
and then the worker slots are each taken in one step, all or none
(`KeyLimits.hold(count=n)`, `WorkerPool.take_slots`), so a fan-out never
holds some slots while it waits for the rest, and one within the
advertised capacity is admitted at once on an idle pool, whatever the
workers' adaptive limits. The queue timeout bounds any wait (429).
`merged_events` then yields `(choice index, event)` pairs as they come,
with `None` events as keepalive ticks, and awaits `on_idle` (the stream's
flush) each time it is about to wait for an event that is not there yet,
so events that are ready together leave in one write. A deadline in one
choice becomes that choice's `Failed` event. With one session it is a
straight loop, no tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

from aiohttp import web

from bridge.api.turns import TurnSession, key_slots
from bridge.appkeys import POOL
from bridge.codex.events import Failed, Finished, TurnEvent, Usage
from bridge.codex.turn import TurnRequest
from bridge.errors import BridgeError, InvalidRequest
from bridge.ops.auth import API_KEY

# Events of all choices read from their turns but not yet consumed by the request.
MERGED_BACKLOG: Final = 64


def check_fanout(request: web.Request, count: int, *, param: str) -> None:
    """400 when `count` turns could never run at once: waiting for them would only deadlock."""
    if count <= 1:
        return
    pool = request.app[POOL]
    capacity = len(pool.workers) * pool.max_turns_per_worker
    what = "n" if param == "n" else "prompts"
    if count > capacity:
        raise InvalidRequest(
            f"This request asks for {count} {what} at once, but this bridge runs at most "
            f"{capacity} turns at once ({len(pool.workers)} workers x "
            f"{pool.max_turns_per_worker} turns). Send at most {capacity}.",
            param=param,
            code="integer_above_max_value" if param == "n" else "array_above_max_length",
        )
    key = request.get(API_KEY)
    if key is not None and key.max_concurrent is not None and count > key.max_concurrent:
        raise InvalidRequest(
            f"This request asks for {count} {what} at once, but API key '{key.name}' may run "
            f"at most {key.max_concurrent} turns at once. Send at most {key.max_concurrent}.",
            param=param,
            code="integer_above_max_value" if param == "n" else "array_above_max_length",
        )


@asynccontextmanager
async def open_sessions(
    request: web.Request,
    turn_requests: Sequence[TurnRequest],
    *,
    endpoint: str,
    stream: bool,
    param: str = "n",
) -> AsyncIterator[list[TurnSession]]:
    check_fanout(request, len(turn_requests), param=param)
    sessions = [
        TurnSession(request, turn_request, endpoint=endpoint, stream=stream)
        for turn_request in turn_requests
    ]
    async with AsyncExitStack() as stack:
        if len(sessions) > 1:
            for session in sessions:
                # Pushed before admit: a session that fails to start (or is
                # never started) still gives its slots back; a no-op once
                # the session itself owns a running turn.
                stack.push_async_callback(session.release_admission)
            # Key slots, then worker slots, each all at once: none held while waiting.
            await stack.enter_async_context(key_slots(request, len(sessions)))
            pool = request.app[POOL]
            leases = await pool.take_slots(len(sessions))
            for lease in leases:
                # Idempotent: a session that took its lease over frees it itself.
                stack.callback(pool.give_back, lease)
            for session, lease in zip(sessions, leases, strict=True):
                await session.admit(lease)
        for session in sessions:
            await stack.enter_async_context(session)
        yield sessions


async def merged_events(
    sessions: Sequence[TurnSession],
    *,
    keepalive_s: float | None = None,
    on_idle: Callable[[], Awaitable[None]] | None = None,
) -> AsyncGenerator[tuple[int, TurnEvent | None], None]:
    if len(sessions) == 1:
        session = sessions[0]
        while True:
            if on_idle is not None and not session.has_event():
                await on_idle()
            try:
                event = await session.next_event(keepalive_s=keepalive_s)
            except BridgeError as exc:
                yield 0, Failed(exc, Usage())
                return
            yield 0, event
            if isinstance(event, Finished | Failed):
                return
    # Bounded: when the request stops consuming (a client that does not
    # read), the pumps wait here and each turn's own bounded inbox fills up.
    queue: asyncio.Queue[tuple[int, TurnEvent]] = asyncio.Queue(MERGED_BACKLOG)

    async def pump(index: int, session: TurnSession) -> None:
        while True:
            try:
                event = await session.next_event()
            except BridgeError as exc:
                event = Failed(exc, Usage())
            if event is not None:
                await queue.put((index, event))
            if isinstance(event, Finished | Failed):
                return

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(sessions)]
    remaining = len(sessions)
    try:
        while remaining:
            if on_idle is not None and queue.empty():
                await on_idle()
            try:
                async with asyncio.timeout(keepalive_s):
                    index, event = await queue.get()
            except TimeoutError:
                yield -1, None
                continue
            if isinstance(event, Finished | Failed):
                remaining -= 1
            yield index, event
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
