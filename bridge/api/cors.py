"""CORS for browser clients: preflight answers and the response headers a page may read.

Off unless `server.cors_origins` lists origins (`*` allows any). A preflight
(`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
origin is answered 204 here, before authentication: browsers never send
credentials on a preflight. It allows the methods the route really has, the
request headers the browser asked for (the OpenAI SDKs send `authorization`,
`content-type` and several `x-stainless-*` headers), and is cached for
`PREFLIGHT_MAX_AGE_S`. A preflight from any other origin gets 403 and no
CORS headers. Actual responses to an allowed origin (errors and streams
included) carry `Access-Control-Allow-Origin` and expose the headers clients
read: request id, rate limits, ignored parameters, `Retry-After`.

No credentials mode: the API authenticates with a bearer header, never with
cookies, so `Access-Control-Allow-Credentials` is never sent and `*` is safe.
Knows HTTP headers and the router; no OpenAI shapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from aiohttp import web

from bridge.errors import PermissionDenied

# Long enough to spare most preflights, short enough that a config change
# reaches browsers soon (Chromium caps it at 7200 s anyway).
PREFLIGHT_MAX_AGE_S: Final = 600
# Headers a browser page may read from a response.
EXPOSED_HEADERS: Final = (
    "x-request-id",
    "openai-processing-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-codex-bridge-ignored-params",
    "x-should-retry",
    "retry-after",
)
# Access-Control-Request-Headers is echoed only if it is a plain list of
# header names of sane size.
_HEADER_LIST: Final = re.compile(
    r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*"
)
MAX_REQUEST_HEADERS_LEN: Final = 2048


class CorsPolicy:
    def __init__(self, origins: Iterable[str]) -> None:
        configured = [o.strip().rstrip("/").lower() for o in origins if o.strip()]
        self.any_origin = "*" in configured
        self._origins = frozenset(o for o in configured if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any_origin or bool(self._origins)

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/").lower() in self._origins

    def allow_origin_value(self, origin: str) -> str:
        return "*" if self.any_origin else origin


CORS: Final = web.AppKey("cors", CorsPolicy)


def _is_preflight(request: web.Request) -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def _allowed_methods(request: web.Request) -> set[str] | None:
    """The methods the requested path has, or None if there is no such route."""
    exception = request.match_info.http_exception
    if exception is None:
        return {request.method}
    if isinstance(exception, web.HTTPMethodNotAllowed):
        return set(exception.allowed_methods)
    return None


@web.middleware
async def cors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Answers preflights (before authentication); everything else passes through."""
    policy = request.app[CORS]
    if not policy.enabled or not _is_preflight(request):
        response: web.StreamResponse = await handler(request)
        return response
    methods = _allowed_methods(request)
    if methods is None:
        response = await handler(request)  # no such route: the usual 404
        return response
    origin = request.headers["Origin"]
    if not policy.allows(origin):
        raise PermissionDenied(
            "This origin is not allowed to call the API (server.cors_origins).",
        )
    headers = {
        "Access-Control-Allow-Origin": policy.allow_origin_value(origin),
        "Access-Control-Allow-Methods": ", ".join(sorted(methods - {"HEAD", "OPTIONS"})),
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    asked = request.headers.get("Access-Control-Request-Headers", "").strip()
    if asked and len(asked) <= MAX_REQUEST_HEADERS_LEN and _HEADER_LIST.fullmatch(asked):
        headers["Access-Control-Allow-Headers"] = asked
    return web.Response(status=204, headers=headers)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the CORS headers of an actual response, streams and errors alike."""
    policy = request.app[CORS]
    if not policy.enabled or _is_preflight(request):
        return  # a preflight's answer carries its own headers
    if not policy.any_origin:
        # The answer differs by Origin: shared caches must key on it.
        response.headers.add("Vary", "Origin")
    origin = request.headers.get("Origin")
    if origin is None or not policy.allows(origin):
        return
    response.headers["Access-Control-Allow-Origin"] = policy.allow_origin_value(origin)
    response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
