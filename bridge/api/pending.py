"""Turns parked while a client runs its tools: the call ids they wait on, and their expiry.

A response that ends in tool calls leaves its Codex turn running (Codex is
blocked on the `item/tool/call` request) and its worker slot held. The
follow-up request that carries the results claims the turn by call id,
answers the calls and streams the rest of the same turn. A turn nobody
claims within the timeout is interrupted and its slot freed; a follow-up
that finds nothing (expired, restarted, another instance) replays the
conversation on a fresh thread instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import web

from bridge.api.turns import TurnSession

log = structlog.get_logger("bridge.pending")


@dataclass(slots=True)
class _Parked:
    session: TurnSession
    call_ids: tuple[str, ...]
    expiry: asyncio.TimerHandle | None = None


class PendingToolCalls:
    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._by_call: dict[str, _Parked] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len({id(p) for p in self._by_call.values()})

    def park(self, session: TurnSession, call_ids: Iterable[str]) -> None:
        parked = _Parked(session, tuple(call_ids))
        loop = asyncio.get_running_loop()
        parked.expiry = loop.call_later(self._timeout_s, self._expire, parked)
        session.parked = True
        for call_id in parked.call_ids:
            self._by_call[call_id] = parked

    def claim(self, call_ids: Iterable[str]) -> TurnSession | None:
        """The parked turn waiting on exactly these calls (all answered at once), if any."""
        wanted = set(call_ids)
        for call_id in wanted:
            parked = self._by_call.get(call_id)
            if parked is not None and set(parked.call_ids) <= wanted:
                self._forget(parked)
                return parked.session
        return None

    def _forget(self, parked: _Parked) -> None:
        if parked.expiry is not None:
            parked.expiry.cancel()
        for call_id in parked.call_ids:
            self._by_call.pop(call_id, None)

    def _expire(self, parked: _Parked) -> None:
        log.info("parked turn expired", calls=len(parked.call_ids), timeout_s=self._timeout_s)
        self._forget(parked)
        task = asyncio.get_running_loop().create_task(parked.session.release())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for parked in {id(p): p for p in self._by_call.values()}.values():
            self._forget(parked)
            await parked.session.release()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


PENDING: Final = web.AppKey("pending_tools", PendingToolCalls)
