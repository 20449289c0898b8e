"""The Codex account as the bridge sees it: sign-in, credentials refused upstream, rate-limit windows.

One `AccountState` per Codex home, shared by the workers on it. Each worker
reads `account/read` after its handshake and at every health probe, and
passes on `account/updated` and `account/rateLimits/updated`; the state
merges them (a rate-limit update is sparse: it is merged into what was
known, keyed by `limitId`). What the bridge concludes:

- *not signed in*: Codex has no account and its model provider needs one
  (`requiresOpenaiAuth`; the demo model and custom providers do not). Turns
  are refused at once with `CodexNotSignedIn` (503) instead of letting
  Codex retry the OpenAI endpoint for over a minute.
- *credentials refused*: the provider answered 401/403; cleared by the next
  turn that succeeds or a new sign-in.
- *usage limit*: a window at 100 % with a `resetsAt`; `usage_reset_at()` is
  when the plan has room again (the `Retry-After` of `UsageLimitReached`).
  With a shared store, a rest another instance found counts too
  (`shared_rest_until`, kept by `bridge.ops.account_rests`).

An app-server does not re-read `auth.json` once running, so
`CredentialsWatch` tells the supervisor when the file changed (a
`codex-bridge login` beside the daemon) and the worker is restarted.

Knows Codex's account vocabulary; nothing of HTTP or processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

LOGIN_HINT: Final = "codex-bridge login"
NOT_SIGNED_IN_REASON: Final = "codex_not_signed_in"
CREDENTIALS_REFUSED_REASON: Final = "codex_credentials_refused"
AUTH_FILE: Final = "auth.json"
# A window this full is exhausted: the backend refuses turns until it resets.
EXHAUSTED_PERCENT: Final = 100.0
# An account whose usage limit came without a reset time rests this long.
UNKNOWN_RESET_REST_S: Final = 300
# `account/updated` names the auth mode; `account/read` the account type.
_TYPE_LABELS: Final = {"apiKey": "an API key", "chatgpt": "ChatGPT"}
_AUTH_MODE_TYPES: Final = {"apikey": "apiKey", "chatgpt": "chatgpt", "chatgptAuthTokens": "chatgpt"}


@dataclass(frozen=True, slots=True)
class RateWindow:
    limit_id: str
    window: str
    """"primary" (the short window, 5 h on ChatGPT plans) or "secondary" (the week)."""
    used_percent: float
    window_minutes: int | None
    resets_at: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "limit_id": self.limit_id,
            "window": self.window,
            "used_percent": self.used_percent,
            "window_minutes": self.window_minutes,
            "resets_at": self.resets_at,
        }


@dataclass(slots=True)
class AccountState:
    """What the workers of one Codex home know of its account; updated synchronously."""

    known: bool = False
    """An `account/read` answered at least once."""
    account_type: str | None = None
    """"apiKey", "chatgpt", "amazonBedrock", or None when signed out."""
    email: str | None = None
    plan: str | None = None
    requires_openai_auth: bool = False
    credentials_refused: bool = False
    rest_until: int | None = None
    """Set when a usage limit came without any window saying when it resets."""
    shared_rest_until: int | None = None
    """The rest another instance found (epoch seconds; `bridge.ops.account_rests`)."""
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The last rate-limit snapshot per `limitId`, merged from sparse updates."""
    listeners: list[Callable[[AccountState], None]] = field(default_factory=list)

    # -- conclusions -------------------------------------------------------------------
    @property
    def signed_out(self) -> bool:
        return self.known and self.account_type is None and self.requires_openai_auth

    @property
    def reason(self) -> str | None:
        """Why turns cannot reach the model right now, as a fixed string (None: they can)."""
        if self.signed_out:
            return NOT_SIGNED_IN_REASON
        if self.credentials_refused:
            return CREDENTIALS_REFUSED_REASON
        return None

    def status_line(self) -> str:
        if self.signed_out:
            return f"Codex is not signed in: run `{LOGIN_HINT}`"
        if self.credentials_refused:
            return f"the model provider refused Codex's credentials: run `{LOGIN_HINT}`"
        if self.account_type is None:
            return "no Codex account needed (custom provider)" if self.known else "account unknown"
        plan = f", {self.plan} plan" if self.plan else ""
        how = _TYPE_LABELS.get(self.account_type, self.account_type)
        return f"signed in with {how}{plan}"

    def windows(self) -> list[RateWindow]:
        out: list[RateWindow] = []
        for limit_id, snapshot in sorted(self.limits.items()):
            for name in ("primary", "secondary"):
                window = snapshot.get(name)
                if not isinstance(window, dict) or not _number(window.get("usedPercent")):
                    continue
                out.append(
                    RateWindow(
                        limit_id=limit_id,
                        window=name,
                        used_percent=float(window["usedPercent"]),
                        window_minutes=_int_or_none(window.get("windowDurationMins")),
                        resets_at=_int_or_none(window.get("resetsAt")),
                    )
                )
        return out

    def usage_reset_at(self, now: float | None = None) -> int | None:
        """When every exhausted window has reset (epoch seconds), if one is exhausted now,
        as this instance found it or another instance sharing the account's name."""
        now = time.time() if now is None else now
        local = self.local_reset_at(now)
        shared = self.shared_rest_until
        resets = [t for t in (local, shared) if t is not None and t > now]
        return max(resets) if resets else None

    def local_reset_at(self, now: float | None = None) -> int | None:
        """`usage_reset_at` as this instance's own workers found it."""
        now = time.time() if now is None else now
        rested = [self.rest_until] if self.rest_until is not None and self.rest_until > now else []
        resets = rested + [
            w.resets_at
            for w in self.windows()
            if w.used_percent >= EXHAUSTED_PERCENT and w.resets_at is not None and w.resets_at > now
        ]
        return max(resets) if resets else None

    def as_json(self) -> dict[str, Any]:
        return {
            "signed_in": self.account_type is not None,
            "type": self.account_type,
            "email": self.email,
            "plan": self.plan,
            "requires_openai_auth": self.requires_openai_auth,
            "credentials_refused": self.credentials_refused,
            "rate_limits": [w.as_json() for w in self.windows()],
        }

    # -- updates -----------------------------------------------------------------------
    def read(self, result: Any) -> None:
        """An `account/read` answer."""
        if not isinstance(result, dict):
            return
        account = result.get("account")
        before = self.reason
        self.known = True
        self.requires_openai_auth = bool(result.get("requiresOpenaiAuth"))
        if isinstance(account, dict):
            self.account_type = str(account.get("type") or "unknown")
            email, plan = account.get("email"), account.get("planType")
            self.email = email if isinstance(email, str) else None
            self.plan = plan if isinstance(plan, str) else None
        else:
            self.account_type = self.email = self.plan = None
        self._changed(before)

    def notification(self, method: str, params: dict[str, Any]) -> bool:
        """Takes `account/updated` and `account/rateLimits/updated`; False for anything else."""
        if method == "account/updated":
            before = self.reason
            mode = params.get("authMode")
            self.account_type = _AUTH_MODE_TYPES.get(mode, str(mode)) if mode else None
            plan = params.get("planType")
            self.plan = plan if isinstance(plan, str) else None
            if self.account_type is None:
                self.email = None
            self.credentials_refused = False
            self.known = True
            self._changed(before)
            return True
        if method == "account/rateLimits/updated":
            self.merge_limits(params.get("rateLimits"))
            return True
        return False

    def merge_limits(self, snapshot: Any) -> None:
        """Merges a sparse snapshot: present values win, absent or null ones keep the old."""
        if not isinstance(snapshot, dict):
            return
        limit_id = str(snapshot.get("limitId") or "codex")
        known = self.limits.setdefault(limit_id, {})
        for key, value in snapshot.items():
            if value is not None:
                known[key] = value
        plan = snapshot.get("planType")
        if isinstance(plan, str) and self.plan is None:
            self.plan = plan

    def read_limits(self, result: Any) -> None:
        """An `account/rateLimits/read` answer (`rateLimits` plus `rateLimitsByLimitId`)."""
        if not isinstance(result, dict):
            return
        by_id = result.get("rateLimitsByLimitId")
        if isinstance(by_id, dict):
            for snapshot in by_id.values():
                self.merge_limits(snapshot)
        self.merge_limits(result.get("rateLimits"))

    def refused(self) -> None:
        """The provider answered 401/403 to a turn."""
        before = self.reason
        self.credentials_refused = True
        self._changed(before)

    def succeeded(self) -> None:
        """A turn reached the model: whatever was refused is accepted now."""
        if self.credentials_refused:
            before = self.reason
            self.credentials_refused = False
            self._changed(before)

    def _changed(self, before: str | None) -> None:
        if self.reason != before:
            for listener in list(self.listeners):
                listener(self)


class CredentialsWatch:
    """Notices a new `auth.json` in the Codex home (a sign-in or sign-out beside the daemon)."""

    def __init__(self, codex_home: Path) -> None:
        self._path = codex_home / AUTH_FILE
        self._seen = self._fingerprint()

    def _fingerprint(self) -> tuple[int, int] | None:
        try:
            info = self._path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size)

    def reset(self) -> None:
        """A new process read the file as it is now."""
        self._seen = self._fingerprint()

    def changed(self) -> bool:
        return self._fingerprint() != self._seen


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_or_none(value: Any) -> int | None:
    return int(value) if _number(value) else None


def account_rank(accounts: dict[str, AccountState]) -> Callable[[Any], float | None]:
    """The pool's `rank`: a worker's account headroom in percent, None while it rests.

    An account rests while signed out, refused upstream, or at a usage limit
    (until the exhausted window's reset). Headroom is what its fullest
    window has left; unknown windows count as empty.
    """

    def rank(worker: Any) -> float | None:
        state = accounts.get(worker.config.account)
        if state is None:
            return 0.0
        if state.reason is not None or state.usage_reset_at() is not None:
            return None
        return EXHAUSTED_PERCENT - max((w.used_percent for w in state.windows()), default=0.0)

    return rank
