"""Account rests shared through Redis (`store.url`): a pool account at its usage limit rests everywhere.

Two real bridges share a real redis-server and name their accounts alike,
each with its own Codex homes; the demo model answers a `-limited` key with
a usage limit that resets in an hour. What one instance finds, the other's
ranking obeys; a Redis that goes away leaves each instance with what it
knows, and one that comes back gets the rests found meanwhile.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import aiohttp
import redis.asyncio as redis

from bridge import signin
from bridge.appkeys import ACCOUNTS
from bridge.codex.account import AccountState, account_rank
from bridge.config import Settings
from bridge.demo import DEMO_MODEL_ID
from bridge.demo.model import LIMITED_KEY_MARKER, LIMITED_KEY_RESET_S
from bridge.ops.account_rests import SharedAccountRests
from bridge.redis_store import KEY_PREFIX
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until
from tests.redis_server import RedisServer

SIGN_IN_TIMEOUT_S: Final = 30.0
# Well above the one-second refresh, on a busy box.
SHARE_TIMEOUT_S: Final = 20.0
KEYS: Final = {"limited": "sk-test-limited-0123456789", "spare": "sk-test-spare-0123456789"}


async def _instance_settings(root: Path, redis_url: str) -> Settings:
    """One instance: its own Codex home per account, the account names shared with the others."""
    accounts = []
    for name, key in KEYS.items():
        home = root / f"account-{name}"
        assert await signin.login_api_key(bridge_test_settings(home), {}, key) == 0
        accounts.append(f"{name}={home}")
    return bridge_test_settings(
        root / "home",
        **{
            "demo.codex_account": True,
            "codex.health_interval_s": 0.5,
            "codex.accounts": accounts,
            "store.url": redis_url,
        },
    )


async def _signed_in(bridge: RunningBridge) -> None:
    accounts = bridge.app[ACCOUNTS]
    await wait_until(
        lambda: all(a.account_type == "apiKey" for a in accounts.values()),
        timeout=SIGN_IN_TIMEOUT_S,
    )


async def _chat(http: aiohttp.ClientSession, bridge: RunningBridge, text: str) -> tuple[int, Any]:
    body = {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": text}]}
    async with http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
        return resp.status, await resp.json()


async def test_an_account_at_its_limit_on_one_instance_is_skipped_by_the_other_when_store_is_shared(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    settings_a = await _instance_settings(tmp_path / "a", own_redis.url)
    settings_b = await _instance_settings(tmp_path / "b", own_redis.url)
    async with (
        running_bridge(settings_a) as a,
        running_bridge(settings_b) as b,
        aiohttp.ClientSession() as http,
    ):
        await _signed_in(a)
        await _signed_in(b)
        # Equal headroom: A's first request goes to "limited", hits its limit, moves to "spare".
        status, body = await _chat(http, a, "[[reply=from a]]")
        assert status == 200, body
        assert any(LIMITED_KEY_MARKER in c for c in a.demo.credentials)
        reset_at = a.app[ACCOUNTS]["limited"].local_reset_at()
        assert reset_at is not None

        limited_on_b = b.app[ACCOUNTS]["limited"]
        await wait_until(lambda: limited_on_b.usage_reset_at() == reset_at, timeout=SHARE_TIMEOUT_S)
        status, body = await _chat(http, b, "[[reply=from b]]")
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "from b"
        # B never asked the model with the limited account: it knew from A.
        assert b.demo.credentials
        assert not any(LIMITED_KEY_MARKER in c for c in b.demo.credentials)
        assert limited_on_b.local_reset_at() is None

        async with http.get(f"{b.base_url}/readyz") as resp:
            ready = await resp.json()
        assert ready["accounts"]["limited"]["resting_until"] == reset_at
        assert ready["accounts"]["spare"]["resting_until"] is None
        async with http.get(f"{b.base_url}/metrics") as resp:
            resting = {
                line.split()[0]: float(line.split()[1])
                for line in (await resp.text()).splitlines()
                if line.startswith("codex_bridge_account_resting_until_seconds{")
            }
        assert resting == {
            'codex_bridge_account_resting_until_seconds{account="limited"}': reset_at,
            'codex_bridge_account_resting_until_seconds{account="spare"}': 0,
        }

        probe = redis.Redis.from_url(own_redis.url)
        try:
            ttl = await probe.ttl(f"{KEY_PREFIX}rest:limited")
        finally:
            await probe.aclose()
        assert 0 < ttl <= LIMITED_KEY_RESET_S


class _Worker:
    """What `account_rank` reads of a worker: its account's name."""

    def __init__(self, account: str) -> None:
        self.config = type("Config", (), {"account": account})()


async def test_rests_fall_back_to_local_state_while_redis_is_down_and_are_shared_when_it_returns(
    own_redis: RedisServer,
) -> None:
    on_a = {"work": AccountState(), "home": AccountState()}
    on_b = {"work": AccountState(), "home": AccountState()}
    a = SharedAccountRests(own_redis.url, on_a)
    b = SharedAccountRests(own_redis.url, on_b)
    rank_b = account_rank(on_b)
    try:
        now = time.time()
        on_a["work"].rest_until = int(now) + 600
        await a.sync(now)
        await b.sync(now)
        assert on_b["work"].usage_reset_at(now) == int(now) + 600
        assert rank_b(_Worker("work")) is None and rank_b(_Worker("home")) == 100.0

        own_redis.stop()
        # A rest found while Redis is away stays local, and nobody's sync fails.
        on_a["home"].rest_until = int(now) + 900
        await a.sync(now)
        await b.sync(now)
        assert not a.available and not b.available
        assert on_a["home"].usage_reset_at(now) == int(now) + 900
        assert rank_b(_Worker("home")) == 100.0
        # What B had read before still holds until its reset.
        assert rank_b(_Worker("work")) is None

        own_redis.start()
        await a.sync(now)
        await b.sync(now)
        assert a.available and b.available
        assert on_b["home"].usage_reset_at(now) == int(now) + 900
        assert rank_b(_Worker("home")) is None
        # A shorter rest found later does not shorten the shared one.
        on_b["work"].rest_until = int(now) + 60
        await b.sync(now)
        await a.sync(now)
        assert on_a["work"].shared_rest_until == int(now) + 600
    finally:
        await a.close()
        await b.close()
