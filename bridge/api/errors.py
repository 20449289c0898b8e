"""The one boundary where errors become HTTP: the error middleware.

Turns `BridgeError`s, aiohttp's own HTTP exceptions (404/405/413) and anything
unexpected into the OpenAI envelope with the right status, so no HTML page or
traceback ever reaches a client. Streams report their errors in-band
(`bridge.api.sse`); this covers everything before the first byte.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from aiohttp import web

from bridge.api.validation import IGNORED_HEADERS
from bridge.errors import (
    BridgeError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)

log = structlog.get_logger("bridge.api")


def error_response(error: BridgeError) -> web.Response:
    return web.Response(
        body=orjson.dumps(error.envelope()),
        status=error.status,
        content_type="application/json",
        headers=error.headers(),
    )


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> BridgeError:
    if exc.status == 404:
        return NotFound(f"Invalid URL ({request.method} {request.path})")
    if exc.status == 405:
        return MethodNotAllowed(f"Method {request.method} is not allowed for {request.path}")
    if exc.status == 413:
        return PayloadTooLarge(
            f"Request body is too large (limit {request.app._client_max_size} bytes)."
        )
    if exc.status < 500:
        return InvalidRequest(exc.reason or "Bad request.")
    return BridgeError(exc.reason or "Server error.")


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except BridgeError as exc:
        response = error_response(exc)
        # What the request's parameters left unused holds for its error answer too.
        response.headers.update(request.get(IGNORED_HEADERS, {}))
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        mapped = _from_http_exception(request, exc)
        response = error_response(mapped)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error", path=request.path)
        return error_response(BridgeError("The server had an error while processing your request."))
