"""OpenTelemetry traces (`tracing.otlp_endpoint`): request -> admission -> turn -> JSON-RPC calls.

Spans are caught with the SDK's in-memory exporter on a real bridge; the
OTLP/HTTP export is checked against a collector stand-in on loopback that
records what it is sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridge.app import make_app
from bridge.demo import DEMO_MODEL_ID
from bridge.tracing import PROVIDER
from tests.harness import bridge_test_settings, running_bridge, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
KEY = "sk-trace-test-key"


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (found,) = [s for s in spans if s.name == name]
    return found


def _parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_traced_request_continues_the_callers_trace_down_to_json_rpc_calls(
    tmp_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    settings = bridge_test_settings(tmp_path / "home", **{"auth.api_keys": (f"tracer:{KEY}:4",)})
    async with (
        running_bridge(settings, span_exporter=exporter) as bridge,
        aiohttp.ClientSession() as http,
    ):
        headers = {
            "Authorization": f"Bearer {KEY}",
            "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
            "X-Request-Id": "req-traced-1",
        }
        body: dict[str, Any] = {"model": DEMO_MODEL_ID, "input": "[[reply=traced]]"}
        async with http.post(f"{bridge.base_url}/v1/responses", json=body, headers=headers) as r:
            assert r.status == 200
        # The turn span ends with the turn's cleanup, just after the response.
        await wait_until(
            lambda: any(s.name == "turn" for s in exporter.get_finished_spans()), timeout=30
        )
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == int(TRACE_ID, 16)]
    server = _one(spans, "POST /v1/responses")
    assert _parent_of(server) == int(PARENT_ID, 16)
    assert server.attributes is not None
    assert server.attributes["codex_bridge.request_id"] == "req-traced-1"
    assert server.attributes["codex_bridge.key_name"] == "tracer"
    assert server.attributes["http.response.status_code"] == 200
    admission = _one(spans, "admission")
    turn = _one(spans, "turn")
    assert _parent_of(admission) == server.context.span_id
    assert _parent_of(turn) == server.context.span_id
    rpc = {s.name for s in spans if _parent_of(s) == turn.context.span_id}
    assert {"rpc thread/start", "rpc turn/start"} <= rpc
    assert turn.attributes is not None and turn.attributes["codex_bridge.thread_id"]


async def test_tracing_is_off_by_default_and_exports_over_otlp_http_when_configured(
    tmp_path: Path,
) -> None:
    received: list[tuple[str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.content_type, await request.read()))
        return web.Response(status=200)

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(collector)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        untraced = make_app(bridge_test_settings(tmp_path / "off"))
        assert PROVIDER not in untraced
        settings = bridge_test_settings(
            tmp_path / "home",
            **{
                "tracing.otlp_endpoint": f"http://127.0.0.1:{port}/v1/traces",
                "tracing.service_name": "codex-bridge-test",
            },
        )
        async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
            body: dict[str, Any] = {"model": DEMO_MODEL_ID, "input": "[[reply=exported]]"}
            async with http.post(f"{bridge.base_url}/v1/responses", json=body) as r:
                assert r.status == 200
        # Leaving the bridge flushed the batch to the collector.
        assert received
        content_type, payload = received[0]
        assert content_type == "application/x-protobuf"
        assert b"codex-bridge-test" in payload and b"POST /v1/responses" in payload
    finally:
        await runner.cleanup()
