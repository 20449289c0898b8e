"""`/healthz` (the process answers) and `/readyz` (a worker is ready to take turns).

Traefik health-checks `/readyz`, so it turns 503 while no worker is ready and
while the bridge drains on shutdown. Its `store` field says whether the
response store answers (a shared Redis can be down while the workers serve).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from bridge.appkeys import POOL, STORE


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def readyz(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    ready = pool.ready_count
    body = {
        "status": "ready" if ready and not pool.closing else "unavailable",
        "workers_ready": ready,
        "workers": len(pool.workers),
        "dialect": sorted({w.dialect for w in pool.workers if w.ready}),
        "active_turns": pool.active_turns,
        "queued": pool.waiting,
        # A shared store (Redis) that does not answer leaves the instance ready: chat
        # without previous_response_id still works, so taking it out of rotation would
        # turn a partial outage into a total one. The body says what is missing.
        "store": "ok" if await request.app[STORE].ping() else "unavailable",
    }
    status = 200 if body["status"] == "ready" else 503
    headers = {} if status == 200 else {"Retry-After": "2"}
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )
