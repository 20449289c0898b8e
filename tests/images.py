"""Image bytes built in the tests: valid PNGs, and headers that declare whatever size a test needs."""

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int = 1, height: int = 1, *, rows: int | None = None) -> bytes:
    """A PNG declaring `width` x `height` (8-bit RGB) whose IDAT holds `rows` rows of pixels.

    With the default, rows match the height (a valid image); a bomb declares
    a huge canvas over a small zlib stream.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    count = height if rows is None else rows
    raw = (b"\x00" + b"\x10\x80\xf0" * width) * count
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def bomb_png(width: int = 14_500, height: int = 14_500) -> bytes:
    """Declares width x height (210 MP at the default) over a few hundred bytes of zlib data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 65_536, 9))
        + _chunk(b"IEND", b"")
    )


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@dataclass
class ImageServer:
    """A tiny HTTP server on 127.0.0.1 for the bridge to fetch images from; records each path hit."""

    base_url: str
    port: int
    hits: list[str] = field(default_factory=list)


# Larger than every test bridge's images.max_bytes.
BIG_BODY_BYTES: Final = 64 * 1024


@asynccontextmanager
async def serving_images(pixel: bytes | None = None) -> AsyncIterator[ImageServer]:
    server = ImageServer(base_url="", port=0)
    image = pixel if pixel is not None else png()
    never = asyncio.Event()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        server.hits.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    async def pixel_png(request: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/png")

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(body=bomb_png(), content_type="image/png")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>not an image</html>", content_type="text/html")

    async def big(request: web.Request) -> web.StreamResponse:
        # Chunked, no Content-Length: only the cap while reading can stop it.
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = png() + b"\x00" * 4096
        for _ in range(BIG_BODY_BYTES // len(chunk) + 1):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.Response:
        hops = int(request.match_info["hops"])
        target = "/pixel.png" if hops == 0 else f"/redirect/{hops - 1}"
        raise web.HTTPFound(target)

    async def to_metadata(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async def stall(request: web.Request) -> web.Response:
        await never.wait()
        raise AssertionError("unreachable")

    app = web.Application(middlewares=[record])
    app.router.add_get("/pixel.png", pixel_png)
    app.router.add_get("/bomb.png", bomb)
    app.router.add_get("/page.html", page)
    app.router.add_get("/big.png", big)
    app.router.add_get("/redirect/{hops}", redirect)
    app.router.add_get("/to-metadata", to_metadata)
    app.router.add_get("/stall.png", stall)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        server.port = runner.addresses[0][1]
        server.base_url = f"http://127.0.0.1:{server.port}"
        yield server
    finally:
        await runner.cleanup()
