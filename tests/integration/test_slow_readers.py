"""Streams against clients that stop reading, and the stream header hold, on the real worker.

A raw socket sends a streaming request and never reads while the demo
model streams a long reply: the bridge must free the turn slot within its
write timeout / overall deadline, interrupt the turn, and buffer no more
than `codex.max_queued_events` events for it (read from the per-turn
backlog histogram, not from RSS).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
import orjson
import pytest

from bridge.api.middleware import METRICS
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until
from tests.sse import parse_sse

pytestmark = pytest.mark.codex

# The default bound: well above the few hundred events one read from a worker
# can carry at once, so only a consumer that stopped reading ever reaches it.
BACKLOG_BOUND: Final = 4096
# Far more text than the kernel's socket buffers absorb: the bridge's writes must block.
LONG_REPLY: Final = "[[words=40000]]"
# Bounds for observable effects; each is many times what the bridge needs.
SETTLE_S: Final = 60.0
# The receive buffer of the client that never reads (the kernel rounds it up).
CLIENT_RCVBUF: Final = 4096


@dataclass
class Stalling:
    bridge: RunningBridge
    sent: list[str]
    """Methods of the requests the bridge sent its worker."""


@pytest.fixture(scope="module")
async def stalling(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stalling]:
    sent: list[str] = []

    def record(direction: Literal["c2s", "s2c"], message: dict[str, Any]) -> None:
        if direction == "c2s" and "method" in message:
            sent.append(str(message["method"]))

    settings = bridge_test_settings(
        tmp_path_factory.mktemp("codex-home-stall"),
        **{
            "codex.max_queued_events": BACKLOG_BOUND,
            "server.sse_write_timeout_s": 1.0,
            "server.stream_header_hold_s": 0.5,
            "server.sse_keepalive_s": 0.2,
        },
    )
    async with running_bridge(settings, also_hook=record) as running:
        yield Stalling(running, sent)


@pytest.fixture(scope="module")
async def deadline_bridge(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RunningBridge]:
    # Only the overall deadline can end a stalled stream here: the write
    # timeout and the backlog bound are far away.
    settings = bridge_test_settings(
        tmp_path_factory.mktemp("codex-home-deadline"),
        **{
            "codex.request_deadline_s": 3.0,
            "codex.max_queued_events": 1_000_000,
            "server.sse_write_timeout_s": 600.0,
        },
    )
    async with running_bridge(settings) as running:
        yield running


def _http_request(bridge: RunningBridge, path: str, body: dict[str, Any]) -> bytes:
    payload = orjson.dumps(body)
    host = bridge.base_url.removeprefix("http://")
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


@contextlib.asynccontextmanager
async def never_reading_client(bridge: RunningBridge, request: bytes) -> AsyncIterator[None]:
    """A connection that sends `request` and never reads a byte while the block runs."""
    loop = asyncio.get_running_loop()
    host, port = bridge.base_url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, request)
        yield
    finally:
        sock.close()


def _sample(bridge: RunningBridge, name: str, labels: dict[str, str]) -> float:
    value = bridge.app[METRICS].registry.get_sample_value(name, labels)
    return value or 0.0


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


async def test_slot_is_freed_and_backlog_bounded_when_a_streaming_client_never_reads(
    stalling: Stalling,
) -> None:
    bridge = stalling.bridge
    interrupts = stalling.sent.count("turn/interrupt")
    request = _http_request(bridge, "/v1/chat/completions", _chat(LONG_REPLY, stream=True))
    async with never_reading_client(bridge, request):
        await wait_until(lambda: bridge.pool.active_turns == 1, timeout=SETTLE_S)
        # The socket stays open and unread: only the bridge can end this.
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=SETTLE_S)
    # The turn was stopped on Codex's side, not left to run to its end.
    assert stalling.sent.count("turn/interrupt") > interrupts
    backlog = "codex_bridge_turn_event_backlog"
    labels = {"endpoint": "chat"}
    observed = _sample(bridge, f"{backlog}_count", labels)
    assert observed >= 1
    # The client really stalled the turn (events piled up past a read's worth) ...
    assert _sample(bridge, f"{backlog}_bucket", {**labels, "le": "1024.0"}) < observed
    # ... and never more than the bound waited for it.
    assert _sample(bridge, f"{backlog}_bucket", {**labels, "le": "4096.0"}) == observed
    stalled = {"endpoint": "chat", "outcome": "client_stalled"}
    assert _sample(bridge, "codex_bridge_turn_duration_seconds_count", stalled) >= 1


async def test_responses_stream_of_a_client_that_never_reads_frees_its_slot(
    stalling: Stalling,
) -> None:
    bridge = stalling.bridge
    body = {"model": DEMO_MODEL_ID, "input": LONG_REPLY, "stream": True, "store": False}
    async with never_reading_client(bridge, _http_request(bridge, "/v1/responses", body)):
        await wait_until(lambda: bridge.pool.active_turns == 1, timeout=SETTLE_S)
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=SETTLE_S)
    stalled = {"endpoint": "responses", "outcome": "client_stalled"}
    assert _sample(bridge, "codex_bridge_turn_duration_seconds_count", stalled) >= 1


async def test_overall_deadline_ends_a_stream_whose_client_never_reads(
    deadline_bridge: RunningBridge,
) -> None:
    bridge = deadline_bridge
    request = _http_request(bridge, "/v1/chat/completions", _chat(LONG_REPLY, stream=True))
    async with never_reading_client(bridge, request):
        await wait_until(lambda: bridge.pool.active_turns == 1, timeout=SETTLE_S)
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=SETTLE_S)
    timed_out = {"endpoint": "chat", "outcome": "timeout"}
    assert _sample(bridge, "codex_bridge_turn_duration_seconds_count", timed_out) >= 1


async def test_bridge_serves_normally_after_a_stalled_stream(
    stalling: Stalling,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{stalling.bridge.base_url}/v1/chat/completions",
            json=_chat("[[reply=still fine]]", stream=True),
        ) as r,
    ):
        assert r.status == 200
        frames = parse_sse((await r.read()).decode())
    text = "".join(
        f.json()["choices"][0]["delta"].get("content") or ""
        for f in frames
        if not f.comment and f.data != "[DONE]" and f.json()["choices"]
    )
    assert text == "still fine"


async def test_a_slow_first_token_still_gets_headers_and_keepalives_after_the_hold(
    stalling: Stalling,
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{stalling.bridge.base_url}/v1/chat/completions",
            json=_chat("[[ttfb_ms=2500]] [[reply=late]]", stream=True),
        ) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        frames = parse_sse((await r.read()).decode())
    # Headers went out at the hold, before the model's first byte: keepalive
    # comments fill the wait, then the content follows.
    first_keepalive = next(i for i, f in enumerate(frames) if f.comment)
    first_content = next(i for i, f in enumerate(frames) if "late" in f.data)
    assert first_keepalive < first_content
