"""Stop sequences and token limits, enforced by the bridge on the reply text as it streams.

Codex has neither, so the bridge cuts the text itself: a stop sequence is
matched across delta boundaries (text that might begin one is held back
until it is clear), the text before it is kept and the stop text is not;
a token limit cuts at the exact token boundary. Either ends the choice, and
the caller interrupts the turn. Knows text and tokens; no OpenAI shapes.

Matching is linear in the reply: each stop sequence has a KMP automaton
whose state survives between deltas, so every character is looked at once
per stop sequence (plus amortised fall-backs), the held-back text never
exceeds the longest stop sequence, and nothing already sent is scanned
again. Stop sequences are capped at `MAX_STOP_CHARS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from bridge.errors import InvalidRequest
from bridge.tokens import count_tokens, first_tokens

MAX_STOP_SEQUENCES: Final = 4
"""OpenAI's limit on `stop`."""
MAX_STOP_CHARS: Final = 256
"""Longest accepted stop sequence: bounds the text held back between deltas and the
per-delta work, so a caller cannot make matching expensive with huge stop strings."""


def stop_sequences(stop: str | Sequence[str] | None, *, param: str = "stop") -> tuple[str, ...]:
    """The request's stop sequences (empty ones dropped); 400 past the caps."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(
            f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed; got {len(stops)}.",
            param=param,
            code="array_above_max_length",
        )
    for i, text in enumerate(stops):
        if len(text) > MAX_STOP_CHARS:
            raise InvalidRequest(
                f"Stop sequences may be at most {MAX_STOP_CHARS} characters long; "
                f"{param}[{i}] has {len(text)}.",
                param=param if isinstance(stop, str) else f"{param}[{i}]",
                code="string_above_max_length",
            )
    return tuple(s for s in stops if s)


class _StopMatcher:
    """Knuth-Morris-Pratt over a stream: `state` = length of the stop's prefix the text ends with."""

    __slots__ = ("_fail", "_stop", "state", "steps")

    def __init__(self, stop: str) -> None:
        self._stop = stop
        # _fail[i]: the longest proper border of stop[: i + 1].
        fail = [0] * len(stop)
        k = 0
        for i in range(1, len(stop)):
            while k and stop[i] != stop[k]:
                k = fail[k - 1]
            if stop[i] == stop[k]:
                k += 1
            fail[i] = k
        self._fail = fail
        self.state = 0
        self.steps = 0
        """Characters examined one by one, and fall-backs: the work done, for tests."""

    def scan(self, text: str) -> int:
        """Feeds `text`; returns the index just past the first complete match, or -1."""
        stop, fail, state = self._stop, self._fail, self.state
        first, size, i, end, steps = stop[0], len(stop), 0, len(text), 0
        while i < end:
            if state == 0:
                # Nothing matched so far: jump (in C) to the next possible start.
                i = text.find(first, i)
                if i < 0:
                    break
            ch = text[i]
            steps += 1
            while state and stop[state] != ch:
                state = fail[state - 1]
                steps += 1
            if stop[state] == ch:
                state += 1
                if state == size:
                    self.state, self.steps = state, self.steps + steps
                    return i + 1
            i += 1
        self.state, self.steps = state, self.steps + steps
        return -1


class OutputLimiter:
    __slots__ = ("_emitted", "_held", "_matchers", "_max_tokens", "_tokens", "done")

    def __init__(self, stops: Sequence[str], max_tokens: int | None) -> None:
        self._matchers = tuple(_StopMatcher(s) for s in stops if s)
        self._max_tokens = max_tokens
        self._held = ""
        self._emitted: list[str] = []
        self._tokens = 0
        self.done = False

    @property
    def active(self) -> bool:
        return bool(self._matchers) or self._max_tokens is not None

    @property
    def tokens(self) -> int:
        """Tokens of the text let through so far."""
        return self._tokens

    @property
    def held(self) -> int:
        """Characters held back because they might begin a stop sequence."""
        return len(self._held)

    @property
    def steps(self) -> int:
        """Stop-matching work so far (characters examined and fall-backs, all stops)."""
        return sum(m.steps for m in self._matchers)

    def feed(self, text: str) -> tuple[str, str | None]:
        """Returns the text to send now and, when a limit was hit, "stop" or "length"."""
        if self.done:
            return "", None
        reason: str | None = None
        out = self._held + text
        self._held = ""
        if self._matchers:
            out, reason = self._match(out, len(out) - len(text), text)
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

    def _match(self, out: str, offset: int, text: str) -> tuple[str, str | None]:
        """Scans only the new `text` (at `offset` in `out`); the held text is in the states."""
        # The stop that completes first wins, as it would token by token; at
        # the same end, the longer one (it starts earlier). Ordered (end, start).
        first: tuple[int, int] | None = None
        for matcher in self._matchers:
            end = matcher.scan(text)
            if end >= 0:
                hit = (offset + end, offset + end - matcher.state)
                first = hit if first is None else min(first, hit)
        if first is not None:
            return out[: first[1]], "stop"
        keep = max(m.state for m in self._matchers)
        if keep:
            self._held = out[-keep:]
            return out[:-keep], None
        return out, None

    def flush(self) -> str:
        """At the end of the turn: the held-back text that never became a stop sequence."""
        held, self._held = self._held, ""
        if not held or self.done:
            return ""
        out, _ = self._within_budget(held) if self._max_tokens is not None else (held, False)
        return out

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
