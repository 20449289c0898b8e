"""Server-sent events on an aiohttp StreamResponse: framing, keepalives, disconnects.

Frames are written one per `write` (aiohttp applies backpressure). A write to
a client that went away raises `ClientGone`, which handlers treat as the end
of the request (their turn is interrupted on the way out). Knows SSE framing;
knows no OpenAI object shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import web

SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # nginx and some proxies buffer responses unless told not to.
    "X-Accel-Buffering": "no",
}
KEEPALIVE_FRAME: Final = b": keepalive\n\n"
DONE_FRAME: Final = b"data: [DONE]\n\n"


class ClientGone(Exception):
    """The HTTP client closed the connection while we were streaming."""


class SSEStream:
    def __init__(self, request: web.Request, headers: Mapping[str, str] | None = None) -> None:
        self._request = request
        self._response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **(headers or {})})
        self.frames = 0

    async def open(self) -> None:
        await self._response.prepare(self._request)

    async def _write(self, frame: bytes) -> None:
        try:
            await self._response.write(frame)
        except (ConnectionResetError, RuntimeError) as exc:
            raise ClientGone() from exc
        self.frames += 1

    async def data(self, payload: bytes) -> None:
        await self._write(b"data: " + payload + b"\n\n")

    async def event(self, event_type: str, payload: bytes) -> None:
        await self._write(b"event: " + event_type.encode() + b"\ndata: " + payload + b"\n\n")

    async def keepalive(self) -> None:
        await self._write(KEEPALIVE_FRAME)

    async def done(self) -> None:
        await self._write(DONE_FRAME)

    async def close(self) -> web.StreamResponse:
        try:
            await self._response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return self._response
