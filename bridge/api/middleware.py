"""The outermost middleware: request id, access log line, HTTP metrics.

Honours a sane inbound `X-Request-Id` (Traefik, a client) or mints one,
binds it to every log line of the request (structlog contextvars), returns
it as `x-request-id` with `openai-processing-ms`, and writes one access line
and the HTTP metrics when the request ends — including when the client hung
up mid-stream. Handlers add what they know (model, tokens, outcome) to the
request's `AccessRecord`. Logs carry no message content and no secrets.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiohttp import web

from bridge.ops.metrics import Metrics
from bridge.ops.usage import USAGE, UsageRow

log = structlog.get_logger("bridge.access")

REQUEST_ID_MAX_LEN: Final = 128
_REQUEST_ID_OK: Final = re.compile(r"^[A-Za-z0-9._:\-]+$")
# nginx's convention for "client closed the request": not a server status.
CLIENT_CLOSED: Final = 499


@dataclass(slots=True)
class AccessRecord:
    request_id: str
    started: float
    model: str | None = None
    outcome: str = "ok"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    ttft_s: float | None = None
    worker: int | None = None
    key_name: str | None = None


ACCESS: Final = web.RequestKey("access", AccessRecord)
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
    if ledger is not None and record.model is not None and record.prompt_tokens is not None:
        ledger.record(
            UsageRow(
                ts=time.time(),
                key_name=record.key_name or "anonymous",
                model=record.model,
                endpoint=route,
                status=status,
                input_tokens=record.prompt_tokens,
                cached_tokens=record.cached_tokens,
                output_tokens=record.completion_tokens or 0,
                reasoning_tokens=record.reasoning_tokens,
            )
        )
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
