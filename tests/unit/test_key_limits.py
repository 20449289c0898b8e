"""Per-key concurrency slots: a fan-out takes its slots all at once, FIFO, and a wait that
runs out leaves nothing held."""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import RateLimited
from bridge.ops.admission import KeyLimits
from tests.harness import wait_until

WAIT_S = 5.0
KEY = "alice"


async def test_two_fanouts_of_one_key_hold_no_slot_while_they_wait_and_run_in_arrival_order() -> (
    None
):
    limits = KeyLimits()
    release_first, release_second = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def fanout(name: str, release: asyncio.Event) -> None:
        async with limits.hold(KEY, 2, WAIT_S, count=2):
            order.append(name)
            await release.wait()

    async with limits.hold(KEY, 2, WAIT_S):  # one of the key's two slots is taken
        first = asyncio.create_task(fanout("first", release_first))
        await wait_until(lambda: limits.waiting(KEY) == 1, timeout=WAIT_S)
        second = asyncio.create_task(fanout("second", release_second))
        await wait_until(lambda: limits.waiting(KEY) == 2, timeout=WAIT_S)
        # One slot is free, but neither fan-out holds it while it waits for two.
        assert limits.in_use(KEY) == 1
    await wait_until(lambda: order == ["first"], timeout=WAIT_S)
    assert limits.in_use(KEY) == 2 and limits.waiting(KEY) == 1
    release_first.set()
    await wait_until(lambda: order == ["first", "second"], timeout=WAIT_S)
    release_second.set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
    assert limits.in_use(KEY) == 0 and limits.waiting(KEY) == 0


async def test_a_fanout_whose_wait_runs_out_gets_429_and_leaves_nothing_held() -> None:
    limits = KeyLimits()
    async with limits.hold(KEY, 2, WAIT_S):
        with pytest.raises(RateLimited):
            async with limits.hold(KEY, 2, 0.05, count=2):
                pass
        assert limits.in_use(KEY) == 1 and limits.waiting(KEY) == 0
    assert limits.in_use(KEY) == 0
