"""A turn that hit its account's usage limit is started again on another account; when that
restart cannot happen, the request ends with the limit's own error and nothing dangles.

Stand-ins replace the pool and Codex turns: a restart that fails, or a shutdown that lands
while the old turn closes, cannot be made to happen on demand with a real app-server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge.api.middleware import METRICS
from bridge.api.turns import TURNS, TurnRegistry, TurnSession
from bridge.appkeys import LIMITS, POOL
from bridge.codex.events import Failed, TurnEvent, Usage
from bridge.codex.turn import Turn, TurnLimits, TurnRequest
from bridge.errors import ServiceUnavailable, UsageLimitReached
from bridge.ops.access import ACCESS, AccessRecord
from bridge.ops.metrics import Metrics
from bridge.worker.pool import Lease, WorkerPool
from bridge.worker.supervisor import Worker

WAIT_S = 5.0


@dataclass
class _Config:
    account: str


@dataclass
class _Worker:
    id: int
    config: _Config
    pid: int = 1000


class _Turn:
    """A turn whose one event is a usage-limit failure; logs every call made on it."""

    def __init__(self, name: str, log: list[str], on_close: Callable[[], object] | None = None):
        self.thread_id = f"thread-{name}"
        self.turn_id: str | None = f"turn-{name}"
        self.backlog_high_water = 0
        self._name = name
        self._log = log
        self._on_close = on_close
        self.limit = UsageLimitReached("usage limit reached", retry_after=600)
        self._events: list[TurnEvent] = [Failed(self.limit, Usage(input_tokens=5))]

    async def next_event(self) -> TurnEvent:
        self._log.append(f"{self._name}:next_event")
        if self._events:
            return self._events.pop(0)
        await asyncio.Event().wait()  # an ended turn sends nothing more
        raise AssertionError("unreachable")

    def has_event(self) -> bool:
        return False  # every event is waited for, as a turn's first one is

    async def interrupt(self) -> None:
        self._log.append(f"{self._name}:interrupt")

    def resolve_tool_call(self, call_id: str, output: str, *, success: bool = True) -> bool:
        return False

    async def aclose(self) -> None:
        self._log.append(f"{self._name}:aclose")
        if self._on_close is not None:
            self._on_close()


class _Pool:
    """Two accounts; the first start runs on A, a restart on B fails."""

    def __init__(self, log: list[str], first: _Turn) -> None:
        self.workers = [_Worker(0, _Config("a")), _Worker(1, _Config("b"))]
        self.rank: Callable[[Any], float | None] = lambda worker: 50.0
        self._log = log
        self._first: _Turn | None = first
        self.given_back: list[int] = []

    @asynccontextmanager
    async def lease_slot(self, on: Any = None, *, prefer: Any = None) -> AsyncIterator[Lease]:
        lease = Lease(cast(Worker, self.workers[0]), asyncio.get_running_loop().time() + WAIT_S)
        try:
            yield lease
        finally:
            self.given_back.append(lease.worker.id)

    def move(self, lease: Lease, exclude: Callable[[Any], bool]) -> Any:
        (other,) = [w for w in self.workers if w is not lease.worker and not exclude(w)]
        lease.worker = cast(Worker, other)
        return other

    async def start_on(self, lease: Lease, start: Callable[[Any], Awaitable[Turn]]) -> Turn:
        self._log.append(f"start:{lease.worker.config.account}")
        if self._first is not None:
            turn, self._first = self._first, None
            return cast(Turn, turn)
        raise ServiceUnavailable("No Codex worker is ready; retry shortly.", retry_after=2)


def _session(pool: _Pool, registry: TurnRegistry | None = None) -> TurnSession:
    app = web.Application()
    app[POOL] = cast(WorkerPool, pool)
    app[LIMITS] = TurnLimits(first_token_s=WAIT_S, idle_s=WAIT_S, deadline_s=WAIT_S)
    app[METRICS] = Metrics(version="test", codex_version="test")
    app[TURNS] = TurnRegistry() if registry is None else registry
    http = make_mocked_request("POST", "/v1/chat/completions", app=app)
    http[ACCESS] = AccessRecord(request_id="req_test", started=time.perf_counter())
    return TurnSession(http, TurnRequest(input="hello"), endpoint="chat", stream=False)


async def test_a_failed_restart_on_another_account_answers_the_usage_limit_when_it_hit_one() -> (
    None
):
    log: list[str] = []
    old = _Turn("A", log)
    pool = _Pool(log, old)
    session = _session(pool)
    with pytest.raises(UsageLimitReached) as raised:
        async with session:
            await asyncio.wait_for(session.next_event(), WAIT_S)
    # The client hears of the limit (429, Retry-After), not of the failed retry.
    assert raised.value is old.limit and raised.value.retry_after == 600
    # The ended turn is neither interrupted nor waited on for a usage it already sent.
    assert log == ["start:a", "A:next_event", "A:aclose", "start:b", "A:aclose"]
    assert pool.given_back == [1]  # the slot the lease moved to
    assert session.thread_and_turn() == ("thread-A", "turn-A")


async def test_a_shutdown_while_the_limited_turn_closes_starts_no_turn_on_another_account() -> None:
    log: list[str] = []
    registry = TurnRegistry()
    old = _Turn("A", log, on_close=registry.abort_all)  # the drain deadline passes now
    pool = _Pool(log, old)
    session = _session(pool, registry)
    with pytest.raises(ServiceUnavailable) as raised:
        async with session:
            await asyncio.wait_for(session.next_event(), WAIT_S)
    assert raised.value.code == "shutting_down"
    assert "start:b" not in log
    assert "A:interrupt" not in log and log.count("A:next_event") == 1
