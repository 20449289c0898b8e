"""Which Codex threads a running or parked turn holds, so deleting a response never drops them."""

from __future__ import annotations

from typing import cast

from aiohttp import web

from bridge.api.pending import PENDING, PendingToolCalls
from bridge.api.stored_responses import thread_in_use
from bridge.api.turns import TURNS, TurnRegistry, TurnSession


class _Session:
    """Just enough of a TurnSession for the registry: where its turn runs."""

    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id

    def thread_and_turn(self) -> tuple[str | None, str | None]:
        return self.thread_id, "turn-1"


def _app() -> web.Application:
    app = web.Application()
    app[PENDING] = PendingToolCalls(timeout_s=60.0, max_parked=4)
    app[TURNS] = TurnRegistry()
    return app


def test_thread_of_a_running_turn_is_in_use_when_no_parked_turn_holds_it() -> None:
    app = _app()
    session = cast(TurnSession, _Session("thread-A"))
    assert not thread_in_use(app, "thread-A")
    app[TURNS].add(session)
    assert thread_in_use(app, "thread-A")
    assert not thread_in_use(app, "thread-B")
    app[TURNS].discard(session)
    assert not thread_in_use(app, "thread-A")


def test_adopted_turn_stays_in_use_when_the_request_that_parked_it_leaves_after_the_claim() -> None:
    registry = TurnRegistry()
    session = cast(TurnSession, _Session("thread-A"))
    registry.add(session)  # the request that ran the turn until its tool calls
    registry.add(session)  # the follow-up that claimed and adopted it
    registry.discard(session)  # the first request finishes leaving
    assert registry.thread_ids() == {"thread-A"}
    assert len(registry) == 1
    registry.discard(session)
    assert registry.thread_ids() == set()
    assert len(registry) == 0
