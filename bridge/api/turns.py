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
included, to `codex.request_deadline_s`, counted from the request's arrival
(so the queue wait, image fetches and the hold count too; `deadline_at`).

Shutdown: every running session is in the app's `TurnRegistry`. When the
drain deadline passes (`server.shutdown_timeout_s`) the server aborts them:
a session waiting for its next event wakes at once, interrupts its turn and
raises `ServiceUnavailable` (`shutting_down`), so its request ends with a
terminal error (a 503 envelope, or an SSE `error` event and `[DONE]`)
instead of being cut when the server closes its connections.

With a pool of accounts (`codex.accounts`), a turn that hits its account's
usage limit before any content is started again on another account that
has headroom (the client sees no error while one has), and a continuation
(`previous_response_id`) whose thread lives in another account's Codex home
is started there.

Conversation affinity (`bridge.codex.affinity`): a single-choice request
whose history a held thread holds takes that thread's tip before admission,
prefers its worker, and runs its turn there in place (else it starts cold
and gives the tip back); the endpoint calls `keep_conversation` with the
reply its client received, which keeps the thread for the next turn.

A turn that ends in client tool calls is handed over to the pending registry
(`bridge.api.pending`) and gives its key and worker slots back when its
request ends: a turn that waits for a client holds no capacity. The request that brings the results
adopts it and takes a key slot and a slot on the turn's own worker again.

Knows the pool and the Turn protocol; knows no OpenAI shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Final, cast

import structlog
from aiohttp import web
from opentelemetry.trace import Span, Status, StatusCode, use_span

from bridge.api.middleware import ACCESS, METRICS, AccessRecord, route_of
from bridge.appkeys import AFFINITY, LIMITS, POOL
from bridge.codex import affinity
from bridge.codex.affinity import Tip
from bridge.codex.dialect import start_turn
from bridge.codex.events import Failed, Finished, TextDelta, ToolCall, TurnEvent, Usage
from bridge.codex.turn import Turn, TurnRequest
from bridge.errors import (
    BridgeError,
    DeadlineExceeded,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    UsageLimitReached,
)
from bridge.ops.admission import KEY_LIMITS
from bridge.ops.auth import API_KEY
from bridge.ops.usage import USAGE, row_for
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
# A client told "shutting down" retries after this long (on another instance, or this one
# once restarted).
SHUTDOWN_RETRY_AFTER_S: Final = 5
# The status of the ledger row for tokens a released parked turn reported after its
# request ended: that request answered 200 (with the tool call).
LATE_USAGE_STATUS: Final = 200


class TurnRegistry:
    """The sessions whose requests are running now, so shutdown can end them cleanly.

    Counted per request: a parked turn's follow-up can adopt it before the
    request that parked it has left, and that leaving must not unlist the
    turn its follow-up now runs.
    """

    def __init__(self) -> None:
        self._sessions: dict[TurnSession, int] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: TurnSession) -> None:
        self._sessions[session] = self._sessions.get(session, 0) + 1
        self._empty.clear()

    def discard(self, session: TurnSession) -> None:
        left = self._sessions.get(session, 0) - 1
        if left > 0:
            self._sessions[session] = left
        else:
            self._sessions.pop(session, None)
        if not self._sessions:
            self._empty.set()

    def abort_all(self) -> int:
        """Ends every running session's wait with `shutting_down`; returns how many."""
        error = ServiceUnavailable(
            "codex-bridge is shutting down; retry the request.",
            code="shutting_down",
            retry_after=SHUTDOWN_RETRY_AFTER_S,
        )
        sessions = list(self._sessions)
        for session in sessions:
            session.abort(error)
        return len(sessions)

    def thread_ids(self) -> set[str]:
        """The Codex threads of running and adopted turns (not to be deleted under them)."""
        threads = (session.thread_and_turn()[0] for session in self._sessions)
        return {thread for thread in threads if thread is not None}

    async def wait_empty(self, timeout: float) -> bool:
        """True once every session has ended (bounded)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        return self._empty.is_set()


TURNS: Final = web.AppKey("turns", TurnRegistry)


def caller_of(request: web.Request) -> str:
    """The owner of the state a request leaves behind: its API key's name, or anonymous."""
    key = request.get(API_KEY)
    return key.name if key is not None else ANONYMOUS_OWNER


def key_slots(http: web.Request, count: int = 1) -> AbstractAsyncContextManager[None]:
    """`count` of the caller's key slots at once (429 past the queue timeout), if it has a cap."""
    key = http.get(API_KEY)
    if key is None or key.max_concurrent is None:
        return contextlib.nullcontext()
    return _counted_key_slots(http, key.name, key.max_concurrent, count)


@asynccontextmanager
async def _counted_key_slots(
    http: web.Request, name: str, limit: int, count: int
) -> AsyncIterator[None]:
    app = http.app
    async with AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(
                app[KEY_LIMITS].hold(name, limit, app[POOL].queue_timeout_s, count)
            )
        except RateLimited:
            app[METRICS].rejected("key_limit")
            raise
        yield


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
        self._failovers = 0
        self._registry = app.get(TURNS)
        # Conversation affinity (`bridge.codex.affinity`): the digest of the
        # request's history while the turn may continue a held thread or leave
        # one; the tip taken for it until the turn has started.
        self._affinity = app.get(AFFINITY)
        self._digest: bytes | None = None
        self._tip: Tip | None = None
        self._held_tried = False
        self._kept: bool | None = None
        # Set by `abort` (shutdown); the wait for the next event is cut short through it.
        self._aborted: BridgeError | None = None
        self._waiting: asyncio.Timeout | None = None

    async def __aenter__(self) -> TurnSession:
        if self._registry is not None:
            self._registry.add(self)
        try:
            await self.admit()
        except BaseException:
            self._unregister()
            raise
        # Ends when the turn is cleaned up; its JSON-RPC calls are its children.
        span = tracer().start_span("turn", attributes={"codex_bridge.endpoint": self._endpoint})
        self._span = span
        try:
            assert self._worker is not None and self._lease is not None
            if self._clock() >= self.deadline_at:
                # The queue wait used up the request's time: no turn is started (or billed).
                raise self.overall_deadline_passed()
            self._started = self._last_event = self._clock()
            with use_span(span, end_on_exit=False, record_exception=False):
                # Retried on Codex overload within the queue deadline, possibly on another
                # worker; a continuation not in this account's home, on another account's.
                self._turn = await self._start_continuation()
            self._settle_tip(self._turn)
            self._follow_lease()
            span.set_attribute("codex_bridge.worker", self._lease.worker.id)
            span.set_attribute("codex_bridge.thread_id", self._turn.thread_id)
        except BaseException as exc:
            self._settle_tip(None)
            self._unregister()
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR))
            span.end()
            self._span = None
            await self._stack.aclose()
            raise
        self._record.turns += 1  # billed from here on, whatever the outcome
        return self

    async def _start(self) -> Turn:
        assert self._lease is not None
        # Retried on Codex overload within the queue deadline, possibly on another worker.
        return await self._pool.start_on(self._lease, self._start_on)

    async def _start_on(self, worker: Worker) -> Turn:
        """The turn on `worker`: on the conversation's held thread when it lives there."""
        request = self._request
        tip = self._tip
        # Once only: a start that failed on the thread (overload, retried) closed it.
        fresh = not self._held_tried
        if tip is not None and fresh and tip.worker is worker and worker.pid == tip.pid:
            self._held_tried = True
            request = dataclasses.replace(request, on_thread=tip.thread_id)
        return await start_turn(worker, request)

    def _look_up_conversation(self) -> Worker | None:
        """Takes the tip of the conversation this request extends; returns its worker to prefer."""
        index, request = self._affinity, self._request
        # Chat completions only: the one endpoint that offers its replies back
        # (`keep_conversation`); another would use a chat's thread up, never keep it.
        if index is None or self._endpoint != "chat" or not affinity.eligible(request):
            return None
        ready = self._pool.any_ready()
        if ready is not None and ready.dialect != "v2":
            return None  # v1 keeps no threads
        digest = affinity.start_digest(caller_of(self._http), request, index.profile)
        self._digest = affinity.extend(digest, request.history)
        if not request.history:
            return None  # a new conversation: nothing to continue, but it may be kept
        self._tip = index.take(caller_of(self._http), self._digest)
        self._metrics.affinity.labels("hit" if self._tip else "miss").inc()
        return self._tip.worker if self._tip is not None else None

    def _settle_tip(self, started: Turn | None) -> None:
        """After the start (or its failure): the taken tip is used up, or given back."""
        tip, self._tip = self._tip, None
        if tip is None or self._affinity is None:
            return
        if started is not None and started.thread_id == tip.thread_id:
            return  # continued in place
        if self._held_tried:
            # A start was tried on the thread and the turn runs elsewhere (Codex refused
            # the thread, or was overloaded and the start moved on): the failed start
            # closed it, or its state is unknown. It never goes back to the index.
            self._metrics.affinity.labels("gone").inc()
            affinity.release_thread(tip)
            return
        if started is not None:
            self._metrics.affinity.labels("elsewhere").inc()
        assert self._digest is not None
        self._affinity.put(self._digest, tip)

    async def keep_conversation(self, reply_text: str) -> bool:
        """The client received exactly `reply_text` as the turn's whole answer: keep its thread.

        Called by an endpoint that answered one choice whose turn finished by
        itself (not cut by a limit, no tool call). When Codex's thread holds
        exactly that reply (`Turn.keep_thread`), it stays loaded and the next
        request that re-sends this conversation continues it in place.
        """
        turn, index, digest = self._turn, self._affinity, self._digest
        if turn is None or index is None or digest is None or self._use or self._closed:
            return False
        worker, pid = self._worker, self._worker_pid
        if worker is None or pid is None or not turn.keep_thread(reply_text):
            self._kept = False
            self._metrics.affinity.labels("mismatch").inc()
            return False
        # Closed now, not with the session: the thread must be out of this turn's
        # hands before another request can take it (a stream's client may send
        # its next turn as soon as it has read the end).
        await turn.aclose()
        tip = index.new_tip(caller_of(self._http), worker, pid, turn.thread_id)
        index.put(affinity.after_turn(digest, self._request, reply_text), tip)
        self._kept = True
        self._metrics.affinity.labels("kept").inc()
        return True

    async def _start_continuation(self) -> Turn:
        """Starts the turn; a continuation not found in this account's home is tried in the others'."""
        assert self._lease is not None
        tried: set[str] = set()
        while True:
            try:
                return await self._start()
            except NotFound as exc:
                if self._request.continue_from is None or exc.param != "previous_response_id":
                    raise
                tried.add(self._lease.worker.config.account)
                if self._pool.move(self._lease, lambda w: w.config.account in tried) is None:
                    raise

    def _follow_lease(self) -> None:
        """The lease moved (overload, another account): the turn runs on its new worker."""
        assert self._lease is not None
        if self._lease.worker is not self._worker:
            self._worker = moved = self._lease.worker
            self._worker_pid = moved.pid
            self.worker_id = self._record.worker = moved.id
            structlog.contextvars.bind_contextvars(worker=moved.id)

    async def _fail_over(self, failed: Failed) -> bool:
        """Starts again on another account a turn that hit its usage limit before any content.

        Not for a continuation (its thread lives in this account's Codex home)
        nor a turn resumed with tool results; at most once per other worker.
        The session holds the old, ended turn until the new one has started: a
        start that fails raises the limit's own error (429, Retry-After), not
        the retry's; a shutdown meanwhile starts no new turn.
        """
        lease, old = self._lease, self._turn
        if (
            lease is None
            or old is None
            or self._use
            or self._request.continue_from is not None
            or self._failovers >= len(self._pool.workers)
        ):
            return False
        account = lease.worker.config.account
        rank = self._pool.rank
        moved = self._pool.move(lease, lambda w: w.config.account == account or rank(w) is None)
        if moved is None:
            return False
        self._failovers += 1
        # The old turn ended with this event, its usage in it: nothing to interrupt or wait for.
        self._account(failed.usage)
        self._ended = True
        with contextlib.suppress(Exception):
            await old.aclose()
        log.warning(
            "usage limit reached; retrying on another account",
            account=account,
            to_account=moved.config.account,
        )
        self._follow_lease()
        turn: Turn | None = None
        if self._aborted is None:
            try:
                turn = await self._start_again()
            except Exception as exc:
                # The slot the lease moved to is given back with the session's stack.
                log.warning("retry on another account failed", error=repr(exc))
                self._record.outcome = failed.error.code or "error"
                raise failed.error from exc
        if turn is not None:
            self._turn = turn
            self._ended = self._accounted = False
            self._follow_lease()
            self._record.turns += 1
            if self._span is not None:
                self._span.set_attribute("codex_bridge.worker", lease.worker.id)
                self._span.set_attribute("codex_bridge.thread_id", turn.thread_id)
                self._span.set_attribute("codex_bridge.failovers", self._failovers)
        if self._aborted is not None:
            if turn is None:
                self._record.outcome = self._aborted.code or "error"
                raise self._aborted
            await self._end_aborted(self._aborted)
        return True

    async def _start_again(self) -> Turn:
        """`_start`, under the request's turn span (as in `__aenter__`) when there is one."""
        if self._span is None:
            return await self._start()
        with use_span(self._span, end_on_exit=False, record_exception=False):
            return await self._start()

    def _unregister(self) -> None:
        if self._registry is not None:
            self._registry.discard(self)

    def abort(self, error: BridgeError) -> None:
        """Shutdown: the next (or current) wait for an event raises `error` after interrupting."""
        if self._aborted is not None:
            return
        self._aborted = error
        waiting = self._waiting
        if waiting is not None:
            waiting.reschedule(asyncio.get_running_loop().time())

    async def admit(self, lease: Lease | None = None) -> None:
        """Takes the key's and a worker's slot; no turn runs yet. Idempotent.

        A fan-out (`bridge.api.fanout`) takes its key slots and its worker
        slots itself, each in one step (`key_slots`, `WorkerPool.take_slots`),
        and admits each choice with its `lease`: no billed turn runs while the
        others still wait for a slot, and none is held while waiting.
        """
        if self._worker is not None:
            return
        # A fan-out's choices (a lease given) never continue or keep a conversation.
        prefer = self._look_up_conversation() if lease is None else None
        try:
            with tracer().start_as_current_span("admission"):
                self._worker = await self._take_slots(None, lease, prefer)
        except BaseException:
            self._settle_tip(None)
            raise

    async def _take_slots(
        self, on: Worker | None, lease: Lease | None = None, prefer: Worker | None = None
    ) -> Worker:
        """The caller's key slot and a worker slot (on `on`, else `prefer` if it has room),
        into `_stack`; or `lease`, whose key slot the fan-out holds."""
        try:
            if lease is None:
                await self._stack.enter_async_context(key_slots(self._http))
                slot = self._pool.lease_slot(on, prefer=prefer)
                lease = await self._stack.enter_async_context(slot)
            else:
                self._stack.callback(self._pool.give_back, lease)
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
        self._unregister()
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
            if self._digest is not None and self._kept is None:
                self._metrics.affinity.labels("not_kept").inc()
        await _bounded_cleanup(self._cleanup())

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
        # Registered before waiting for slots: claimed, the turn is no longer
        # parked, and its thread must not look unused (a delete would drop it).
        if self._registry is not None:
            self._registry.add(self)
        try:
            await self._take_slots(self._worker)
        except BaseException:
            self._unregister()
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

        Called synchronously by the registry, before any follow-up can claim
        the turn. The parking request keeps its slots until it exits (they move
        aside to `_handed_over` and are freed then); a follow-up that adopts
        the turn sooner takes slots of its own, so the two never share one.
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
        """Ends a parked turn nobody came back for (or that was evicted): interrupt it.

        The request that parked the turn has usually finished and written its
        ledger row, so the tokens the turn's end still reports are accounted
        to a record of their own and written as a ledger row of their own.
        """
        self.parked = False
        late = self._record = dataclasses.replace(
            self._record,
            prompt_tokens=None,
            completion_tokens=None,
            cached_tokens=0,
            reasoning_tokens=0,
            turns=0,
        )
        try:
            await _bounded_cleanup(self._cleanup())
        finally:
            self._record_late_usage(late)

    def _record_late_usage(self, late: AccessRecord) -> None:
        ledger = self._http.app.get(USAGE)
        tokens = (late.prompt_tokens or 0) + (late.completion_tokens or 0) + late.cached_tokens
        if ledger is None or tokens + late.reasoning_tokens == 0:
            return
        row = row_for(late, route_of(self._http), LATE_USAGE_STATUS)
        if row is not None:
            ledger.record(row)

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

    async def _end_aborted(self, error: BridgeError) -> None:
        """Interrupts the turn (its end still brings the usage) and raises `error`."""
        assert self._turn is not None
        log.warning("turn ended by shutdown", code=error.code)
        self._record.outcome = error.code or "error"
        await self._turn.interrupt()
        raise error

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
        """When the request's overall deadline passes (event-loop time).

        Counted from the request's arrival, so the queue wait, image fetches
        and the header hold are inside it, as `codex.request_deadline_s` says.
        The access record keeps its start in `perf_counter` time, the loop
        another monotonic clock: the arrival is carried over as an age.
        """
        arrived = self._clock() - (time.perf_counter() - self._record.started)
        return arrived + self._limits.deadline_s

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
        return DeadlineExceeded(f"Request timed out: the request took longer than {limit:g}s.")

    async def next_event(self, *, keepalive_s: float | None = None) -> TurnEvent | None:
        """The next turn event, or None when `keepalive_s` passed without one."""
        assert self._turn is not None
        if self._aborted is not None:
            await self._end_aborted(self._aborted)
        if self._peeked is not None:
            event, self._peeked = self._peeked, None
            return event
        if self._turn.has_event():
            # At hand: nothing to wait for, so no deadline timer to arm (one per delta).
            event = await self._turn.next_event()
        else:
            waited = await self._wait_event(keepalive_s)
            if waited is None:
                return None
            event = waited
        self._last_event = self._clock()
        if (
            isinstance(event, Failed)
            and isinstance(event.error, UsageLimitReached)
            and not self._got_text
            and await self._fail_over(event)
        ):
            return await self.next_event(keepalive_s=keepalive_s)
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

    def has_event(self) -> bool:
        """Whether `next_event` has an event at hand (returns it without waiting)."""
        return self._peeked is not None or (self._turn is not None and self._turn.has_event())

    async def _wait_event(self, keepalive_s: float | None) -> TurnEvent | None:
        """Waits for the turn's next event under its deadlines; None at a keepalive tick."""
        assert self._turn is not None
        now = self._clock()
        if self._got_text:
            due, which = self._last_event + self._limits.idle_s, "idle"
        else:
            due, which = self._started + self._limits.first_token_s, "first token"
        overall = self.deadline_at
        if overall < due:
            due, which = overall, "overall"
        wait = due - now
        tick = keepalive_s is not None and keepalive_s < wait
        try:
            async with asyncio.timeout(keepalive_s if tick else max(wait, 0.0)) as waiting:
                self._waiting = waiting
                try:
                    return await self._turn.next_event()
                finally:
                    self._waiting = None  # an exited timeout cannot be rescheduled
        except TimeoutError:
            if self._aborted is not None:
                await self._end_aborted(self._aborted)
            if tick:
                return None
            await self._expire(which)
            raise AssertionError("unreachable") from None

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
            else f"Request timed out: the request took longer than {limit:g}s."
        )


async def _bounded_cleanup(cleanup: Coroutine[Any, Any, None]) -> None:
    """Runs `cleanup` shielded and bounded by CLEANUP_TIMEOUT_S.

    Shielded so a cancelled handler (client gone) still interrupts the turn
    and frees its slot; bounded so nothing waits forever. A cancellation of
    the caller itself (shutdown's grace passed, or the handler cancelled
    again) is re-raised once the wait is over, so the caller stops too.
    """
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.wait_for(asyncio.shield(task), CLEANUP_TIMEOUT_S)
    except TimeoutError:
        pass
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        # The cleanup task itself was cancelled (the loop is closing): nothing to wait for.


async def hold_headers(sessions: Sequence[TurnSession], hold_s: float) -> None:
    """Before a stream sends its headers: waits, at most `hold_s`, for every choice's first event.

    The choice that failed first, before any content, raises its error, so the
    client gets the status (429, 502, ...) and `Retry-After` a non-streaming
    request would; after `hold_s` the stream opens anyway (keepalives as usual).
    """
    if hold_s <= 0:
        return
    if len(sessions) == 1:
        await sessions[0].hold_for_content(hold_s)
        return
    tasks = [asyncio.ensure_future(s.hold_for_content(hold_s)) for s in sessions]
    # In the order the choices failed (done callbacks run in completion order),
    # not in choice order: the error is the first failure's.
    failures: list[BaseException] = []

    def note(task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            failures.append(cast(BaseException, task.exception()))

    for task in tasks:
        task.add_done_callback(note)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if failures:
        raise failures[0]


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
