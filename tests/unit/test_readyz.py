"""`/readyz`: public, so it says whether accounts can serve but not whose they are; and it
answers within Traefik's health-check timeout whatever the shared store does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, Final, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.api.health import readyz
from bridge.appkeys import ACCOUNT, ACCOUNTS, POOL, STORE
from bridge.codex.account import AccountState
from bridge.redis_store import RedisResponseStore
from bridge.store import MemoryResponseStore, ResponseStore

# Traefik gives up on a health check after 2 s; well under it, and far over the store bound.
PROBE_TIMEOUT_S: Final = 1.5
EMAIL: Final = "owner@example.com"


def _signed_in_account(email: str, plan: str) -> AccountState:
    state = AccountState()
    state.read({"account": {"type": "chatgpt", "email": email, "planType": plan}})
    state.limits = {"codex": {"primary": {"usedPercent": 40, "windowDurationMins": 300}}}
    return state


def _app(store: ResponseStore, accounts: dict[str, AccountState]) -> web.Application:
    app = web.Application()
    worker = SimpleNamespace(dialect="v2", ready=True)
    pool = SimpleNamespace(
        ready_count=1, closing=False, workers=[worker], active_turns=0, waiting=0
    )
    app[POOL] = cast(Any, pool)
    app[ACCOUNTS] = accounts
    app[ACCOUNT] = next(iter(accounts.values()))
    app[STORE] = store
    app.router.add_get("/readyz", readyz)
    return app


async def _get_readyz(app: web.Application) -> tuple[int, dict[str, Any]]:
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            async with http.get(server.make_url("/readyz")) as resp:
                return resp.status, await resp.json()


@pytest.fixture
async def silent_redis_url() -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_readyz_shows_no_email_plan_or_rate_limits_when_accounts_are_signed_in() -> None:
    accounts = {
        "main": _signed_in_account(EMAIL, "pro"),
        "spare": _signed_in_account("spare@example.com", "plus"),
    }
    status, body = await _get_readyz(_app(MemoryResponseStore(), accounts))
    assert status == 200
    shown = [body["account"], *body["accounts"].values()]
    for account in shown:
        assert account["signed_in"] is True and account["type"] == "chatgpt"
        assert not {"email", "plan", "rate_limits"} & set(account)
    assert "example.com" not in str(body)


async def test_readyz_answers_within_the_probe_timeout_when_redis_accepts_and_never_answers(
    silent_redis_url: str,
) -> None:
    store = RedisResponseStore(silent_redis_url)
    try:
        status, body = await _get_readyz(_app(store, {"default": AccountState()}))
    finally:
        await store.close()
    # The instance stays in rotation (plain chat works); the body says what is missing.
    assert status == 200
    assert body["store"] == "unavailable"
