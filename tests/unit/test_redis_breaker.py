"""A Redis that does not answer costs one timeout, not one per request: after a failure the
store, the usage ledger and the key leases skip it (one shared breaker) until one probe
finds it back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from bridge.errors import StoreUnavailable
from bridge.ops.leases import RedisKeyLimits
from bridge.redis_store import BreakerOpen, RedisBreaker, RedisResponseStore
from bridge.store import StoredResponse
from tests.harness import wait_until

WAIT_S = 5.0
# Longer than any test here runs: the breaker stays open until a test moves its clock.
LONG_OPEN_S = 3600.0


@asynccontextmanager
async def silent_redis() -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server on 127.0.0.1 that accepts and never answers; the list counts connections."""
    connections: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writers.append(writer)
        await reader.read()  # until the client hangs up; nothing is ever answered

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # A short read timeout keeps the one wait the breaker allows short.
        yield (
            f"redis://127.0.0.1:{port}/0?socket_timeout=0.2&socket_connect_timeout=0.2",
            (connections),
        )
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def _record() -> StoredResponse:
    return StoredResponse(
        id="resp_b", thread_id=None, turn_id=None, created_at=0.0, body={}, owner="alice"
    )


async def test_a_second_key_lease_does_not_wait_on_redis_when_the_first_found_it_silent() -> None:
    async with silent_redis() as (url, connections):
        limits = RedisKeyLimits(url, breaker=RedisBreaker(open_s=LONG_OPEN_S))
        try:
            async with asyncio.timeout(WAIT_S), limits.hold("alice", 2, WAIT_S):
                pass  # Redis did not answer: the local cap held it
            tried = len(connections)
            assert tried > 0
            async with asyncio.timeout(WAIT_S), limits.hold("alice", 2, WAIT_S):
                pass
            assert len(connections) == tried  # Redis was not asked again
        finally:
            await limits.close()


async def test_a_store_save_fails_at_once_when_a_key_lease_found_redis_silent() -> None:
    async with silent_redis() as (url, connections):
        breaker = RedisBreaker(open_s=LONG_OPEN_S)
        limits = RedisKeyLimits(url, breaker=breaker)
        store = RedisResponseStore(url, breaker=breaker)
        seen: list[bool] = []
        store.on_change = seen.append  # the codex_bridge_store_up gauge
        try:
            async with asyncio.timeout(WAIT_S), limits.hold("alice", 2, WAIT_S):
                pass
            tried = len(connections)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.put(_record()), WAIT_S)
            assert len(connections) == tried
            assert store.available is False and seen == [False]
        finally:
            await limits.close()
            await store.close()


async def test_one_probe_goes_to_redis_once_the_open_window_passed() -> None:
    clock = [0.0]
    breaker = RedisBreaker(open_s=5.0, clock=lambda: clock[0])
    calls: list[str] = []
    back = asyncio.Event()

    async def down() -> str:
        calls.append("down")
        raise RedisConnectionError("no answer")

    async def up() -> str:
        calls.append("up")
        await back.wait()
        return "pong"

    with pytest.raises(RedisConnectionError):
        await breaker.call(down)
    with pytest.raises(BreakerOpen):
        await breaker.call(up)
    assert calls == ["down"] and breaker.open
    clock[0] = 5.0
    probe = asyncio.create_task(breaker.call(up))
    await wait_until(lambda: calls == ["down", "up"], timeout=WAIT_S)
    with pytest.raises(BreakerOpen):  # one probe at a time
        await breaker.call(up)
    back.set()
    assert await asyncio.wait_for(probe, WAIT_S) == "pong"
    assert not breaker.open
    assert await breaker.call(up) == "pong"


async def test_an_error_redis_answered_with_does_not_open_the_breaker() -> None:
    breaker = RedisBreaker(open_s=LONG_OPEN_S)

    async def refused() -> None:
        raise ResponseError("WRONGTYPE")

    with pytest.raises(ResponseError):
        await breaker.call(refused)
    assert not breaker.open
