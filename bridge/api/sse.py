"""Server-sent events on an aiohttp StreamResponse: framing, keepalives, disconnects, stalls.

Frames are buffered and leave in one `write` per `flush()` (aiohttp applies
backpressure): the caller flushes before it waits for something (`drive`
does, before waiting for a turn event), so frames that are ready together —
the headers and the first frames, the last delta with the finish chunk and
`[DONE]` — cost one send, not one each; `end()` sends what is left with the
end of the chunked body. A buffer past `FLUSH_BYTES` is flushed at once. A
write to a client that went away raises `ClientGone`; a write that waits
longer than `server.sse_write_timeout_s` for a client that does not read
raises `ClientStalled` (a `ClientGone`). Handlers treat both as the end of
the request: their turn is interrupted and its slot freed on the way out, and
`close()` then drops the connection instead of waiting to flush it. A write
cancelled while it waited (the request's overall deadline) marks the stream
stalled too, so no later frame waits again. Knows SSE framing; knows no
OpenAI object shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from typing import ClassVar, Final

import structlog
from aiohttp import web

from bridge.ops.access import ACCESS

log = structlog.get_logger("bridge.sse")

SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # nginx and some proxies buffer responses unless told not to.
    "X-Accel-Buffering": "no",
}
KEEPALIVE_FRAME: Final = b": keepalive\n\n"
DONE_FRAME: Final = b"data: [DONE]\n\n"
# Bytes a chunked-encoding frame adds around its data (size line and CRLFs).
_CHUNK_OVERHEAD: Final = 32
# Buffered frames past this size are written without waiting for a flush:
# aiohttp's own drain threshold, so backpressure starts where it did per frame.
FLUSH_BYTES: Final = 64 * 1024


class ClientGone(Exception):
    """The HTTP client closed the connection while we were streaming."""

    outcome: ClassVar[str] = "client_disconnected"


class ClientStalled(ClientGone):
    """The HTTP client stopped reading: a write waited past `server.sse_write_timeout_s`."""

    outcome: ClassVar[str] = "client_stalled"


class _BufferedHeadersResponse(web.StreamResponse):
    # aiohttp sends a stream's headers in a write of their own when it is
    # prepared; held back, they leave with the first frames (one send, not two).
    _send_headers_immediately = False


class SSEStream:
    def __init__(
        self,
        request: web.Request,
        headers: Mapping[str, str] | None = None,
        *,
        write_timeout_s: float,
    ) -> None:
        self._request = request
        self._response = _BufferedHeadersResponse(
            status=200, headers={**SSE_HEADERS, **(headers or {})}
        )
        self._write_timeout_s = write_timeout_s
        self._high_water = 0
        self._stalled = False
        self._ended = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.frames = 0
        """Frames handed to the stream so far."""

    async def open(self) -> None:
        """Fixes the status line and headers; they are sent with the first flush."""
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await self._response.prepare(self._request)
        except TimeoutError as exc:
            raise self._stall() from exc
        except (ConnectionResetError, RuntimeError) as exc:
            raise ClientGone() from exc
        transport = self._request.transport
        if transport is not None:
            self._high_water = transport.get_write_buffer_limits()[1]

    def _has_room(self, size: int) -> bool:
        """True when a write of `size` bytes cannot wait: the transport takes it unpaused."""
        transport = self._request.transport
        if transport is None or self._request.protocol.writing_paused:
            return False
        return transport.get_write_buffer_size() + size + _CHUNK_OVERHEAD <= self._high_water

    async def _add(self, frame: bytes) -> None:
        if self._stalled:
            raise ClientStalled()
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        self.frames += 1
        if self._pending_bytes >= FLUSH_BYTES:
            await self.flush()

    def _take_pending(self) -> bytes:
        chunk = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        return chunk

    async def flush(self) -> None:
        """Writes the buffered frames (and, the first time, the headers) in one write."""
        if self._stalled:
            raise ClientStalled()
        if self._pending:
            await self._write(self._take_pending())

    async def _write(self, frame: bytes) -> None:
        with self._client_errors():
            if self._has_room(len(frame)):
                # The delta path: this write cannot wait, so no timer is armed.
                await self._response.write(frame)
            else:
                async with asyncio.timeout(self._write_timeout_s):
                    await self._response.write(frame)

    @contextlib.contextmanager
    def _client_errors(self) -> Iterator[None]:
        """A write's failures as the client's: stalled (timed out or cut) or gone."""
        try:
            yield
        except TimeoutError as exc:
            raise self._stall() from exc
        except asyncio.CancelledError:
            # A deadline (or the client leaving) cut a write that waited for
            # the client: any further frame would wait the same way.
            self._stalled = True
            raise
        except (ConnectionResetError, RuntimeError) as exc:
            raise ClientGone() from exc

    def _stall(self) -> ClientStalled:
        self._stalled = True
        log.warning("client stopped reading its stream", write_timeout_s=self._write_timeout_s)
        return ClientStalled()

    async def data(self, payload: bytes) -> None:
        await self._add(b"data: " + payload + b"\n\n")

    async def event(self, event_type: str, payload: bytes) -> None:
        await self._add(b"event: " + event_type.encode() + b"\ndata: " + payload + b"\n\n")

    async def keepalive(self) -> None:
        await self._add(KEEPALIVE_FRAME)

    async def done(self) -> None:
        await self._add(DONE_FRAME)

    async def end(self) -> None:
        """Sends the buffered frames with the end of the body, in one write; raises like a write."""
        if self._stalled:
            raise ClientStalled()
        if self._ended:
            return
        with self._client_errors():
            async with asyncio.timeout(self._write_timeout_s):
                await self._response.write_eof(self._take_pending())
        self._ended = True
        record = self._request.get(ACCESS)
        if record is not None:
            record.sent_status = self._response.status

    async def close(self) -> web.StreamResponse:
        """Ends the stream if `end()` did not; a stalled client's connection is dropped, not flushed."""
        if not self._response.prepared:
            return self._response  # never opened: aiohttp answers (or finds the client gone)
        if not self._stalled:
            with contextlib.suppress(ClientGone):
                await self.end()
        if self._stalled:
            # Frames still buffered for a client that does not read would keep
            # the socket (and a flush that never ends) alive: drop them.
            transport = self._request.transport
            if transport is not None:
                transport.abort()
        return self._response
