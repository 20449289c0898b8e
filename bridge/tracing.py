"""Optional OpenTelemetry traces (off by default): request -> admission -> turn -> JSON-RPC calls.

With `tracing.otlp_endpoint` set, `build_provider` exports spans over
OTLP/HTTP in batches; `bridge.api.tracing.tracing_middleware` opens the
request's server span (continuing an inbound W3C `traceparent`) and makes
its tracer the current one for everything the request runs, so the turn
session (`bridge.api.turns`) and the JSON-RPC connection
(`bridge.worker.rpc`) add child spans through `tracer()` without knowing
whether tracing is on: outside a traced request it is a no-op tracer.
Knows OpenTelemetry; no HTTP handlers, no Codex protocol.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Final

from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import NoOpTracer, Tracer

# One export must not hold a span batch (or shutdown) longer than this.
EXPORT_TIMEOUT_S: Final = 10.0

_NO_TRACER: Final = NoOpTracer()
_CURRENT: ContextVar[Tracer] = ContextVar("codex_bridge_tracer", default=_NO_TRACER)

PROVIDER: Final = web.AppKey("tracer_provider", TracerProvider)


def tracer() -> Tracer:
    """The current request's tracer; a no-op one outside traced requests."""
    return _CURRENT.get()


def use_tracer(current: Tracer) -> Token[Tracer]:
    return _CURRENT.set(current)


def reset_tracer(token: Token[Tracer]) -> None:
    _CURRENT.reset(token)


def build_provider(
    service_name: str,
    version: str,
    *,
    endpoint: str | None = None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """A provider of the bridge's own (never the process-global one): OTLP/HTTP to
    `endpoint` in batches, or `exporter` span by span (tests)."""
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name, SERVICE_VERSION: version})
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if endpoint is not None:
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S),
                export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
            )
        )
    return provider
