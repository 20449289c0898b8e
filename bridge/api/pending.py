"""Turns parked while a client runs its tools: who owns them, the call ids they wait on, expiry.

A response that ends in tool calls leaves its Codex turn running (Codex is
blocked on the `item/tool/call` request) but gives its key and worker slots
back when that response is done (`TurnSession.hand_over`): a turn waiting
for a client holds no capacity. Parked turns have their own bound (`codex.max_parked_turns`;
parking one more releases the oldest) and lifetime
(`codex.tool_call_timeout_s`).

A parked turn belongs to the caller (API key name, or the one anonymous
owner when no keys are configured) and the endpoint that created it. The
follow-up request that carries the results claims it by owner and call ids,
answers the calls and streams the rest of the same turn. A follow-up that
finds nothing — another key's call ids, expired, evicted, its worker gone,
restarted, another instance — replays the conversation on a fresh turn of
its own instead, so another key's call ids reach neither the parked turn
nor its owner's bill. A follow-up that claimed the turn but then finds its
worker gone while it waits for a slot on it (`TurnSession.adopted`) does
not replay: it answers 503 with Retry-After and the turn is released, so
the client's retry finds nothing and replays.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import web

from bridge.api.turns import TurnSession, caller_of

log = structlog.get_logger("bridge.pending")

Owner = tuple[str, str]
"""(caller, endpoint): the API key name (or the anonymous owner) and `chat` / `responses`."""


def owner_of(request: web.Request, endpoint: str) -> Owner:
    return caller_of(request), endpoint


@dataclass(slots=True)
class _Parked:
    seq: int
    owner: Owner
    session: TurnSession
    call_ids: tuple[str, ...]
    expiry: asyncio.TimerHandle | None = None


class PendingToolCalls:
    def __init__(self, timeout_s: float, max_parked: int) -> None:
        self._timeout_s = timeout_s
        self._max_parked = max_parked
        self._by_call: dict[tuple[Owner, str], _Parked] = {}
        # Insertion order is parking order: the first entry is the oldest.
        self._parked: dict[int, _Parked] = {}
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._parked)

    def thread_ids(self) -> set[str]:
        """The Codex threads parked turns run on (not to be deleted under them)."""
        threads = (p.session.thread_and_turn()[0] for p in self._parked.values())
        return {thread for thread in threads if thread is not None}

    def park(self, session: TurnSession, call_ids: Iterable[str]) -> None:
        """Parks the turn for its current owner; it gives its slots back when its request ends."""
        owner = session.owner
        parked = _Parked(next(self._seq), owner, session, tuple(call_ids))
        session.hand_over()
        if self._max_parked == 0:
            log.info("tool-call turn not parked: codex.max_parked_turns is 0")
            self._release_soon(parked)
            return
        while len(self._parked) >= self._max_parked:
            oldest = next(iter(self._parked.values()))
            log.warning("parked turn evicted", max_parked_turns=self._max_parked)
            self._forget(oldest)
            self._release_soon(oldest)
        loop = asyncio.get_running_loop()
        parked.expiry = loop.call_later(self._timeout_s, self._expire, parked)
        self._parked[parked.seq] = parked
        for call_id in parked.call_ids:
            # A call id this owner parked before (a replayed or duplicated id)
            # now points at the newer turn; the older one expires on its own.
            self._by_call[(owner, call_id)] = parked

    def claim(self, call_ids: Iterable[str], owner: Owner) -> TurnSession | None:
        """The owner's parked turn waiting on exactly these calls (all answered at once), if any.

        Another owner's turns are invisible here. A turn whose worker is gone
        is ended and not returned: the follow-up replays instead.
        """
        wanted = set(call_ids)
        for call_id in wanted:
            parked = self._by_call.get((owner, call_id))
            if parked is None or not set(parked.call_ids) <= wanted:
                continue
            self._forget(parked)
            if not parked.session.parked or not parked.session.worker_ready:
                self._release_soon(parked)
                return None
            return parked.session
        return None

    def _forget(self, parked: _Parked) -> None:
        if parked.expiry is not None:
            parked.expiry.cancel()
        self._parked.pop(parked.seq, None)
        for call_id in parked.call_ids:
            if self._by_call.get((parked.owner, call_id)) is parked:
                del self._by_call[(parked.owner, call_id)]

    def _expire(self, parked: _Parked) -> None:
        log.info("parked turn expired", calls=len(parked.call_ids), timeout_s=self._timeout_s)
        self._forget(parked)
        self._release_soon(parked)

    def _release_soon(self, parked: _Parked) -> None:
        task = asyncio.get_running_loop().create_task(parked.session.release())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Ends every parked turn (shutdown); each release is bounded, and all run at once."""
        for parked in list(self._parked.values()):
            self._forget(parked)
            self._release_soon(parked)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


PENDING: Final = web.AppKey("pending_tools", PendingToolCalls)
