"""Stop sequences and token limits, enforced by the bridge on the reply text as it streams.

Codex has neither, so the bridge cuts the text itself: a stop sequence is
matched across delta boundaries (text that might begin one is held back
until it is clear), the text before it is kept and the stop text is not;
a token limit cuts at the exact token boundary. Either ends the choice, and
the caller interrupts the turn. Knows text and tokens; no OpenAI shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.tokens import count_tokens, first_tokens


class OutputLimiter:
    __slots__ = ("_emitted", "_held", "_max_tokens", "_stops", "_tokens", "done")

    def __init__(self, stops: Sequence[str], max_tokens: int | None) -> None:
        self._stops = tuple(s for s in stops if s)
        self._max_tokens = max_tokens
        self._held = ""
        self._emitted: list[str] = []
        self._tokens = 0
        self.done = False

    @property
    def active(self) -> bool:
        return bool(self._stops) or self._max_tokens is not None

    @property
    def tokens(self) -> int:
        """Tokens of the text let through so far."""
        return self._tokens

    def feed(self, text: str) -> tuple[str, str | None]:
        """Returns the text to send now and, when a limit was hit, "stop" or "length"."""
        if self.done:
            return "", None
        reason: str | None = None
        out = self._held + text
        self._held = ""
        if self._stops:
            cut = min((i for i in (out.find(s) for s in self._stops) if i >= 0), default=-1)
            if cut >= 0:
                out, reason = out[:cut], "stop"
            else:
                keep = self._partial_stop_suffix(out)
                if keep:
                    out, self._held = out[:-keep], out[-keep:]
        if self._max_tokens is not None and out:
            out, hit = self._within_budget(out)
            if hit:
                reason = "length"
        elif out:
            self._tokens += count_tokens(out)
        if out:
            self._emitted.append(out)
        if reason is not None:
            self.done = True
            self._held = ""
        return out, reason

    def flush(self) -> str:
        """At the end of the turn: the held-back text that never became a stop sequence."""
        held, self._held = self._held, ""
        if not held or self.done:
            return ""
        out, _ = self._within_budget(held) if self._max_tokens is not None else (held, False)
        return out

    def _partial_stop_suffix(self, text: str) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _within_budget(self, out: str) -> tuple[str, bool]:
        assert self._max_tokens is not None
        added = count_tokens(out)
        if self._tokens + added < self._max_tokens:
            self._tokens += added
            return out, False
        # Near the limit, count exactly over the whole text: tokens do not
        # add up across arbitrary delta boundaries.
        before = "".join(self._emitted)
        allowed = first_tokens(before + out, self._max_tokens)
        out = allowed[len(before) :]
        self._tokens = min(self._max_tokens, count_tokens(allowed))
        return out, self._tokens >= self._max_tokens
