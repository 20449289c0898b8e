"""QueuedTurn's inbox: bounded for a consumer that stops reading, never blocking the feeder."""

from __future__ import annotations

from typing import Any, cast

from bridge.codex.events import Failed, TextDelta, Usage
from bridge.codex.queued import QueuedTurn
from bridge.worker.rpc import RpcConnection
from tests.harness import wait_until

BOUND = 16
WAIT_S = 5.0


class _Turn(QueuedTurn):
    """A dialect reduced to two notifications: a text delta and a usage update."""

    def __init__(self) -> None:
        super().__init__(cast(RpcConnection, None), "thread-1", 1.0, BOUND)
        self.interrupts = 0

    def _translate(self, method: str, params: dict[str, Any]) -> None:
        if method == "delta":
            self._ready.append(TextDelta(params["text"]))
        elif method == "usage":
            self._usage = self._usage + Usage(output_tokens=1)

    async def interrupt(self) -> None:
        self.interrupts += 1


async def test_a_consumer_that_keeps_up_gets_every_event_in_order() -> None:
    turn = _Turn()
    for i in range(BOUND):
        turn.feed("delta", {"text": str(i)})
    got = [await turn.next_event() for _ in range(BOUND)]
    assert got == [TextDelta(str(i)) for i in range(BOUND)]
    assert turn.backlog_high_water == BOUND
    assert turn.interrupts == 0


async def test_backlog_stays_bounded_and_the_turn_fails_when_the_consumer_stops_reading() -> None:
    turn = _Turn()
    for i in range(10_000):
        turn.feed("delta" if i % 2 else "usage", {"text": "x"})
    assert turn.backlog_high_water == BOUND
    # The interrupt runs in a task of its own: the feeder (the RPC reader) never waits.
    assert turn.interrupts == 0
    await wait_until(lambda: turn.interrupts == 1, timeout=WAIT_S)
    event = await turn.next_event()
    assert isinstance(event, Failed)
    assert event.error.code == "client_too_slow"
    # Usage of the dropped and the later notifications still counts (billing).
    assert event.usage.output_tokens == 5_000
