"""The per-request access record: what one HTTP request did, for the access log and the ledger.

The outermost middleware (`bridge.api.middleware`) creates an `AccessRecord`
for every request and stores it under `ACCESS`; authentication names the
key, the endpoint names the model, turn sessions add the turns they started
and the tokens Codex reported. When the request ends the record becomes one
access line, the HTTP metrics and (if a turn ran) one usage-ledger row.

Lives in `ops/` so that both layers can use it: `api/` fills it in, `ops/`
(auth, usage) reads and writes it, and `ops/` never imports `api/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web


@dataclass(slots=True)
class AccessRecord:
    request_id: str
    started: float
    model: str | None = None
    outcome: str = "ok"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    ttft_s: float | None = None
    worker: int | None = None
    key_name: str | None = None
    turns: int = 0
    """Codex turns this request started or continued: each one is billed, whatever the outcome."""
    sent_status: int | None = None
    """Status of a response already sent whole (a stream past its last byte): a client that
    hangs up while the handler still cleans up did not cut that response short."""


ACCESS: Final = web.RequestKey("access", AccessRecord)
