"""Dialect v2: runs a `TurnRequest` on the current app-server protocol and yields `TurnEvent`s.

Per request: an ephemeral `thread/start` (profile settings, empty cwd), prior
messages through `thread/inject_items` with their roles, `turn/start` with the
new input, then `item/agentMessage/delta` / `item/reasoning/summaryTextDelta` /
`thread/tokenUsage/updated` / `error` / `turn/completed` until the turn ends.
One thread per concurrent request: a second `turn/start` on a busy thread
would steer the running turn. With conversation affinity
(`bridge.codex.affinity`) a request may instead run on an idle thread that
already holds its history (`TurnRequest.on_thread`): `turn/start` only, and
a turn whose thread holds exactly what its client received is not
unsubscribed at close (`V2Turn.keep_thread`).

Knows v2 method names and payloads; knows no OpenAI shapes and nothing about
processes (it talks to an `RpcConnection` it is given).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson
import structlog

from bridge.codex import estimate
from bridge.codex.account import AccountState
from bridge.codex.errors import error_from_codex
from bridge.codex.events import (
    Failed,
    Finished,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    Usage,
)
from bridge.codex.queued import (
    DEFAULT_MAX_QUEUED_EVENTS,
    START_ERRORS,
    QueuedTurn,
    shielded,
    start_error,
)
from bridge.codex.turn import HistoryToolCall, HistoryToolOutput, TurnRequest
from bridge.errors import NotFound, WorkerCrashed
from bridge.worker.rpc import ConnectionClosed, RpcConnection, RpcError, RpcTimeout

log = structlog.get_logger("bridge.codex.v2")

# Sentinel method queued into every open turn when the worker's connection ends.
CONNECTION_LOST: Final = "bridge/connectionLost"
# Queued by the server-request task when the model calls a client tool.
TOOL_CALL: Final = "bridge/toolCall"

# A closing thread/unsubscribe is housekeeping: never hold a request up for it.
UNSUBSCRIBE_TIMEOUT_S: Final = 5.0
# A turn/start cut short (client gone, RPC timeout) may still have been
# accepted: its turn id then comes with turn/started, waited for this long so
# the turn can be interrupted rather than run on with nobody reading it.
ABANDONED_START_WAIT_S: Final = 2.0

# What the model hears when it calls a tool nobody answers.
TOOL_UNAVAILABLE: Final = {
    "contentItems": [{"type": "inputText", "text": "This tool is not available."}],
    "success": False,
}

# Neutral instruction for the plain profile when the client sends no system
# message: it replaces Codex's 20-40 KB agent prompt (NOTES: S3, per-turn cost).
PLAIN_DEFAULT_INSTRUCTIONS: Final = "You are a helpful assistant."

# Items a kept thread may hold besides its one reply: the cold path replays
# the user message, and Codex keeps the reasoning of a thread's turns (as
# `previous_response_id` does). Anything else (a tool call, a command) was
# never shown to the client, so a thread holding it is not kept.
KEEPABLE_ITEMS: Final = ("userMessage", "reasoning")

# Notifications the bridge never reads; opting out saves the worker the
# serialization and us the parse (they arrive on every turn); raw reasoning
# text is never shown (summaries are). `item/completed` is read although it
# repeats each whole item: conversation affinity keeps a thread only when its
# final reply item is exactly what the client received (`V2Turn.keep_thread`).
OPT_OUT_NOTIFICATIONS: Final = (
    "thread/status/changed",
    "remoteControl/status/changed",
    "thread/started",
    "item/started",
    "item/reasoning/summaryPartAdded",
    "item/reasoning/textDelta",
    "serverRequest/resolved",
    "turn/diff/updated",
    "turn/plan/updated",
)


# Both profiles ask before every command or file change, and the bridge declines
# each request (codex/server_requests.py): a second wall behind the plain
# profile's missing tools. (Codex 0.77 still runs commands it deems read-only
# without asking, so plain's first wall there is the tool switches.)
APPROVAL_POLICY: Final = "untrusted"


@dataclass(frozen=True, slots=True)
class ThreadSettings:
    """Per-thread settings derived from the profile; fixed for a worker's life."""

    profile: str  # "plain" | "agent"
    cwd: str
    rpc_timeout_s: float
    max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS
    """Events a turn may buffer for its request before it is interrupted (`QueuedTurn`)."""
    account: AccountState | None = None
    """The Codex home's account: a turn's outcome says whether its credentials work,
    and an exhausted window's reset time goes into a usage-limit error."""


class RoutedTurn(Protocol):
    """What the router and the server-request policy need of a running turn (v1 or v2)."""

    request_id: Any

    def feed(self, method: str, params: dict[str, Any]) -> None: ...
    async def answer_tool_call(self, params: dict[str, Any]) -> dict[str, Any]: ...


def _conversation_of(params: dict[str, Any]) -> Any:
    """v2 names the thread `threadId`; v1 names it `conversationId`, at the top or in `msg`."""
    key = params.get("threadId") or params.get("conversationId")
    if key is None:
        msg = params.get("msg")
        if isinstance(msg, dict):
            key = msg.get("conversation_id") or msg.get("thread_id")
    return key


class ThreadRouter:
    """Routes notifications by thread (v2) or conversation (v1) to the turn that owns it.

    Called on the RPC reader task: every branch is O(1) and never blocks.
    """

    __slots__ = ("_turns", "on_empty")

    def __init__(self) -> None:
        self._turns: dict[str, RoutedTurn] = {}
        self.on_empty: Callable[[], None] | None = None
        """Called when the last turn left: the worker runs none now."""

    def add(self, thread_id: str, turn: RoutedTurn) -> None:
        self._turns[thread_id] = turn

    def remove(self, thread_id: str) -> None:
        if self._turns.pop(thread_id, None) is not None and not self._turns and self.on_empty:
            self.on_empty()

    def get(self, thread_id: str) -> RoutedTurn | None:
        return self._turns.get(thread_id)

    def __len__(self) -> int:
        return len(self._turns)

    def dispatch(self, method: str, params: dict[str, Any]) -> None:
        key = _conversation_of(params)
        if key is None:
            return
        turn = self._turns.get(key)
        if turn is not None:
            turn.feed(method, params)

    def connection_lost(self) -> None:
        for turn in list(self._turns.values()):
            turn.feed(CONNECTION_LOST, {})


def thread_start_params(request: TurnRequest, settings: ThreadSettings) -> dict[str, Any]:
    params: dict[str, Any] = {
        "cwd": settings.cwd,
        "ephemeral": not request.persist,
        "approvalPolicy": APPROVAL_POLICY,
        "sandbox": "read-only",
    }
    if request.model:
        params["model"] = request.model
    if request.tools:
        params["dynamicTools"] = [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "inputSchema": tool.parameters,
            }
            for tool in request.tools
        ]
    if settings.profile == "plain":
        params["baseInstructions"] = request.instructions or PLAIN_DEFAULT_INSTRUCTIONS
    elif request.instructions:
        params["developerInstructions"] = request.instructions
    return params


def history_items(request: TurnRequest) -> list[dict[str, Any]]:
    """Prior conversation as raw Responses items; roles and tool calls survive (NOTES S3)."""
    items: list[dict[str, Any]] = []
    for entry in request.history:
        if isinstance(entry, HistoryToolCall):
            items.append(
                {
                    "type": "function_call",
                    "call_id": entry.call_id,
                    "name": entry.name,
                    "arguments": entry.arguments,
                }
            )
        elif isinstance(entry, HistoryToolOutput):
            items.append(
                {"type": "function_call_output", "call_id": entry.call_id, "output": entry.output}
            )
        else:
            part_type = "output_text" if entry.role == "assistant" else "input_text"
            content: list[dict[str, Any]] = [{"type": part_type, "text": entry.text}]
            content += [{"type": "input_image", "image_url": url} for url in entry.images]
            items.append({"type": "message", "role": entry.role, "content": content})
    return items


def prewarmable(request: TurnRequest) -> bool:
    """Whether a stocked thread may run this request: a new ephemeral thread (`codex.prewarm`)."""
    return not request.persist and request.continue_from is None


async def start_turn(
    conn: RpcConnection,
    router: ThreadRouter,
    request: TurnRequest,
    settings: ThreadSettings,
    *,
    prewarmed: str | None = None,
) -> V2Turn:
    """Open a thread, replay the history and start the turn. Raises BridgeError on failure.

    `prewarmed` is a thread started ahead of time with exactly the params
    `thread_start_params` gives for this request (`bridge.codex.prewarm`).
    With `request.on_thread` the turn runs on that thread as it is (it holds
    the history already); a thread Codex refuses (gone) falls back to the
    cold path within the call.
    """
    if request.on_thread is not None:
        try:
            return await _run_turn(conn, router, request, settings, request.on_thread, held=True)
        except _HeldThreadGone:
            log.info("held conversation thread refused; starting cold", thread=request.on_thread)
            request = dataclasses.replace(request, on_thread=None)
    if prewarmed is not None:
        thread_id = prewarmed
    else:
        thread_id = await _open_thread(conn, request, settings)
    return await _run_turn(conn, router, request, settings, thread_id, held=False)


class _HeldThreadGone(Exception):
    """turn/start on a held thread was refused: Codex no longer has it (or it is busy)."""


async def _run_turn(
    conn: RpcConnection,
    router: ThreadRouter,
    request: TurnRequest,
    settings: ThreadSettings,
    thread_id: str,
    *,
    held: bool,
) -> V2Turn:
    timeout = settings.rpc_timeout_s
    turn = V2Turn(conn, router, thread_id, settings, request)
    router.add(thread_id, turn)
    requested = False
    try:
        items = [] if held else history_items(request)
        if items:
            await conn.request(
                "thread/inject_items", {"threadId": thread_id, "items": items}, timeout=timeout
            )
        # No new text when the turn continues from tool outputs in the history.
        new_input: list[dict[str, Any]] = []
        if request.input is not None:
            new_input.append({"type": "text", "text": request.input})
        new_input += [{"type": "image", "url": url} for url in request.input_images]
        turn_params: dict[str, Any] = {"threadId": thread_id, "input": new_input}
        if request.effort:
            turn_params["effort"] = request.effort
        if request.reasoning_summary:
            turn_params["summary"] = request.reasoning_summary
        if request.output_schema is not None:
            turn_params["outputSchema"] = request.output_schema
        requested = True
        result = await conn.request("turn/start", turn_params, timeout=timeout)
        turn.set_turn_id(str(result["turn"]["id"]))
    except BaseException as exc:
        if requested and not isinstance(exc, RpcError | ConnectionClosed):
            # No answer (or a cancel) is no refusal: Codex may run the turn.
            await shielded(turn.interrupt_unconfirmed())
        await turn.aclose()
        if held and type(exc) is RpcError:
            raise _HeldThreadGone from exc
        if isinstance(exc, START_ERRORS):
            raise start_error(exc, "turn/start") from exc
        raise
    return turn


async def _open_thread(conn: RpcConnection, request: TurnRequest, settings: ThreadSettings) -> str:
    params = thread_start_params(request, settings)
    method = "thread/start"
    if request.continue_from is not None:
        # Each continuation forks the stored thread up to its turn, so two
        # requests continuing the same response never share a thread.
        method = "thread/fork"
        params["threadId"], params["lastTurnId"] = request.continue_from
        params["excludeTurns"] = True
    try:
        started = await conn.request(method, params, timeout=settings.rpc_timeout_s)
        return str(started["thread"]["id"])
    except START_ERRORS as exc:
        # Overload is backpressure (retried by the pool), not a lost conversation.
        if method == "thread/fork" and type(exc) is RpcError:
            raise NotFound(
                "The stored conversation of previous_response_id can no longer be continued.",
                param="previous_response_id",
            ) from exc
        raise start_error(exc, method) from exc


def _usage_of(breakdown: Mapping[str, Any]) -> Usage:
    return Usage(
        input_tokens=int(breakdown.get("inputTokens") or 0),
        cached_input_tokens=int(breakdown.get("cachedInputTokens") or 0),
        output_tokens=int(breakdown.get("outputTokens") or 0),
        reasoning_tokens=int(breakdown.get("reasoningOutputTokens") or 0),
        cache_write_tokens=int(breakdown.get("cacheWriteInputTokens") or 0),
    )


class V2Turn(QueuedTurn):
    """One running turn on its own thread. Implements `bridge.codex.turn.Turn`."""

    def __init__(
        self,
        conn: RpcConnection,
        router: ThreadRouter,
        thread_id: str,
        settings: ThreadSettings,
        request: TurnRequest | None = None,
    ) -> None:
        super().__init__(conn, thread_id, settings.rpc_timeout_s, settings.max_queued_events)
        self._router = router
        self._request = request
        self._account = settings.account
        # Usage already reported with earlier responses of this turn (tool
        # calls), and the estimated prompt of its next model call.
        self._billed = Usage()
        self._prompt_estimate: int | None = None
        self._pending_error: Any = None
        self._item: Any = None
        self._item_len = 0
        self._replay_skip = 0
        self._retrying = False
        self._emitted_any = False
        self._tool_calls: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._turn_known = asyncio.Event()
        # What the turn left in its thread, for `keep_thread`: the final text of
        # each reply message, and whether anything else (a tool call) is there.
        self._completed = False
        self._replies: list[str] = []
        self._foreign_items = False
        self._keep = False

    def set_turn_id(self, turn_id: str) -> None:
        self.turn_id = turn_id
        self._turn_known.set()

    def feed(self, method: str, params: dict[str, Any]) -> None:
        if method == "turn/started" and self.turn_id is None:
            # The turn/start answer may come after this, or never reach a
            # request that gave up on it: the id is known from here on.
            turn = params.get("turn")
            if isinstance(turn, dict) and turn.get("id") is not None:
                self.set_turn_id(str(turn["id"]))
        super().feed(method, params)

    async def interrupt_unconfirmed(self) -> None:
        """Interrupts a turn whose turn/start went unanswered, once its id is known (bounded)."""
        if self.turn_id is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ABANDONED_START_WAIT_S):
                    await self._turn_known.wait()
        await self.interrupt()

    # -- consumer side -------------------------------------------------------------------
    def _translate(self, method: str, params: dict[str, Any]) -> None:
        if self._done:
            return
        if method == "item/agentMessage/delta":
            self._on_delta(params.get("itemId"), params.get("delta") or "")
        elif method == "item/reasoning/summaryTextDelta":
            delta = params.get("delta")
            if delta:
                part = params.get("summaryIndex")
                self._ready.append(
                    ReasoningDelta(
                        str(delta),
                        str(params.get("itemId") or ""),
                        part if isinstance(part, int) else 0,
                    )
                )
        elif method == "item/completed":
            self._on_item(params.get("item"))
        elif method == "thread/tokenUsage/updated":
            last = (params.get("tokenUsage") or {}).get("last")
            if isinstance(last, dict):
                self._usage = self._usage + _usage_of(last)
        elif method == "error":
            if params.get("willRetry"):
                self._retrying = self._emitted_any
            else:
                self._pending_error = params.get("error")
        elif method == "turn/completed":
            turn = params.get("turn") or {}
            if self.turn_id is not None and turn.get("id") not in (None, self.turn_id):
                return
            self._done = True
            status = turn.get("status")
            if status == "completed":
                self._completed = True
                if self._account is not None:
                    self._account.succeeded()
                self._ready.append(Finished("stop", self._unbilled()))
            elif status == "interrupted":
                if self._usage == Usage():
                    # Codex never counts a model call that was cut short.
                    self._usage = Usage(input_tokens=self._next_prompt_estimate())
                self._ready.append(Finished("interrupted", self._unbilled()))
            else:
                error = error_from_codex(
                    turn.get("error") or self._pending_error, account=self._account
                )
                self._ready.append(Failed(error, self._unbilled()))
        elif method == TOOL_CALL:
            self._foreign_items = True
            arguments = params.get("arguments")
            name = str(params.get("tool"))
            text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
            self._ready.append(
                ToolCall(
                    call_id=str(params.get("callId")),
                    name=name,
                    arguments=text,
                    usage=self._bill_pending_call(estimate.item_tokens(name, text)),
                )
            )
        elif method == CONNECTION_LOST:
            self._done = True
            crashed = WorkerCrashed("The Codex worker exited during the turn.")
            self._ready.append(Failed(crashed, self._usage))

    # -- usage of a turn that spans several responses ----------------------------------
    # A response ending in a client tool call reports an estimate for the
    # model call Codex has not counted yet; every later response of the turn
    # reports Codex's count so far minus what was already reported. The
    # responses of one turn thus add up to Codex's count (or to the estimate
    # where it ran higher), never to twice it.
    def _next_prompt_estimate(self) -> int:
        if self._prompt_estimate is None:
            self._prompt_estimate = (
                estimate.prompt_tokens(self._request) if self._request is not None else 0
            )
        return self._prompt_estimate

    def _bill_pending_call(self, call_tokens: int) -> Usage:
        pending = Usage(input_tokens=self._next_prompt_estimate(), output_tokens=call_tokens)
        # The call becomes part of the next model call's prompt.
        self._prompt_estimate = self._next_prompt_estimate() + call_tokens
        report = (self._usage + pending).minus(self._billed)
        self._billed = self._billed + report
        return report

    def _unbilled(self) -> Usage:
        return self._usage.minus(self._billed)

    def _on_item(self, item: Any) -> None:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "agentMessage":
            self._replies.append(str(item.get("text") or ""))
        elif kind not in KEEPABLE_ITEMS:
            self._foreign_items = True

    def keep_thread(self, reply_text: str) -> bool:
        # An image sent with turn/start is recorded in Codex's own shape, which
        # the replayed path (inject_items) need not reproduce: such a turn is not kept.
        images = self._request is not None and bool(self._request.input_images)
        self._keep = (
            self._completed
            and not images
            and not self._foreign_items
            and self._replies == [reply_text]
            and not self._closed
            and not self._conn.closed
        )
        return self._keep

    def _on_delta(self, item_id: Any, delta: str) -> None:
        # Codex retries a dropped model stream by replaying the reply from its
        # start in a new item (NOTES S4); `_replay_skip` swallows what the
        # client already has so it never sees text twice.
        if item_id != self._item:
            if self._retrying:
                self._replay_skip = self._item_len
                self._retrying = False
            elif self._item is not None and self._item_len and delta:
                delta = "\n\n" + delta  # a further message item: keep them apart
            self._item = item_id
            self._item_len = 0
        if self._replay_skip:
            cut = min(self._replay_skip, len(delta))
            self._replay_skip -= cut
            self._item_len += cut
            delta = delta[cut:]
        if delta:
            self._item_len += len(delta)
            self._emitted_any = True
            self._ready.append(TextDelta(delta))

    async def answer_tool_call(self, params: dict[str, Any]) -> dict[str, Any]:
        """Runs on the server-request task: surface the call, then wait for the client's result."""
        call_id = str(params.get("callId"))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._tool_calls[call_id] = future
        self.feed(TOOL_CALL, params)
        try:
            return await future
        finally:
            self._tool_calls.pop(call_id, None)

    def resolve_tool_call(self, call_id: str, output: str, *, success: bool = True) -> bool:
        future = self._tool_calls.get(call_id)
        if future is None or future.done():
            return False
        future.set_result(
            {"contentItems": [{"type": "inputText", "text": output}], "success": success}
        )
        if self._prompt_estimate is not None:
            self._prompt_estimate += estimate.item_tokens(output)
        return True

    def _abandon_tool_calls(self) -> None:
        for call_id in list(self._tool_calls):
            self.resolve_tool_call(call_id, "The caller abandoned this tool call.", success=False)

    async def interrupt(self) -> None:
        self._abandon_tool_calls()
        if self._done or self.turn_id is None or self._conn.closed:
            return
        with contextlib.suppress(ConnectionClosed, RpcTimeout, RpcError):
            await self._conn.request(
                "turn/interrupt",
                {"threadId": self.thread_id, "turnId": self.turn_id},
                timeout=self._rpc_timeout_s,
            )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._abandon_tool_calls()
        self._router.remove(self.thread_id)
        await self._reap_overflow()
        if self._conn.closed or self._keep:
            return  # a kept thread is the conversation's, for its next turn
        # Unloads the ephemeral thread so a long-lived worker does not grow.
        with contextlib.suppress(ConnectionClosed, RpcTimeout, RpcError):
            await self._conn.request(
                "thread/unsubscribe", {"threadId": self.thread_id}, timeout=UNSUBSCRIBE_TIMEOUT_S
            )
