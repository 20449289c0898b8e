"""SSE writes: frames that are ready together leave in one send, bytes unchanged.

A real aiohttp server on 127.0.0.1 streams through `SSEStream`; the
connection's transport counts the writes the stream makes, and a client reads
the body back byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.api.sse import DONE_FRAME, KEEPALIVE_FRAME, SSEStream

WRITE_TIMEOUT_S: Final = 5.0
READ_TIMEOUT_S: Final = 10.0
FRAMES: Final = [b'{"n":1}', b'{"n":2}', b'{"n":3}', b'{"n":4}', b'{"n":5}']
EXPECTED_BODY: Final = b"".join(b"data: " + f + b"\n\n" for f in FRAMES) + DONE_FRAME

Script = Callable[[SSEStream], Awaitable[None]]


async def _stream(script: Script) -> tuple[bytes, dict[str, str], int]:
    """Runs `script` on a stream; returns the body the client read, its headers, the writes."""
    writes: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        transport: Any = request.transport
        send, send_all = transport.write, transport.writelines

        def counted_write(data: bytes) -> None:
            writes.append(1)
            send(data)

        def counted_writelines(chunks: Any) -> None:
            writes.append(1)
            send_all(chunks)

        transport.write, transport.writelines = counted_write, counted_writelines
        sse = SSEStream(request, {"x-extra": "1"}, write_timeout_s=WRITE_TIMEOUT_S)
        await sse.open()
        await script(sse)
        return await sse.close()

    app = web.Application()
    app.router.add_get("/sse", handler)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        async with asyncio.timeout(READ_TIMEOUT_S), http.get(server.make_url("/sse")) as resp:
            return await resp.read(), dict(resp.headers), len(writes)


async def test_headers_and_frames_ready_together_leave_in_one_write_when_the_stream_ends() -> None:
    async def script(sse: SSEStream) -> None:
        for frame in FRAMES:
            await sse.data(frame)
        await sse.done()
        await sse.end()

    body, headers, writes = await _stream(script)
    assert body == EXPECTED_BODY
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["x-extra"] == "1"
    # Status line, headers, six frames and the chunked body's end: one send.
    assert writes == 1


async def test_a_flush_sends_what_is_buffered_in_one_write_when_more_frames_follow() -> None:
    async def script(sse: SSEStream) -> None:
        for frame in FRAMES[:3]:
            await sse.data(frame)
        await sse.flush()
        await sse.flush()  # nothing buffered: no write
        await sse.keepalive()
        for frame in FRAMES[3:]:
            await sse.data(frame)
        await sse.done()
        await sse.end()

    body, _, writes = await _stream(script)
    frames = [b"data: " + f + b"\n\n" for f in FRAMES]
    assert body == b"".join(frames[:3]) + KEEPALIVE_FRAME + b"".join(frames[3:]) + DONE_FRAME
    assert writes == 2


async def test_close_sends_the_buffered_frames_with_the_end_when_the_handler_did_not_end() -> None:
    async def script(sse: SSEStream) -> None:
        for frame in FRAMES:
            await sse.data(frame)
        await sse.done()

    body, _, writes = await _stream(script)
    assert body == EXPECTED_BODY
    assert writes == 1
