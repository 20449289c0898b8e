"""ThreadStock's bounds (age, idle configurations, LRU, busy worker) on a scripted connection."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from bridge.codex.prewarm import KEY_IDLE_S, MAX_KEYS, THREAD_MAX_AGE_S, ThreadStock
from bridge.worker.rpc import RpcConnection

PLAIN = {"baseInstructions": "You are a helpful assistant.", "ephemeral": True}


class Conn:
    """Answers thread/start with a new id and records every request."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def request(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        self.sent.append((method, params))
        if method == "thread/start":
            return {"thread": {"id": f"t{len(self.sent)}"}}
        return {}

    def methods(self) -> list[str]:
        return [method for method, _ in self.sent]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle(stock: ThreadStock) -> None:
    """Waits for the background refill and the closes it started (all bounded)."""
    async with asyncio.timeout(5):
        if stock._refill is not None:
            await stock._refill
        await asyncio.gather(*stock._closing)


def stock_on(conn: Conn, clock: Clock, *, busy: bool = False, size: int = 2) -> ThreadStock:
    stock = ThreadStock(size, 5.0, busy=lambda: busy, clock=clock)
    stock.attach(cast(RpcConnection, conn))
    return stock


async def test_a_thread_older_than_the_age_bound_is_closed_instead_of_used() -> None:
    conn, clock = Conn(), Clock()
    stock = stock_on(conn, clock)
    assert stock.take(PLAIN) is None  # first use: cold, and the configuration is noted
    stock.idle()
    await settle(stock)
    assert len(stock) == 2
    clock.now += THREAD_MAX_AGE_S + 1
    assert stock.take(PLAIN) is None
    await settle(stock)
    assert conn.methods().count("thread/unsubscribe") == 2
    assert len(stock) == 0


async def test_a_fresh_stocked_thread_is_handed_out_once() -> None:
    conn, clock = Conn(), Clock()
    stock = stock_on(conn, clock)
    stock.take(PLAIN)
    stock.idle()
    await settle(stock)
    first, second = stock.take(PLAIN), stock.take(PLAIN)
    assert first is not None and second is not None and first != second
    assert stock.take(PLAIN) is None
    assert (stock.hits, stock.misses) == (2, 2)


async def test_a_configuration_unused_past_the_idle_bound_is_not_refilled() -> None:
    conn, clock = Conn(), Clock()
    stock = stock_on(conn, clock)
    stock.take(PLAIN)
    clock.now += KEY_IDLE_S + 1
    stock.idle()
    await settle(stock)
    assert "thread/start" not in conn.methods()


async def test_nothing_is_started_while_the_worker_runs_a_turn() -> None:
    conn, clock = Conn(), Clock()
    stock = stock_on(conn, clock, busy=True)
    stock.take(PLAIN)
    stock.idle()
    await settle(stock)
    assert conn.sent == []


async def test_configurations_beyond_the_lru_bound_are_forgotten_and_their_threads_closed() -> None:
    conn, clock = Conn(), Clock()
    stock = stock_on(conn, clock, size=1)
    stock.take(PLAIN)
    stock.idle()
    await settle(stock)
    assert len(stock) == 1
    for i in range(MAX_KEYS):
        stock.take({**PLAIN, "baseInstructions": f"config {i}"})
    await settle(stock)
    assert conn.methods().count("thread/unsubscribe") == 1
    assert len(stock) == 0


async def test_a_new_process_starts_with_an_empty_stock() -> None:
    conn, clock = Conn(), Clock()
    stock = stock_on(conn, clock)
    stock.take(PLAIN)
    stock.idle()
    await settle(stock)
    stock.attach(cast(RpcConnection, Conn()))
    assert len(stock) == 0
    assert stock.take(PLAIN) is None
