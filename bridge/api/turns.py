"""One HTTP request's turn: lease a worker, start the turn, enforce deadlines, clean up.

Every endpoint runs its turn through `TurnSession`: it takes a slot from the
pool (waiting in the admission queue), starts the turn, hands out events
under the first-token / idle / overall deadlines (expiry interrupts the turn
and raises `DeadlineExceeded`), and on exit — normal, error, or client
disconnect — interrupts an unfinished turn and frees the slot.

Knows the pool and the Turn protocol; knows no OpenAI shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Final

import structlog
from aiohttp import web

from bridge.api.middleware import ACCESS, METRICS, AccessRecord
from bridge.appkeys import LIMITS, POOL
from bridge.codex.events import Failed, Finished, TextDelta, ToolCall, TurnEvent, Usage
from bridge.codex.turn import Turn, TurnRequest
from bridge.errors import BridgeError, DeadlineExceeded, RateLimited
from bridge.ops.admission import KEY_LIMITS
from bridge.ops.auth import API_KEY

log = structlog.get_logger("bridge.turns")

# Interrupting and closing a turn on the way out must not hold a cancelled
# handler (or shutdown) for long: the worker answers in ~0.1 s (NOTES S5).
CLEANUP_TIMEOUT_S: Final = 5.0


class TurnSession:
    """Async context manager around one running turn."""

    def __init__(
        self, http_request: web.Request, request: TurnRequest, *, endpoint: str, stream: bool
    ) -> None:
        app = http_request.app
        self._http = http_request
        self._pool = app[POOL]
        self._limits = app[LIMITS]
        self._metrics = app[METRICS]
        self._record: AccessRecord = http_request[ACCESS]
        self._endpoint = endpoint
        self._stream = "true" if stream else "false"
        self._request = request
        self._stack = AsyncExitStack()
        self._turn: Turn | None = None
        self.parked = False
        """Set when the turn waits for a client's tool results and outlives this request."""
        self._ended = False
        self._got_text = False
        self.worker_id: int | None = None
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._started = self._clock()
        self._last_event = self._started

    async def __aenter__(self) -> TurnSession:
        try:
            key = self._http.get(API_KEY)
            if key is not None and key.max_concurrent is not None:
                try:
                    await self._stack.enter_async_context(
                        self._http.app[KEY_LIMITS].hold(
                            key.name, key.max_concurrent, self._pool.queue_timeout_s
                        )
                    )
                except RateLimited:
                    self._metrics.rejected("key_limit")
                    raise
            worker = await self._stack.enter_async_context(self._pool.lease())
            self.worker_id = self._record.worker = worker.id
            structlog.contextvars.bind_contextvars(worker=worker.id)
            self._started = self._last_event = self._clock()
            self._turn = await worker.start_turn(self._request)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.parked and exc_type is None:
            # The turn lives on in the pending-tool registry, slot and all.
            return
        self.parked = False
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            self._record.outcome = "client_disconnected"
        elif isinstance(exc, BridgeError) and self._record.outcome == "ok":
            self._record.outcome = exc.code or "error"
        if self._record.outcome == "client_disconnected":
            self._metrics.client_disconnects.labels(self._endpoint).inc()
        self._metrics.turn_duration.labels(self._endpoint, self._record.outcome).observe(
            self._clock() - self._started
        )
        cleanup = asyncio.ensure_future(self._cleanup())
        # Shielded so a cancelled handler (client gone) still interrupts the
        # turn and frees its slot; bounded so nothing waits forever.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(cleanup), CLEANUP_TIMEOUT_S)

    @asynccontextmanager
    async def adopted(
        self, http_request: web.Request, *, endpoint: str, stream: bool
    ) -> AsyncIterator[TurnSession]:
        """A parked turn taken over by the request that brings its tool results."""
        self._http = http_request
        self._record = http_request[ACCESS]
        self._record.worker = self.worker_id
        self._endpoint = endpoint
        self._stream = "true" if stream else "false"
        self._started = self._last_event = self._clock()
        self._got_text = False
        self.parked = False
        try:
            yield self
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            await self.__aexit__(None, None, None)

    async def release(self) -> None:
        """Ends a parked turn nobody came back for: interrupt it and free its slot."""
        self.parked = False
        await self._cleanup()

    def resolve_tool_call(self, call_id: str, output: str) -> bool:
        return self._turn is not None and self._turn.resolve_tool_call(call_id, output)

    async def _cleanup(self) -> None:
        try:
            turn = self._turn
            if turn is not None:
                if not self._ended:
                    await turn.interrupt()
                await turn.aclose()
        finally:
            await self._stack.aclose()

    async def interrupt(self) -> None:
        """Stops the turn early (a stop sequence or token limit hit); its end still arrives."""
        if self._turn is not None:
            await self._turn.interrupt()

    def thread_and_turn(self) -> tuple[str | None, str | None]:
        """Where the turn ran, for stored responses."""
        if self._turn is None:
            return None, None
        return self._turn.thread_id, self._turn.turn_id

    async def next_event(self, *, keepalive_s: float | None = None) -> TurnEvent | None:
        """The next turn event, or None when `keepalive_s` passed without one."""
        assert self._turn is not None
        now = self._clock()
        if self._got_text:
            due, which = self._last_event + self._limits.idle_s, "idle"
        else:
            due, which = self._started + self._limits.first_token_s, "first token"
        overall = self._started + self._limits.deadline_s
        if overall < due:
            due, which = overall, "overall"
        wait = due - now
        tick = keepalive_s is not None and keepalive_s < wait
        try:
            async with asyncio.timeout(keepalive_s if tick else max(wait, 0.0)):
                event = await self._turn.next_event()
        except TimeoutError:
            if tick:
                return None
            await self._expire(which)
            raise AssertionError("unreachable") from None
        self._last_event = self._clock()
        if isinstance(event, TextDelta):
            if not self._got_text:
                self._got_text = True
                ttft = time.perf_counter() - self._record.started
                self._record.ttft_s = ttft
                self._metrics.ttft.labels(self._endpoint, self._stream).observe(ttft)
        elif isinstance(event, ToolCall):
            # The turn now waits for the client: nothing to time out on here.
            self._got_text = True
        elif isinstance(event, Finished):
            self._end(event.usage, "ok" if event.reason != "interrupted" else "interrupted")
        elif isinstance(event, Failed):
            self._end(event.usage, event.error.code or "error")
        return event

    def _end(self, usage: Usage, outcome: str) -> None:
        self._ended = True
        record = self._record
        record.outcome = outcome
        # Several turns (n choices, several prompts) add up in one request.
        record.prompt_tokens = (record.prompt_tokens or 0) + usage.input_tokens
        record.completion_tokens = (record.completion_tokens or 0) + usage.output_tokens
        record.cached_tokens += usage.cached_input_tokens
        record.reasoning_tokens += usage.reasoning_tokens
        model = record.model or "unknown"
        tokens = self._metrics.tokens
        tokens.labels("prompt", model).inc(usage.input_tokens)
        tokens.labels("completion", model).inc(usage.output_tokens)
        tokens.labels("cached", model).inc(usage.cached_input_tokens)
        tokens.labels("reasoning", model).inc(usage.reasoning_tokens)

    async def _expire(self, which: str) -> None:
        assert self._turn is not None
        limit = {
            "idle": self._limits.idle_s,
            "first token": self._limits.first_token_s,
            "overall": self._limits.deadline_s,
        }[which]
        log.warning("turn deadline expired", deadline=which, limit_s=limit)
        await self._turn.interrupt()
        self._ended = True
        self._record.outcome = "timeout"
        raise DeadlineExceeded(
            f"Request timed out: no {which} response from Codex within {limit:g}s."
            if which != "overall"
            else f"Request timed out: the turn took longer than {limit:g}s."
        )
