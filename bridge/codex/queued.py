"""What both dialects' turns share: the inbox the reader fills, the event queue, start errors.

The RPC reader only appends `(method, params)` to a turn's inbox (O(1),
never blocking); the consumer translates them into turn events when it asks
for the next one, so a timeout around `next_event` loses nothing. The inbox
is bounded (`codex.max_queued_events`): a request that stops consuming (a
client that does not read its stream) cannot grow the bridge's memory. Past
the bound the reader drops the backlog, asks Codex to interrupt the turn (in
a task of its own, never waiting) and the consumer's next event is `Failed`.
The interrupt task is kept and awaited when the turn closes. Knows the RPC
error types and the turn events; no method names of either dialect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Coroutine
from typing import Any, Final

import structlog

from bridge.codex.errors import OVERLOAD_RETRY_AFTER_S
from bridge.codex.events import Failed, TurnEvent, Usage
from bridge.errors import BridgeError, InvalidRequest, WorkerCrashed, WorkerOverloaded
from bridge.worker.rpc import (
    ConnectionClosed,
    RpcConnection,
    RpcError,
    RpcTimeout,
    ServerOverloaded,
)

log = structlog.get_logger("bridge.codex")

# Events one turn may buffer when nothing says otherwise (`codex.max_queued_events`).
DEFAULT_MAX_QUEUED_EVENTS: Final = 4096
# Put into the inbox in place of the dropped backlog.
_BACKLOG_OVERFLOW: Final = "bridge/backlogOverflow"

# What a failed start-up call may raise besides cancellation.
START_ERRORS = (ConnectionClosed, RpcTimeout, RpcError, KeyError, TypeError)
# JSON-RPC "Invalid Request" and "Invalid params": Codex refusing what the
# client asked for (too long an input, a duplicate tool, ...), a 400.
INVALID_REQUEST_CODES: Final = frozenset({-32600, -32602})
# Codex's `input_error_code` values with an OpenAI code of their own.
_INPUT_ERROR_CODES: Final = {"input_too_large": "string_above_max_length"}


def start_error(exc: BaseException, step: str) -> BridgeError:
    """The client-facing error for a turn that could not be started."""
    if isinstance(exc, ConnectionClosed):
        return WorkerCrashed("The Codex worker exited while starting the turn.")
    if isinstance(exc, RpcTimeout):
        return WorkerCrashed(f"The Codex worker did not answer {step} in time.")
    if isinstance(exc, ServerOverloaded):
        return WorkerOverloaded(
            f"Codex is overloaded ({step}); retry later.", retry_after=OVERLOAD_RETRY_AFTER_S
        )
    if isinstance(exc, RpcError) and exc.code in INVALID_REQUEST_CODES:
        detail = exc.data.get("input_error_code") if isinstance(exc.data, dict) else None
        return InvalidRequest(
            f"Codex rejected the request: {exc.message}",
            code=_INPUT_ERROR_CODES.get(str(detail)),
        )
    if isinstance(exc, RpcError):
        return BridgeError(f"Codex rejected {step}: {exc.message}")
    return BridgeError(f"Codex answered {step} with an unexpected payload.")


async def shielded(cleanup: Coroutine[Any, Any, None]) -> None:
    """Runs a bounded cleanup to its end even when the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.cancelled():
            return  # the loop is closing: nothing left to clean up with
        raise  # the caller is cancelled again; the cleanup task goes on on its own


def backlog_error(max_queued_events: int) -> BridgeError:
    """The request's end when its client let `max_queued_events` events pile up unread."""
    return BridgeError(
        f"The client read the stream too slowly: {max_queued_events} events were waiting "
        "for it, so the turn was stopped.",
        code="client_too_slow",
    )


class QueuedTurn:
    """Base of V1Turn and V2Turn; subclasses implement `_translate`."""

    def __init__(
        self,
        conn: RpcConnection,
        thread_id: str,
        rpc_timeout_s: float,
        max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS,
    ) -> None:
        self._conn = conn
        self.thread_id = thread_id
        self.turn_id: str | None = None
        # Lines logged for this turn from the reader's tasks carry the id of
        # the HTTP request that started it (contextvars do not reach them).
        self.request_id = structlog.contextvars.get_contextvars().get("request_id")
        self._rpc_timeout_s = rpc_timeout_s
        self._inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._max_queued = max_queued_events
        self.backlog_high_water = 0
        """Most notifications that ever waited for the consumer at once."""
        self._overflow: asyncio.Task[None] | None = None
        self._ready: deque[TurnEvent] = deque()
        self._usage = Usage()
        self._done = False
        self._closed = False

    def feed(self, method: str, params: dict[str, Any]) -> None:
        """Called on the RPC reader task: O(1), never waits."""
        size = self._inbox.qsize()
        if size >= self._max_queued and self._overflow is None:
            self._overflowed()
        if self._overflow is not None:
            # Only the usage and the end still matter (billing): keep no events.
            self._translate(method, params)
            self._ready.clear()
            return
        self._inbox.put_nowait((method, params))
        if size >= self.backlog_high_water:
            self.backlog_high_water = size + 1

    def _overflowed(self) -> None:
        # The consumer is stuck (a client that does not read): drop the events
        # it will never need (keeping their usage), and stop the turn so Codex
        # stops producing. Once, O(max_queued_events).
        while not self._inbox.empty():
            self._translate(*self._inbox.get_nowait())
        self._ready.clear()
        self._inbox.put_nowait((_BACKLOG_OVERFLOW, {}))
        self._overflow = asyncio.ensure_future(self.interrupt())
        log.warning(
            "turn event backlog full; interrupting the turn",
            request_id=self.request_id,
            thread_id=self.thread_id,
            max_queued_events=self._max_queued,
        )

    async def _reap_overflow(self) -> None:
        """Waits for the overflow's interrupt task (bounded by its RPC timeout): none outlives the turn."""
        overflow = self._overflow
        if overflow is not None and not overflow.done():
            with contextlib.suppress(Exception):
                await overflow

    async def next_event(self) -> TurnEvent:
        """The next event; cancellation-safe (a timeout around it loses nothing)."""
        while not self.has_event():
            self._take(*await self._inbox.get())
        return self._ready.popleft()

    def has_event(self) -> bool:
        """Whether an event is ready: translates what the reader queued so far, never waits."""
        while not self._ready and not self._inbox.empty():
            self._take(*self._inbox.get_nowait())
        return bool(self._ready)

    def _take(self, method: str, params: dict[str, Any]) -> None:
        if method == _BACKLOG_OVERFLOW:
            self._ready.append(Failed(backlog_error(self._max_queued), self._usage))
        else:
            self._translate(method, params)

    async def interrupt(self) -> None:
        raise NotImplementedError

    def _translate(self, method: str, params: dict[str, Any]) -> None:
        raise NotImplementedError
