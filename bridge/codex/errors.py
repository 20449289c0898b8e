"""Maps Codex's `codexErrorInfo` (v2 `error` / failed `turn.error`) to bridge errors.

Knows Codex's error vocabulary and the bridge error tree; nothing about HTTP.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Final

from bridge.codex.account import LOGIN_HINT, UNKNOWN_RESET_REST_S, AccountState
from bridge.errors import (
    BridgeError,
    ContextLengthExceeded,
    QuotaExceeded,
    RateLimited,
    UpstreamFailed,
    UpstreamUnauthorized,
    UsageLimitReached,
    WorkerOverloaded,
)

_GENERIC_UPSTREAM = "The model provider failed to produce a response."
# What an overloaded worker or provider tells the client to wait before retrying.
OVERLOAD_RETRY_AFTER_S: Final = 1.0


UNAUTHORIZED_MESSAGE: Final = (
    "The model provider refused the Codex account's credentials ({detail}). "
    f"Sign in again on the bridge host with `{LOGIN_HINT}`."
)


def error_from_codex(error: Any, *, account: AccountState | None = None) -> BridgeError:
    """Build the bridge error for a Codex `TurnError` object (`{message, codexErrorInfo, ...}`).

    `account` is the worker's Codex home: a usage limit takes its reset time
    from the exhausted window (`account/rateLimits/updated` arrives just
    before the error), and a refused credential is recorded there.
    """
    if not isinstance(error, dict):
        return UpstreamFailed(_GENERIC_UPSTREAM)
    message = str(error.get("message") or _GENERIC_UPSTREAM)
    info = error.get("codexErrorInfo")
    kind, http_status = _kind_of(info)
    if kind == "contextWindowExceeded":
        return ContextLengthExceeded(message, param="messages")
    if kind == "usageLimitExceeded":
        return usage_limit_error(message, account)
    if kind == "sessionBudgetExceeded":
        return QuotaExceeded(message)
    if kind == "rateLimitExceeded" or http_status == 429:
        return RateLimited(message, retry_after=1)
    if kind in ("serverOverloaded", "flexUnavailable"):
        return WorkerOverloaded(message, retry_after=OVERLOAD_RETRY_AFTER_S)
    if kind == "unauthorized" or http_status in (401, 403):
        if account is not None:
            account.refused()
        return UpstreamUnauthorized(UNAUTHORIZED_MESSAGE.format(detail=message))
    return UpstreamFailed(message)


def usage_limit_error(
    message: str, account: AccountState | None, now: float | None = None
) -> UsageLimitReached:
    """429 naming the plan and its reset time; Retry-After counts down to that reset."""
    now = time.time() if now is None else now
    reset_at = account.usage_reset_at(now) if account is not None else None
    plan = f" ({account.plan} plan)" if account is not None and account.plan else ""
    if reset_at is None:
        if account is not None:
            account.rest_until = int(now) + UNKNOWN_RESET_REST_S
        return UsageLimitReached(
            f"The Codex account{plan} reached its usage limit. Codex says: {message}"
        )
    when = datetime.fromtimestamp(reset_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return UsageLimitReached(
        f"The Codex account{plan} reached its usage limit; it resets at {when}.",
        retry_after=max(1.0, reset_at - now),
    )


def _kind_of(info: Any) -> tuple[str, int | None]:
    """Returns the variant name and the upstream HTTP status if Codex forwarded one."""
    if isinstance(info, str):
        return info, None
    if isinstance(info, dict) and len(info) == 1:
        ((kind, detail),) = info.items()
        status = detail.get("httpStatusCode") if isinstance(detail, dict) else None
        return str(kind), status if isinstance(status, int) else None
    return "other", None
