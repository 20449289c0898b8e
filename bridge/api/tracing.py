"""The request's server span, when tracing is on (`bridge.tracing`).

Continues an inbound W3C `traceparent` (else starts a trace), names the
span by method and route, and records the request id, the API key name and
the status. While the request runs, its tracer is the current one, so
admission, the turn and every JSON-RPC call of it become child spans.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.api.middleware import ACCESS, route_of
from bridge.tracing import PROVIDER, reset_tracer, use_tracer

_PROPAGATOR = TraceContextTextMapPropagator()


@web.middleware
async def tracing_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    provider = request.app.get(PROVIDER)
    if provider is None:
        untraced: web.StreamResponse = await handler(request)
        return untraced
    current = provider.get_tracer("codex-bridge")
    parent = _PROPAGATOR.extract(dict(request.headers))
    token = use_tracer(current)
    try:
        with current.start_as_current_span(
            f"{request.method} {route_of(request)}", context=parent, kind=SpanKind.SERVER
        ) as span:
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("url.path", request.path)
            status = 500
            try:
                response: web.StreamResponse = await handler(request)
                status = response.status
                return response
            finally:
                record = request.get(ACCESS)
                if record is not None:
                    span.set_attribute("codex_bridge.request_id", record.request_id)
                    if record.key_name is not None:
                        span.set_attribute("codex_bridge.key_name", record.key_name)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
    finally:
        reset_tracer(token)
