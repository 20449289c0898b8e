"""The bridge's one error tree, and the only place that knows its wire form.

Domain code raises these; the HTTP error middleware and the SSE writers turn
them into the OpenAI envelope ``{"error": {message, type, param, code}}``.
Each leaf maps to exactly one ``(status, type, code)``::

    BridgeError                         500 server_error         -
    ├── InvalidRequest                  400 invalid_request_error  (code/param per case)
    │   └── ContextLengthExceeded       400 invalid_request_error  context_length_exceeded
    ├── AuthenticationFailed            401 invalid_request_error  invalid_api_key
    ├── PermissionDenied                403 permission_error       -
    ├── NotFound                        404 invalid_request_error  (code per case)
    │   └── ModelNotFound               404 invalid_request_error  model_not_found
    ├── MethodNotAllowed                405 invalid_request_error  -
    ├── PayloadTooLarge                 413 invalid_request_error  -
    ├── RateLimited                     429 rate_limit_error       rate_limit_exceeded
    │   └── QuotaExceeded               429 insufficient_quota     insufficient_quota
    │       └── UsageLimitReached       429 insufficient_quota     usage_limit_reached
    ├── UpstreamFailed                  502 server_error           upstream_error
    ├── WorkerCrashed                   502 server_error           worker_crashed
    ├── ServiceUnavailable              503 server_error           worker_unavailable
    │   ├── WorkerOverloaded            503 server_error           server_is_overloaded
    │   ├── StoreUnavailable            503 server_error           store_unavailable
    │   ├── CodexNotSignedIn            503 server_error           codex_not_signed_in
    │   └── UpstreamUnauthorized        503 server_error           upstream_unauthorized
    └── DeadlineExceeded                504 server_error           timeout

Knows nothing about aiohttp or Codex: only statuses, types, codes and messages.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BridgeError(Exception):
    """Base of every error that reaches a client. Subclasses fix status/type/code."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    # 5xx errors that a retry will not cure say so, so SDKs do not triple the load.
    retryable: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        if self.status >= 500 and not self.retryable:
            headers["x-should-retry"] = "false"
        return headers


class InvalidRequest(BridgeError):
    status = 400
    type = "invalid_request_error"

    def headers(self) -> dict[str, str]:
        # The same request fails the same way: tell SDKs not to resend it.
        return {**super().headers(), "x-should-retry": "false"}


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class AuthenticationFailed(BridgeError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        # RFC 9110 §11.6.1: a 401 names the scheme the server wants.
        return {**super().headers(), "WWW-Authenticate": 'Bearer realm="codex-bridge"'}


class PermissionDenied(BridgeError):
    status = 403
    type = "permission_error"


class NotFound(BridgeError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.")


class MethodNotAllowed(BridgeError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLarge(BridgeError):
    status = 413
    type = "invalid_request_error"


class RateLimited(BridgeError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class QuotaExceeded(RateLimited):
    type = "insufficient_quota"
    default_code = "insufficient_quota"

    def headers(self) -> dict[str, str]:
        # A spent quota does not come back within an SDK's retry window.
        return {**super().headers(), "x-should-retry": "false"}


class UsageLimitReached(QuotaExceeded):
    """The Codex account's plan is at its usage limit; Retry-After says when it resets."""

    default_code = "usage_limit_reached"


class UpstreamFailed(BridgeError):
    status = 502
    default_code = "upstream_error"


class WorkerCrashed(BridgeError):
    status = 502
    default_code = "worker_crashed"


class ServiceUnavailable(BridgeError):
    status = 503
    default_code = "worker_unavailable"


class StoreUnavailable(ServiceUnavailable):
    """The response store cannot be read or written now: SQLite disk full, read-only or I/O
    error, or the shared store (Redis) does not answer."""

    default_code = "store_unavailable"


class WorkerOverloaded(ServiceUnavailable):
    """Codex (or its model provider) refused work for now: backpressure, always with Retry-After."""

    default_code = "server_is_overloaded"


class CodexNotSignedIn(ServiceUnavailable):
    """Codex has no account and its model provider needs one: an operator must sign in."""

    default_code = "codex_not_signed_in"
    retryable = False


class UpstreamUnauthorized(ServiceUnavailable):
    """The model provider refused Codex's credentials (401/403): an operator must sign in."""

    default_code = "upstream_unauthorized"
    retryable = False


class DeadlineExceeded(BridgeError):
    status = 504
    default_code = "timeout"
