"""Pre-warmed v2 threads: a small per-worker stock of started ephemeral threads, by configuration.

A request's cold path is `thread/start` then `turn/start`; `thread/start` is
about a fifth of Codex's work per single-shot request (protocol NOTES,
per-request cost split). The stock takes it off the critical path: when a
request's `thread/start` params match a stocked thread's exactly (the key is
a hash of the params: model, instructions, dynamic tools, profile, cwd,
ephemeral), the turn starts on that thread; the stock is refilled in the
background while the worker runs no turn at all, so refills never compete
with request turns.

Bounds: at most `size` threads per worker (`codex.prewarm_threads`) spread
over the most recently used configurations (LRU, at most `MAX_KEYS`
remembered); a configuration unused for `KEY_IDLE_S` is no longer refilled,
and a thread older than `THREAD_MAX_AGE_S` is closed instead of used. A
Codex 0.163 worker keeps ~0.9 MB per ephemeral thread even after
`thread/unsubscribe`, so the stock stays small and an idle bridge stops
refilling. A worker restart empties the stock (its threads died with the
process). Only ephemeral threads are stocked: stored responses start theirs
cold.

Knows `thread/start` / `thread/unsubscribe` and an `RpcConnection`; knows no
OpenAI shapes and nothing about processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog

from bridge.worker.rpc import ConnectionClosed, RpcConnection, RpcError, RpcTimeout

log = structlog.get_logger("bridge.codex.prewarm")

# A stocked thread older than this is closed, not used: Codex took its
# settings when it started, and an old one only holds memory.
THREAD_MAX_AGE_S: Final = 1800.0
# A configuration no request used for this long is no longer refilled (an
# idle bridge stops making threads it may never use).
KEY_IDLE_S: Final = 600.0
# Configurations remembered at most (LRU); the stock spans the most recent.
MAX_KEYS: Final = 16
# Closing a stocked thread is housekeeping: never wait long for it.
CLOSE_TIMEOUT_S: Final = 5.0


def stock_key(params: dict[str, Any]) -> bytes:
    """The configuration a thread was started with, as a short digest of its params."""
    return hashlib.blake2b(
        orjson.dumps(params, option=orjson.OPT_SORT_KEYS), digest_size=16
    ).digest()


@dataclass(slots=True)
class _Config:
    params: dict[str, Any]
    last_used: float
    threads: deque[tuple[str, float]] = field(default_factory=deque)
    """(thread id, started at), oldest first."""


class ThreadStock:
    """The started-but-unused threads of one worker process, by configuration."""

    def __init__(
        self,
        size: int,
        rpc_timeout_s: float,
        busy: Callable[[], bool],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self._rpc_timeout_s = rpc_timeout_s
        self._busy = busy
        self._clock = clock
        self._configs: OrderedDict[bytes, _Config] = OrderedDict()
        self._conn: RpcConnection | None = None
        self._refill: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[Any]] = set()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return sum(len(c.threads) for c in self._configs.values())

    # -- process lifecycle -----------------------------------------------------------
    def attach(self, conn: RpcConnection) -> None:
        """A new worker process: nothing stocked survives the old one."""
        self.reset()
        self._conn = conn

    def reset(self) -> None:
        """The process ended (or a new one starts): forget its threads and stop refilling."""
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        for config in self._configs.values():
            config.threads.clear()
        self._conn = None

    # -- the request path --------------------------------------------------------------
    def take(self, params: dict[str, Any]) -> str | None:
        """A started thread for exactly these params, or None (the caller starts one cold).

        Records the configuration as in use either way, so it gets stocked.
        """
        if self.size <= 0:
            return None
        key = stock_key(params)
        now = self._clock()
        config = self._configs.get(key)
        if config is None:
            config = self._configs[key] = _Config(params, now)
            while len(self._configs) > MAX_KEYS:
                _, dropped = self._configs.popitem(last=False)
                self._close_all(dropped)
        else:
            config.last_used = now
            self._configs.move_to_end(key)
        while config.threads:
            thread_id, started = config.threads.popleft()
            if now - started <= THREAD_MAX_AGE_S:
                self.hits += 1
                return thread_id
            self._close(thread_id)
        self.misses += 1
        return None

    def idle(self) -> None:
        """The worker runs no turn now: refill in the background (one task at a time)."""
        if self.size <= 0 or self._conn is None or self._conn.closed:
            return
        if self._refill is None or self._refill.done():
            self._refill = asyncio.get_running_loop().create_task(self._fill(self._conn))

    # -- internals -----------------------------------------------------------------------
    def _wanted(self) -> tuple[bytes, _Config] | None:
        """The most recently used live configuration below its share of the stock."""
        now = self._clock()
        live = [
            (k, c) for k, c in reversed(self._configs.items()) if now - c.last_used <= KEY_IDLE_S
        ][: self.size]
        if not live:
            return None
        share = max(1, self.size // len(live))
        for key, config in live:
            if len(config.threads) >= share:
                continue
            if len(self) >= self.size and not self._trim(share):
                return None
            return key, config
        return None

    def _trim(self, share: int) -> bool:
        """Closes the oldest thread of the least recently used configuration above `share`."""
        for config in self._configs.values():  # least recently used first
            if len(config.threads) > share:
                thread_id, _ = config.threads.popleft()
                self._close(thread_id)
                return True
        return False

    def stocked(self) -> list[dict[str, Any]]:
        """The `thread/start` params of every stocked thread (tests and diagnostics)."""
        return [c.params for c in self._configs.values() for _ in c.threads]

    async def _fill(self, conn: RpcConnection) -> None:
        # Bounded: each pass adds one thread or returns, and the stock is capped.
        for _ in range(self.size):
            wanted = self._wanted()
            if wanted is None or self._busy() or conn.closed or self._conn is not conn:
                return
            key, config = wanted
            try:
                started = await conn.request(
                    "thread/start", config.params, timeout=self._rpc_timeout_s
                )
                thread_id = str(started["thread"]["id"])
            except (RpcError, RpcTimeout, ConnectionClosed, KeyError, TypeError) as exc:
                log.debug("thread pre-warm failed", error=repr(exc))
                return
            if self._conn is not conn or self._configs.get(key) is not config:
                self._close(thread_id, conn)  # the process or the configuration went away
                return
            config.threads.append((thread_id, self._clock()))

    def _close_all(self, config: _Config) -> None:
        for thread_id, _ in config.threads:
            self._close(thread_id)
        config.threads.clear()

    def _close(self, thread_id: str, conn: RpcConnection | None = None) -> None:
        conn = conn or self._conn
        if conn is None or conn.closed:
            return
        task = asyncio.get_running_loop().create_task(self._unsubscribe(conn, thread_id))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _unsubscribe(conn: RpcConnection, thread_id: str) -> None:
        with contextlib.suppress(ConnectionClosed, RpcTimeout, RpcError):
            await conn.request(
                "thread/unsubscribe", {"threadId": thread_id}, timeout=CLOSE_TIMEOUT_S
            )
