"""Several turns as one request: `n` choices, or one choice per legacy prompt.

`open_sessions` admits and starts every turn before the first byte goes out
(so admission errors are still plain HTTP errors); `merged_events` then
yields `(choice index, event)` pairs as they come, with `None` events as
keepalive ticks. A deadline in one choice becomes that choice's `Failed`
event. With one session it is a straight loop, no tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from aiohttp import web

from bridge.api.turns import TurnSession
from bridge.codex.events import Failed, Finished, TurnEvent, Usage
from bridge.codex.turn import TurnRequest
from bridge.errors import BridgeError


@asynccontextmanager
async def open_sessions(
    request: web.Request, turn_requests: Sequence[TurnRequest], *, endpoint: str, stream: bool
) -> AsyncIterator[list[TurnSession]]:
    async with AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(
                TurnSession(request, turn_request, endpoint=endpoint, stream=stream)
            )
            for turn_request in turn_requests
        ]
        yield sessions


async def merged_events(
    sessions: Sequence[TurnSession], *, keepalive_s: float | None = None
) -> AsyncIterator[tuple[int, TurnEvent | None]]:
    if len(sessions) == 1:
        session = sessions[0]
        while True:
            try:
                event = await session.next_event(keepalive_s=keepalive_s)
            except BridgeError as exc:
                yield 0, Failed(exc, Usage())
                return
            yield 0, event
            if isinstance(event, Finished | Failed):
                return
    queue: asyncio.Queue[tuple[int, TurnEvent]] = asyncio.Queue()

    async def pump(index: int, session: TurnSession) -> None:
        while True:
            try:
                event = await session.next_event()
            except BridgeError as exc:
                event = Failed(exc, Usage())
            if event is not None:
                queue.put_nowait((index, event))
            if isinstance(event, Finished | Failed):
                return

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(sessions)]
    remaining = len(sessions)
    try:
        while remaining:
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
