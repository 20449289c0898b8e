"""Conversation affinity: which idle Codex thread already holds a conversation a client re-sends.

A chat-completions client re-sends the whole conversation on every turn.
After a turn whose reply the client received exactly as Codex's thread holds
it (`Turn.keep_thread`), the thread stays loaded and is remembered here as a
`Tip`, under a digest of: the owner (API key name), the thread-level params
it was started with (`v2.thread_start_params` minus the per-worker cwd:
model, instructions, dynamic tools, profile), the turn's reasoning effort and
summary (Codex keeps them for a thread's later turns) and the conversation items it
holds (the request's history, its user message, the reply). The next request
whose owner, params and history hash to that digest takes the tip (exclusive:
a second request with the same prefix starts cold) and runs its turn on that
thread in place: no `thread/start`, no `thread/inject_items`, and the same
upstream `prompt_cache_key` (Codex's thread id) for the whole conversation.

Bounds: at most `max_threads` tips (LRU), `MAX_PER_OWNER` per owner, each for
`ttl_s`; an evicted or expired tip's thread is unloaded on its worker
(`CodexDriver.release_thread`, in the background). A tip whose worker process
changed is dropped (its thread died with the process). Per instance, in
memory. Only ephemeral (non-stored) v2 turns with a new user message take
part (`eligible`).

Knows `TurnRequest`, the v2 thread params and workers; knows no OpenAI shapes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import orjson

from bridge.codex import v2
from bridge.codex.dialect import CodexDriver
from bridge.codex.turn import HistoryItem, HistoryMessage, HistoryToolCall, TurnRequest
from bridge.worker.supervisor import Worker

# One key cannot hold every thread of the index: beyond this many of its own,
# its least recently kept conversation is let go.
MAX_PER_OWNER: Final = 32
# The background sweep of expired tips runs this often at most (expiry is also
# checked on every put and take).
SWEEP_INTERVAL_S: Final = 60.0
DIGEST_SIZE: Final = 16


def eligible(request: TurnRequest) -> bool:
    """Whether a turn may continue a held thread or leave one: ephemeral, new, with user input."""
    return v2.prewarmable(request) and request.input is not None


def start_digest(owner: str, request: TurnRequest, profile: str) -> bytes:
    """The digest of an empty conversation of `owner` on a thread started for `request`."""
    params = v2.thread_start_params(request, v2.ThreadSettings(profile, "", 1.0))
    # The cwd is the worker's own directory, fixed for its life; the tip names the worker.
    params.pop("cwd", None)
    # Codex keeps a turn's effort and summary for the thread's later turns, and the
    # bridge sends them only when asked: a continued thread would carry the last
    # turn's into a request that did not ask. They are part of the conversation's key.
    per_turn = [request.effort, request.reasoning_summary]
    return hashlib.blake2b(
        orjson.dumps([owner, params, per_turn], option=orjson.OPT_SORT_KEYS),
        digest_size=DIGEST_SIZE,
    ).digest()


def extend(digest: bytes, items: Iterable[HistoryItem]) -> bytes:
    """The digest of the conversation `digest` stands for, followed by `items`."""
    for item in items:
        if isinstance(item, HistoryMessage):
            fields: list[object] = ["m", item.role, item.text, list(item.images)]
        elif isinstance(item, HistoryToolCall):
            fields = ["c", item.call_id, item.name, item.arguments]
        else:
            fields = ["o", item.call_id, item.output]
        digest = hashlib.blake2b(digest + orjson.dumps(fields), digest_size=DIGEST_SIZE).digest()
    return digest


def after_turn(digest: bytes, request: TurnRequest, reply_text: str) -> bytes:
    """The digest of the conversation a kept thread holds once `request`'s turn answered it."""
    return extend(
        digest,
        (
            HistoryMessage("user", request.input or "", request.input_images),
            HistoryMessage("assistant", reply_text),
        ),
    )


@dataclass(frozen=True, slots=True)
class Tip:
    """An idle thread holding a conversation: whose, where, until when."""

    owner: str
    worker: Worker
    pid: int
    thread_id: str
    expires_at: float


def release_thread(tip: Tip) -> None:
    """Unloads a tip's thread on its worker, if the process that holds it still runs."""
    driver = tip.worker.driver
    if tip.worker.pid == tip.pid and isinstance(driver, CodexDriver):
        driver.release_thread(tip.thread_id)


class ConversationIndex:
    """Digest -> `Tip`, bridge-wide; LRU-bounded overall and per owner, each tip for `ttl_s`."""

    def __init__(
        self,
        *,
        profile: str,
        max_threads: int,
        ttl_s: float,
        max_per_owner: int = MAX_PER_OWNER,
        clock: Callable[[], float] = time.monotonic,
        release: Callable[[Tip], None] = release_thread,
        observe: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.profile = profile
        self._max_threads = max_threads
        self._ttl_s = ttl_s
        self._max_per_owner = max_per_owner
        self._clock = clock
        self._release = release
        self._observe = observe
        # Oldest first; also the expiry order, since every tip lives `ttl_s`.
        self._tips: OrderedDict[bytes, Tip] = OrderedDict()
        self._by_owner: dict[str, OrderedDict[bytes, None]] = {}

    def __len__(self) -> int:
        return len(self._tips)

    def take(self, owner: str, digest: bytes) -> Tip | None:
        """The tip for `digest`, removed (exclusive), or None: the caller starts cold."""
        self._sweep_front()
        tip = self._tips.get(digest)
        if tip is None or tip.owner != owner:
            return None
        self._remove(digest, tip)
        if tip.worker.pid != tip.pid:
            self._observe("stale")  # its thread died with the process: nothing to release
            return None
        if tip.expires_at <= self._clock():
            self._drop(tip, "expired")
            return None
        return tip

    def new_tip(self, owner: str, worker: Worker, pid: int, thread_id: str) -> Tip:
        return Tip(owner, worker, pid, thread_id, self._clock() + self._ttl_s)

    def put(self, digest: bytes, tip: Tip) -> None:
        """Remembers `tip` (a kept thread, or a taken tip the request did not use)."""
        self._sweep_front()
        if self._max_threads <= 0 or tip.expires_at <= self._clock():
            self._drop(tip, "expired")
            return
        old = self._tips.get(digest)
        if old is not None:
            self._remove(digest, old)
            if old.thread_id != tip.thread_id:
                self._drop(old, "evicted")
        self._tips[digest] = tip
        owned = self._by_owner.setdefault(tip.owner, OrderedDict())
        owned[digest] = None
        while len(owned) > self._max_per_owner:
            oldest = next(iter(owned))
            self._evict(oldest, "evicted")
        while len(self._tips) > self._max_threads:
            self._evict(next(iter(self._tips)), "evicted")

    def sweep(self) -> int:
        """Drops every expired tip (releasing its thread); returns how many."""
        now = self._clock()
        expired = [digest for digest, tip in self._tips.items() if tip.expires_at <= now]
        for digest in expired:
            self._evict(digest, "expired")
        return len(expired)

    def clear(self) -> None:
        """Forgets every tip without releasing anything (the workers are stopping)."""
        self._tips.clear()
        self._by_owner.clear()

    async def run_sweeper(self, interval_s: float = SWEEP_INTERVAL_S) -> None:
        """Sweeps expired tips every `min(interval_s, ttl_s)` until cancelled."""
        while True:  # one task for the app's life, cancelled on shutdown
            await asyncio.sleep(min(interval_s, self._ttl_s))  # a timer, not a synchronization
            self.sweep()

    # -- internals -----------------------------------------------------------------------
    def _sweep_front(self) -> None:
        """Expires tips from the oldest end: O(expired), so every put and take can afford it."""
        now = self._clock()
        while self._tips:
            digest, tip = next(iter(self._tips.items()))
            if tip.expires_at > now:
                return
            self._evict(digest, "expired")

    def _evict(self, digest: bytes, why: str) -> None:
        tip = self._tips.get(digest)
        if tip is not None:
            self._remove(digest, tip)
            self._drop(tip, why)

    def _remove(self, digest: bytes, tip: Tip) -> None:
        del self._tips[digest]
        owned = self._by_owner.get(tip.owner)
        if owned is not None:
            owned.pop(digest, None)
            if not owned:
                del self._by_owner[tip.owner]

    def _drop(self, tip: Tip, why: str) -> None:
        self._observe(why)
        self._release(tip)
