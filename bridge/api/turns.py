"""One HTTP request's turn: lease a worker, start the turn, enforce deadlines, clean up.

Every endpoint runs its turn through `TurnSession`: it takes a slot from the
pool (waiting in the admission queue), starts the turn, hands out events
under the first-token / idle / overall deadlines (expiry interrupts the turn
and raises `DeadlineExceeded`), and on exit — normal, error, or client
disconnect — interrupts an unfinished turn and frees the slot.

Streams use two helpers around it: `hold_headers` reads ahead to each
choice's first event before any byte goes out (bounded by
`server.stream_header_hold_s`), so a turn that fails first is a plain HTTP
error; `overall_deadline` holds everything after it, writes to a slow client
included, to `codex.request_deadline_s`.

A turn that ends in client tool calls is handed over to the pending registry
(`bridge.api.pending`) and gives its key and worker slots back: a turn that
waits for a client holds no capacity. The request that brings the results
adopts it and takes a key slot and a slot on the turn's own worker again.

Knows the pool and the Turn protocol; knows no OpenAI shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Final, cast

import structlog
from aiohttp import web
from opentelemetry.trace import Span, Status, StatusCode, use_span

from bridge.api.middleware import ACCESS, METRICS, AccessRecord
from bridge.appkeys import LIMITS, POOL
from bridge.codex.dialect import start_turn
from bridge.codex.events import Failed, Finished, TextDelta, ToolCall, TurnEvent, Usage
from bridge.codex.turn import Turn, TurnRequest
from bridge.errors import BridgeError, DeadlineExceeded, RateLimited
from bridge.ops.admission import KEY_LIMITS
from bridge.ops.auth import API_KEY
from bridge.store import ANONYMOUS_OWNER
from bridge.tracing import tracer
from bridge.worker.pool import Lease
from bridge.worker.supervisor import Worker

log = structlog.get_logger("bridge.turns")

# Interrupting and closing a turn on the way out must not hold a cancelled
# handler (or shutdown) for long: the worker answers in ~0.1 s (NOTES S5).
CLEANUP_TIMEOUT_S: Final = 5.0
# An unfinished turn's tokens arrive with its end, just after the interrupt
# (~0.1 s); the cleanup waits this long for them so the usage ledger bills
# what Codex used even when the client left (inside CLEANUP_TIMEOUT_S).
FINAL_USAGE_WAIT_S: Final = 3.0


def caller_of(request: web.Request) -> str:
    """The owner of the state a request leaves behind: its API key's name, or anonymous."""
    key = request.get(API_KEY)
    return key.name if key is not None else ANONYMOUS_OWNER


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
        self._span: Span | None = None
        self._worker: Worker | None = None
        self._lease: Lease | None = None
        self.parked = False
        """Set when the turn waits for a client's tool results and outlives this request."""
        # Each request that drives the turn is one "use": the first, then one
        # per adoption. A use that handed the turn over keeps only its slots
        # (in `_handed_over`) and frees them when it ends, whenever that is.
        self._use = 0
        self._handed_over: dict[int, AsyncExitStack] = {}
        self._results: list[tuple[str, str]] = []
        self._closed = False
        # The process the turn runs in: a restarted worker no longer has it.
        self._worker_pid: int | None = None
        self._ended = False
        self._accounted = False
        """Set once the turn's final usage reached the access record."""
        self._got_text = False
        self.worker_id: int | None = None
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._started = self._clock()
        self._last_event = self._started
        # An event read ahead by `hold_for_content`, handed out first by `next_event`.
        self._peeked: TurnEvent | None = None

    async def __aenter__(self) -> TurnSession:
        await self.admit()
        # Ends when the turn is cleaned up; its JSON-RPC calls are its children.
        span = tracer().start_span("turn", attributes={"codex_bridge.endpoint": self._endpoint})
        self._span = span
        try:
            assert self._worker is not None and self._lease is not None
            self._started = self._last_event = self._clock()
            with use_span(span, end_on_exit=False, record_exception=False):
                # Retried on Codex overload within the queue deadline, possibly on another worker.
                self._turn = await self._pool.start_on(
                    self._lease, lambda worker: start_turn(worker, self._request)
                )
            span.set_attribute("codex_bridge.worker", self._lease.worker.id)
            span.set_attribute("codex_bridge.thread_id", self._turn.thread_id)
            if self._lease.worker is not self._worker:
                self._worker = moved = self._lease.worker
                self._worker_pid = moved.pid
                self.worker_id = self._record.worker = moved.id
                structlog.contextvars.bind_contextvars(worker=moved.id)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR))
            span.end()
            await self._stack.aclose()
            raise
        self._record.turns += 1  # billed from here on, whatever the outcome
        return self

    async def admit(self) -> None:
        """Takes the key's and a worker's slot; no turn runs yet. Idempotent.

        A fan-out (`bridge.api.fanout`) admits every choice before it starts
        any, so no billed turn runs while the others still wait for a slot.
        """
        if self._worker is not None:
            return
        with tracer().start_as_current_span("admission"):
            self._worker = await self._take_slots(None)

    async def _take_slots(self, on: Worker | None) -> Worker:
        """The caller's key slot and a worker slot (on `on`, when given), into `_stack`."""
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
            lease = await self._stack.enter_async_context(self._pool.lease_slot(on))
            worker = lease.worker
            if on is None:
                self._worker_pid = worker.pid
                self._lease = lease
            self.worker_id = self._record.worker = worker.id
            structlog.contextvars.bind_contextvars(worker=worker.id)
        except BaseException:
            await self._stack.aclose()
            raise
        return worker

    async def release_admission(self) -> None:
        """Gives back the slots of a session admitted but never started (a fan-out that failed)."""
        if self._turn is None:
            await self._stack.aclose()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._leave(0, exc_type, exc)

    async def _leave(
        self, use: int, exc_type: type[BaseException] | None, exc: BaseException | None
    ) -> None:
        handed_over = self._handed_over.pop(use, None)
        if handed_over is not None:
            # The turn waits for the client's tool results (or was adopted
            # already): it holds no slot meanwhile, so this request's go now.
            await handed_over.aclose()
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
        if self._turn is not None:
            backlog = self._turn.backlog_high_water
            self._metrics.event_backlog.labels(self._endpoint).observe(backlog)
        cleanup = asyncio.ensure_future(self._cleanup())
        # Shielded so a cancelled handler (client gone) still interrupts the
        # turn and frees its slot; bounded so nothing waits forever.
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(cleanup), CLEANUP_TIMEOUT_S)

    @asynccontextmanager
    async def adopted(
        self, http_request: web.Request, *, endpoint: str, stream: bool
    ) -> AsyncIterator[TurnSession]:
        """A parked turn taken over by the request that brings its tool results.

        The turn gave its slots back when it was parked; the adopting request
        takes the key's slot and a slot on the turn's own worker again (queued
        like any request), so a resumed turn counts against capacity.
        """
        use = self._use
        self._http = http_request
        self._record = http_request[ACCESS]
        self._record.worker = self.worker_id
        self._endpoint = endpoint
        self._stream = "true" if stream else "false"
        try:
            await self._take_slots(self._worker)
        except BaseException:
            # Nobody can resume this turn any more: end it on Codex's side.
            await self.release()
            raise
        self.parked = False
        results, self._results = self._results, []
        for call_id, output in results:
            self.resolve_tool_call(call_id, output)
        self._started = self._last_event = self._clock()
        self._got_text = False
        self._record.turns += 1  # the turn goes on, billed to this request
        try:
            yield self
        except BaseException as exc:
            await self._leave(use, type(exc), exc)
            raise
        else:
            await self._leave(use, None, None)

    def hand_over(self) -> None:
        """The turn now waits in the pending registry for the client's tool results.

        Called synchronously by the registry, so no follow-up can adopt the turn
        before the request that parked it has given up its claim on the slots.
        """
        self.parked = True
        self._handed_over[self._use] = self._stack
        self._stack = AsyncExitStack()
        self._use += 1

    @property
    def owner(self) -> tuple[str, str]:
        """The caller and endpoint of the request driving the turn: who may resume it."""
        return caller_of(self._http), self._endpoint

    @property
    def worker_ready(self) -> bool:
        """Whether the worker this turn runs on can still run it."""
        worker = self._worker
        return (
            worker is not None
            and worker.ready
            and worker.pid == self._worker_pid
            and not self._closed
        )

    async def release(self) -> None:
        """Ends a parked turn nobody came back for (or that was evicted): interrupt it."""
        self.parked = False
        cleanup = asyncio.ensure_future(self._cleanup())
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(cleanup), CLEANUP_TIMEOUT_S)

    def resolve_tool_call(self, call_id: str, output: str) -> bool:
        if self.parked:
            # Answered once the adopting request holds its slots again, so a
            # resumed turn never runs on capacity it does not hold.
            self._results.append((call_id, output))
            return True
        return self._turn is not None and self._turn.resolve_tool_call(call_id, output)

    async def _cleanup(self) -> None:
        try:
            turn = self._turn
            if turn is not None and not self._closed:
                self._closed = True
                if not self._ended:
                    await turn.interrupt()
                if not self._accounted:
                    await self._await_final_usage(turn)
                await turn.aclose()
                if self._span is not None:
                    self._span.set_attribute("codex_bridge.outcome", self._record.outcome)
                    self._span.end()
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

    @property
    def deadline_at(self) -> float:
        """When the request's overall deadline passes (event-loop time)."""
        return self._started + self._limits.deadline_s

    async def hold_for_content(self, hold_s: float) -> None:
        """Reads ahead to the turn's first event, for at most `hold_s`; raises its error if it failed.

        Every turn event but `Failed` is content (text, reasoning, a tool
        call) or a clean end, so one event settles it; it stays queued for
        `next_event`. A stream runs this before it sends its headers, so a
        turn that fails first answers with a real HTTP status.
        """
        if self._peeked is not None or hold_s <= 0:
            return
        event = await self.next_event(keepalive_s=hold_s)
        if isinstance(event, Failed):
            raise event.error
        self._peeked = event

    def overall_deadline_passed(self) -> DeadlineExceeded:
        """Records a request that outlived its overall deadline outside `next_event`."""
        limit = self._limits.deadline_s
        log.warning("turn deadline expired", deadline="overall", limit_s=limit)
        self._record.outcome = "timeout"
        return DeadlineExceeded(f"Request timed out: the turn took longer than {limit:g}s.")

    async def next_event(self, *, keepalive_s: float | None = None) -> TurnEvent | None:
        """The next turn event, or None when `keepalive_s` passed without one."""
        assert self._turn is not None
        if self._peeked is not None:
            event, self._peeked = self._peeked, None
            return event
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
            # The response ends with this call: its (estimated) usage is this
            # request's; the turn's final usage is still to come.
            accounted = self._accounted
            self._account(event.usage)
            self._accounted = accounted
        elif isinstance(event, Finished):
            self._end(event.usage, "ok" if event.reason != "interrupted" else "interrupted")
        elif isinstance(event, Failed):
            self._end(event.usage, event.error.code or "error")
        return event

    async def _await_final_usage(self, turn: Turn) -> None:
        """Accounts the tokens of a turn nobody read to its end (client gone, deadline, error)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINAL_USAGE_WAIT_S):
                while True:  # bounded by the timeout; a turn ends with Finished/Failed
                    event = await turn.next_event()
                    if isinstance(event, Finished | Failed):
                        self._account(event.usage)
                        return

    def _end(self, usage: Usage, outcome: str) -> None:
        self._ended = True
        self._record.outcome = outcome
        self._account(usage)

    def _account(self, usage: Usage) -> None:
        self._accounted = True
        record = self._record
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


async def hold_headers(sessions: Sequence[TurnSession], hold_s: float) -> None:
    """Before a stream sends its headers: waits, at most `hold_s`, for every choice's first event.

    The first choice that failed before any content raises its error, so the
    client gets the status (429, 502, ...) and `Retry-After` a non-streaming
    request would; after `hold_s` the stream opens anyway (keepalives as usual).
    """
    if hold_s <= 0:
        return
    if len(sessions) == 1:
        await sessions[0].hold_for_content(hold_s)
        return
    tasks = [asyncio.ensure_future(s.hold_for_content(hold_s)) for s in sessions]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise cast(BaseException, task.exception())


@asynccontextmanager
async def overall_deadline(sessions: Sequence[TurnSession]) -> AsyncIterator[None]:
    """The request's overall deadline around all a handler does with its turns, writes included.

    `next_event` only times the waits for events; a handler blocked writing
    to a client that does not read would never get there. Expiry raises
    `DeadlineExceeded`; the sessions interrupt their turns on exit.
    """
    scope = asyncio.timeout_at(min(session.deadline_at for session in sessions))
    try:
        async with scope:
            yield
    except TimeoutError:
        if not scope.expired():
            raise
        errors = [session.overall_deadline_passed() for session in sessions]
        raise errors[0] from None
