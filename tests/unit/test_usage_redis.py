"""The usage ledger on Redis (`bridge.ops.usage_redis`), against a real redis-server."""

from __future__ import annotations

import time
import uuid

import pytest

from bridge.errors import StoreUnavailable
from bridge.ops.usage import DAY_S, UsageRow
from bridge.ops.usage_redis import RedisUsageLedger
from bridge.redis_store import BREAKER_OPEN_S, RedisBreaker
from tests.redis_server import RedisServer


def _row(key: str, ts: float, output: int = 5) -> UsageRow:
    return UsageRow(ts, key, "m", "responses", 200, 10, 2, output, 1)


async def test_rows_from_two_instances_add_up_per_day_key_and_model(
    redis_server: RedisServer,
) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    a = RedisUsageLedger(redis_server.url, prefix=prefix)
    b = RedisUsageLedger(redis_server.url, prefix=prefix)
    start = int(time.time()) // DAY_S * DAY_S - DAY_S
    try:
        a.start()
        b.start()
        a.record(_row("alice", start + 10))
        b.record(_row("alice", start + 20))  # the same row twice is two requests
        b.record(_row("alice", start + 20))
        b.record(_row("bob", start + DAY_S + 5, output=7))
        await a.flush()
        await b.flush()
        for ledger in (a, b):
            yesterday, today = await ledger.buckets(start, start + 2 * DAY_S, None)
            (alice,) = yesterday["results"]
            assert (alice["api_key_name"], alice["num_model_requests"]) == ("alice", 3)
            assert alice["output_tokens"] == 15 and alice["input_cached_tokens"] == 6
            (bob,) = today["results"]
            assert (bob["api_key_name"], bob["output_tokens"]) == ("bob", 7)
        only_bob = await a.buckets(start, start + 2 * DAY_S, "bob")
        assert only_bob[0]["results"] == []
    finally:
        await a.close()
        await b.close()


async def test_rows_recorded_while_redis_is_away_are_written_when_it_returns(
    own_redis: RedisServer,
) -> None:
    failed: list[str] = []
    clock = [0.0]
    breaker = RedisBreaker(clock=lambda: clock[0])
    ledger = RedisUsageLedger(own_redis.url, on_error=failed.append, breaker=breaker)
    now = int(time.time())
    try:
        own_redis.stop()
        ledger.record(_row("alice", now))
        await ledger.flush()
        assert failed == ["insert"]  # codex_bridge_store_errors{store="usage"}
        with pytest.raises(StoreUnavailable):
            await ledger.buckets(now - 1, now + 1, None)
        own_redis.start()
        clock[0] += BREAKER_OPEN_S  # Redis is skipped for a while after a failure, then probed
        await ledger.flush()
        (bucket,) = await ledger.buckets(now - 1, now + 1, None)
        assert [r["num_model_requests"] for r in bucket["results"]] == [1]
    finally:
        await ledger.close()
