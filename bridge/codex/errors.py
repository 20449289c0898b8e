"""Maps Codex's `codexErrorInfo` (v2 `error` / failed `turn.error`) to bridge errors.

Knows Codex's error vocabulary and the bridge error tree; nothing about HTTP.
"""

from __future__ import annotations

from typing import Any, Final

from bridge.errors import (
    BridgeError,
    ContextLengthExceeded,
    QuotaExceeded,
    RateLimited,
    UpstreamFailed,
    UpstreamUnauthorized,
    WorkerOverloaded,
)

_GENERIC_UPSTREAM = "The model provider failed to produce a response."
# What an overloaded worker or provider tells the client to wait before retrying.
OVERLOAD_RETRY_AFTER_S: Final = 1.0


def error_from_codex(error: Any) -> BridgeError:
    """Build the bridge error for a Codex `TurnError` object (`{message, codexErrorInfo, ...}`)."""
    if not isinstance(error, dict):
        return UpstreamFailed(_GENERIC_UPSTREAM)
    message = str(error.get("message") or _GENERIC_UPSTREAM)
    info = error.get("codexErrorInfo")
    kind, http_status = _kind_of(info)
    if kind == "contextWindowExceeded":
        return ContextLengthExceeded(message, param="messages")
    if kind in ("usageLimitExceeded", "sessionBudgetExceeded"):
        return QuotaExceeded(message)
    if kind == "rateLimitExceeded" or http_status == 429:
        return RateLimited(message, retry_after=1)
    if kind in ("serverOverloaded", "flexUnavailable"):
        return WorkerOverloaded(message, retry_after=OVERLOAD_RETRY_AFTER_S)
    if kind == "unauthorized" or http_status in (401, 403):
        return UpstreamUnauthorized(message)
    return UpstreamFailed(message)


def _kind_of(info: Any) -> tuple[str, int | None]:
    """Returns the variant name and the upstream HTTP status if Codex forwarded one."""
    if isinstance(info, str):
        return info, None
    if isinstance(info, dict) and len(info) == 1:
        ((kind, detail),) = info.items()
        status = detail.get("httpStatusCode") if isinstance(detail, dict) else None
        return str(kind), status if isinstance(status, int) else None
    return "other", None
