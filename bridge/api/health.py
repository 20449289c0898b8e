"""`/healthz` (the process answers) and `/readyz` (a worker is ready to take turns).

Traefik health-checks `/readyz`, so it turns 503 while no worker is ready,
while the bridge drains on shutdown, and while Codex is not signed in (and
its model provider needs an account: `reason: codex_not_signed_in`). The
account's state (signed in, type, refused credentials) is in the body; not
its email, plan or rate limits: `/readyz` answers without a key, and those are
for key holders (`/v1/usage`) and the operator (`codex-bridge account`).
Its `store` field says whether the response store answers within
`READY_STORE_TIMEOUT_S` (a shared Redis can be down while the workers serve).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson
from aiohttp import web

from bridge.appkeys import ACCOUNT, ACCOUNTS, POOL, STORE
from bridge.codex.account import NOT_SIGNED_IN_REASON, AccountState
from bridge.store import ResponseStore

# Far below Traefik's 2 s health-check timeout: a Redis that accepts and never answers
# (its own bound is 2 s per call) must not make the probe itself time out.
READY_STORE_TIMEOUT_S: Final = 0.3
# What an unauthenticated caller may learn of an account: whether it can serve, not whose it is.
_PUBLIC_ACCOUNT_FIELDS: Final = ("signed_in", "type", "requires_openai_auth", "credentials_refused")


def _public(state: AccountState) -> dict[str, Any]:
    shown = state.as_json()
    return {name: shown[name] for name in _PUBLIC_ACCOUNT_FIELDS}


async def _store_answers(store: ResponseStore) -> bool:
    try:
        return await asyncio.wait_for(store.ping(), READY_STORE_TIMEOUT_S)
    except TimeoutError:
        return False


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    account = request.app[ACCOUNT]
    accounts = request.app[ACCOUNTS]
    ready = pool.ready_count
    # With a pool of accounts, one signed-out account leaves the others serving.
    signed_out = all(a.signed_out for a in accounts.values())
    body: dict[str, object] = {
        "status": "ready" if ready and not pool.closing and not signed_out else "unavailable",
        "workers_ready": ready,
        "workers": len(pool.workers),
        "dialect": sorted({w.dialect for w in pool.workers if w.ready}),
        "active_turns": pool.active_turns,
        "queued": pool.waiting,
        "account": _public(account),
        # A shared store (Redis) that does not answer leaves the instance ready: chat
        # without previous_response_id still works, so taking it out of rotation would
        # turn a partial outage into a total one. The body says what is missing.
        "store": "ok" if await _store_answers(request.app[STORE]) else "unavailable",
    }
    if len(accounts) > 1:
        body["accounts"] = {
            name: {
                **_public(state),
                "reason": state.reason,
                # At its usage limit, as found here or by any instance sharing the store.
                "resting_until": state.usage_reset_at(),
            }
            for name, state in accounts.items()
        }
    if signed_out:
        body["reason"] = NOT_SIGNED_IN_REASON
        body["message"] = account.status_line()
    elif account.reason is not None:
        body["reason"] = account.reason
    status = 200 if body["status"] == "ready" else 503
    headers = {} if status == 200 else {"Retry-After": "2"}
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )
