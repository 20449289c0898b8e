"""Per-key caps across instances (`bridge.ops.leases`), against a real redis-server.

Each `RedisKeyLimits` stands for one bridge instance; a subprocess killed
with SIGKILL stands for an instance that crashed holding slots.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final

import pytest

from bridge.errors import RateLimited
from bridge.ops.leases import RedisKeyLimits
from tests.redis_server import RedisServer

REPO: Final = Path(__file__).resolve().parents[2]
# Long enough for a busy box to take a slot; short enough that a 429 comes quickly.
SHORT_WAIT_S: Final = 0.3
CRASHED_LEASE_S: Final = 1.0
# Bounds the wait for a dead instance's lease to run out (CRASHED_LEASE_S) on a slow box.
LEASE_RETURN_WAIT_S: Final = 20.0
CHILD_READY_TIMEOUT_S: Final = 30.0

_CHILD: Final = """
import asyncio, sys
from contextlib import AsyncExitStack
from bridge.ops.leases import RedisKeyLimits

async def main() -> None:
    limits = RedisKeyLimits(sys.argv[1], prefix=sys.argv[2], lease_s=float(sys.argv[3]))
    stack = AsyncExitStack()
    for _ in range(2):
        await stack.enter_async_context(limits.hold("alice", 2, 5.0))
    print("held", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


async def test_a_cap_of_two_holds_across_two_instances(redis_server: RedisServer) -> None:
    prefix = _prefix()
    a = RedisKeyLimits(redis_server.url, prefix=prefix)
    b = RedisKeyLimits(redis_server.url, prefix=prefix)
    try:
        async with AsyncExitStack() as on_a:
            await on_a.enter_async_context(a.hold("alice", 2, SHORT_WAIT_S))
            async with b.hold("alice", 2, SHORT_WAIT_S):
                with pytest.raises(RateLimited) as refused:
                    async with a.hold("alice", 2, SHORT_WAIT_S):
                        pass
                assert refused.value.code == "rate_limit_exceeded"
                # Another key is not affected.
                async with b.hold("bob", 2, SHORT_WAIT_S):
                    pass
                assert b.in_use("alice") == 2
            # B's slot came back: A gets it.
            async with a.hold("alice", 2, SHORT_WAIT_S):
                pass
    finally:
        await a.close()
        await b.close()


async def test_a_fan_out_takes_all_its_leases_or_none_when_another_instance_holds_part_of_the_cap(
    redis_server: RedisServer,
) -> None:
    prefix = _prefix()
    a = RedisKeyLimits(redis_server.url, prefix=prefix)
    b = RedisKeyLimits(redis_server.url, prefix=prefix)
    try:
        async with b.hold("alice", 3, SHORT_WAIT_S, count=2):
            # Three slots, two taken on B: a fan-out of two on A gets neither.
            with pytest.raises(RateLimited):
                async with a.hold("alice", 3, SHORT_WAIT_S, count=2):
                    pass
            # It left no partial lease behind: the one free slot is still free.
            async with a.hold("alice", 3, SHORT_WAIT_S):
                assert a.in_use("alice") == 3
        async with a.hold("alice", 3, SHORT_WAIT_S, count=3):
            assert a.in_use("alice") == 3
    finally:
        await a.close()
        await b.close()


async def test_a_waiter_on_another_instance_gets_the_slot_when_it_is_released(
    redis_server: RedisServer,
) -> None:
    prefix = _prefix()
    a = RedisKeyLimits(redis_server.url, prefix=prefix)
    b = RedisKeyLimits(redis_server.url, prefix=prefix)
    released = asyncio.Event()
    try:
        async with AsyncExitStack() as on_a:
            await on_a.enter_async_context(a.hold("alice", 1, SHORT_WAIT_S))

            async def wait_on_b() -> None:
                async with b.hold("alice", 1, LEASE_RETURN_WAIT_S):
                    assert released.is_set()

            waiter = asyncio.create_task(wait_on_b())
            await on_a.aclose()
            released.set()
            await asyncio.wait_for(waiter, LEASE_RETURN_WAIT_S)
    finally:
        await a.close()
        await b.close()


async def test_a_crashed_instance_gives_its_slots_back_after_the_lease(
    redis_server: RedisServer,
) -> None:
    prefix = _prefix()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        redis_server.url,
        prefix,
        str(CRASHED_LEASE_S),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    survivor = RedisKeyLimits(redis_server.url, prefix=prefix)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), CHILD_READY_TIMEOUT_S)
        assert line.strip() == b"held"
        with pytest.raises(RateLimited):
            async with survivor.hold("alice", 2, SHORT_WAIT_S):
                pass
        child.send_signal(signal.SIGKILL)  # no release, no renewal: a crash
        await asyncio.wait_for(child.wait(), CHILD_READY_TIMEOUT_S)
        async with survivor.hold("alice", 2, LEASE_RETURN_WAIT_S):
            async with survivor.hold("alice", 2, LEASE_RETURN_WAIT_S):
                assert survivor.in_use("alice") == 2
    finally:
        if child.returncode is None:
            child.kill()
            await asyncio.wait_for(child.wait(), CHILD_READY_TIMEOUT_S)
        await survivor.close()


async def test_redis_down_leaves_the_local_cap_in_force(own_redis: RedisServer) -> None:
    limits = RedisKeyLimits(own_redis.url, prefix=_prefix())
    try:
        own_redis.stop()
        async with limits.hold("alice", 1, SHORT_WAIT_S):
            with pytest.raises(RateLimited):
                async with limits.hold("alice", 1, SHORT_WAIT_S):
                    pass
        own_redis.start()
        async with limits.hold("alice", 1, SHORT_WAIT_S):
            pass
    finally:
        await limits.close()
