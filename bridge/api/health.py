"""`/healthz` (the process answers) and `/readyz` (a worker is ready to take turns).

Traefik health-checks `/readyz`, so it turns 503 while no worker is ready,
while the bridge drains on shutdown, and while Codex is not signed in (and
its model provider needs an account: `reason: codex_not_signed_in`). The
account (sign-in, refused credentials, rate-limit windows) is in the body.
Its `store` field says whether the response store answers (a shared Redis
can be down while the workers serve).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from bridge.appkeys import ACCOUNT, ACCOUNTS, POOL, STORE
from bridge.codex.account import NOT_SIGNED_IN_REASON


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
        "account": account.as_json(),
        # A shared store (Redis) that does not answer leaves the instance ready: chat
        # without previous_response_id still works, so taking it out of rotation would
        # turn a partial outage into a total one. The body says what is missing.
        "store": "ok" if await request.app[STORE].ping() else "unavailable",
    }
    if len(accounts) > 1:
        body["accounts"] = {
            name: {
                **state.as_json(),
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
