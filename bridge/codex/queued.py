"""What both dialects' turns share: the inbox the reader fills, the event queue, start errors.

The RPC reader only appends `(method, params)` to a turn's inbox (O(1),
never blocking); the consumer translates them into turn events when it asks
for the next one, so a timeout around `next_event` loses nothing. Knows the
RPC error types and the turn events; no method names of either dialect.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import structlog

from bridge.codex.events import TurnEvent, Usage
from bridge.errors import BridgeError, WorkerCrashed
from bridge.worker.rpc import ConnectionClosed, RpcConnection, RpcError, RpcTimeout

# What a failed start-up call may raise besides cancellation.
START_ERRORS = (ConnectionClosed, RpcTimeout, RpcError, KeyError, TypeError)


def start_error(exc: BaseException, step: str) -> BridgeError:
    """The client-facing error for a turn that could not be started."""
    if isinstance(exc, ConnectionClosed):
        return WorkerCrashed("The Codex worker exited while starting the turn.")
    if isinstance(exc, RpcTimeout):
        return WorkerCrashed(f"The Codex worker did not answer {step} in time.")
    if isinstance(exc, RpcError):
        return BridgeError(f"Codex rejected {step}: {exc.message}")
    return BridgeError(f"Codex answered {step} with an unexpected payload.")


class QueuedTurn:
    """Base of V1Turn and V2Turn; subclasses implement `_translate`."""

    def __init__(self, conn: RpcConnection, thread_id: str, rpc_timeout_s: float) -> None:
        self._conn = conn
        self.thread_id = thread_id
        self.turn_id: str | None = None
        # Lines logged for this turn from the reader's tasks carry the id of
        # the HTTP request that started it (contextvars do not reach them).
        self.request_id = structlog.contextvars.get_contextvars().get("request_id")
        self._rpc_timeout_s = rpc_timeout_s
        self._inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._ready: deque[TurnEvent] = deque()
        self._usage = Usage()
        self._done = False
        self._closed = False

    def feed(self, method: str, params: dict[str, Any]) -> None:
        """Called on the RPC reader task."""
        self._inbox.put_nowait((method, params))

    async def next_event(self) -> TurnEvent:
        """The next event; cancellation-safe (a timeout around it loses nothing)."""
        while not self._ready:
            method, params = await self._inbox.get()
            self._translate(method, params)
        return self._ready.popleft()

    def _translate(self, method: str, params: dict[str, Any]) -> None:
        raise NotImplementedError
