"""The outermost middleware (request id, access line, metrics, ledger row) and the body gate.

`request_context_middleware` honours a sane inbound `X-Request-Id` (Traefik,
a client) or mints one, binds it to every log line of the request (structlog
contextvars), returns it as `x-request-id` with `openai-processing-ms`, and
writes one access line, the HTTP metrics and the usage-ledger row when the
request ends — including when the client hung up mid-stream. Handlers add
what they know (model, tokens, outcome) to the request's `AccessRecord`
(`bridge.ops.access`). Logs carry no message content and no secrets.

`body_read_middleware` runs after authentication and reads the request body
under a semaphore (`server.max_concurrent_body_reads`), so the bridge holds
at most that many uploads in memory at once whatever callers send; a request
that cannot start its read within the admission queue's timeout gets 503
with `Retry-After`. Handlers then get the body already read.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Any, Final

import structlog
from aiohttp import web

from bridge.errors import InvalidRequest, PayloadTooLarge, ServiceUnavailable
from bridge.ops.access import ACCESS as ACCESS
from bridge.ops.access import AccessRecord as AccessRecord
from bridge.ops.metrics import Metrics
from bridge.ops.usage import USAGE, row_for

log = structlog.get_logger("bridge.access")

REQUEST_ID_MAX_LEN: Final = 128
_REQUEST_ID_OK: Final = re.compile(r"^[A-Za-z0-9._:\-]+$")
# nginx's convention for "client closed the request": not a server status.
CLIENT_CLOSED: Final = 499


METRICS: Final = web.AppKey("metrics", Metrics)


def request_id_from(header: str | None) -> str:
    if header and len(header) <= REQUEST_ID_MAX_LEN and _REQUEST_ID_OK.match(header):
        return header
    return "req_" + secrets.token_hex(16)


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    record = AccessRecord(request_id_from(request.headers.get("X-Request-Id")), time.perf_counter())
    request[ACCESS] = record
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=record.request_id)
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        if record.sent_status is not None:
            status = record.sent_status
        else:
            status = CLIENT_CLOSED
            record.outcome = "client_disconnected"
        raise
    finally:
        _finish(request, record, status)


def _finish(request: web.Request, record: AccessRecord, status: int) -> None:
    elapsed = time.perf_counter() - record.started
    route = route_of(request)
    metrics = request.app[METRICS]
    metrics.http_requests.labels(route, request.method, str(status)).inc()
    ledger = request.app.get(USAGE)
    row = row_for(record, route, status)
    if ledger is not None and row is not None:
        ledger.record(row)
    metrics.http_duration.labels(route, request.method).observe(elapsed)
    if route in ("/healthz", "/readyz", "/metrics") and status < 400:
        return  # probes every few seconds would drown the access log
    fields: dict[str, Any] = {
        "method": request.method,
        "route": route,
        "status": status,
        "duration_ms": round(elapsed * 1000, 1),
        "outcome": record.outcome if status < 400 or record.outcome != "ok" else "error",
    }
    for name in ("model", "prompt_tokens", "completion_tokens", "worker", "key_name"):
        value = getattr(record, name)
        if value is not None:
            fields[name] = value
    if record.ttft_s is not None:
        fields["ttft_ms"] = round(record.ttft_s * 1000, 1)
    log.info("request", **fields)


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs for plain and streamed responses alike, before headers go out."""
    record = request.get(ACCESS)
    if record is None:
        return
    response.headers["x-request-id"] = record.request_id
    response.headers["openai-processing-ms"] = str(
        int((time.perf_counter() - record.started) * 1000)
    )


class BodyReads:
    """At most `limit` request bodies are read at once; a read waits at most `wait_s` to start."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self._slots = asyncio.Semaphore(limit)
        self.wait_s = wait_s
        self.in_use = 0

    async def read(self, request: web.Request) -> None:
        try:
            async with asyncio.timeout(self.wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise ServiceUnavailable(
                "The bridge is reading too many request bodies at once; retry shortly.",
                code="server_busy",
                retry_after=BODY_READ_RETRY_AFTER_S,
            ) from None
        self.in_use += 1
        try:
            async with asyncio.timeout(BODY_READ_TIMEOUT_S):
                await request.read()  # cached: the handler's own read() returns these bytes
        except TimeoutError:
            raise InvalidRequest(
                f"The request body did not arrive within {BODY_READ_TIMEOUT_S:g}s.",
                code="body_timeout",
            ) from None
        finally:
            self.in_use -= 1
            self._slots.release()


BODY_READS: Final = web.AppKey("body_reads", BodyReads)
# A slow upload holds a body-read slot; past this it is cut so a few slow
# clients cannot hold every slot (Traefik's own readTimeout is 60 s too).
BODY_READ_TIMEOUT_S: Final = 60.0
# Body slots free up as fast as uploads arrive: a short retry is right.
BODY_READ_RETRY_AFTER_S: Final = 1.0
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


@web.middleware
async def body_read_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Reads the body of a routed request under the body-read bound, after authentication."""
    if (
        request.method in _BODY_METHODS
        and request.can_read_body
        and request.match_info.http_exception is None
    ):
        limit = request.app._client_max_size
        if request.content_length is not None and request.content_length > limit:
            # Refused from the header alone: nothing of it is read.
            raise PayloadTooLarge(f"Request body is too large (limit {limit} bytes).")
        await request.app[BODY_READS].read(request)
    response: web.StreamResponse = await handler(request)
    return response
