"""Dialect v1: the legacy conversation protocol (Codex 0.77 and older, and shims that speak only it).

Per request: `newConversation` (profile settings, instructions),
`addConversationListener` (without it no events arrive), `sendUserTurn` with
the new input, then `codex/event/*` notifications (`agent_message_delta`,
`agent_reasoning_delta` / `agent_reasoning_section_break`, `token_count`, `task_complete`, `error`, `turn_aborted`) until the task ends;
`interruptConversation` cancels; `removeConversationListener` cleans up.
Notifications come with or without the `codex/event/` prefix and carry the
conversation id in `params.conversationId` or inside `msg`.

What this protocol cannot carry (prior messages with their roles, client
tools, forks of stored conversations, output schemas, images) is refused
with a 400 naming the parameter, never approximated. Produces the same turn
events as v2; knows no OpenAI shapes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

import structlog

from bridge.codex import estimate
from bridge.codex.events import Failed, Finished, ReasoningDelta, TextDelta, Usage
from bridge.codex.queued import START_ERRORS, QueuedTurn, shielded, start_error
from bridge.codex.turn import TurnRequest
from bridge.codex.v2 import (
    APPROVAL_POLICY,
    CONNECTION_LOST,
    PLAIN_DEFAULT_INSTRUCTIONS,
    ThreadRouter,
    ThreadSettings,
)
from bridge.errors import InvalidRequest, UpstreamFailed, WorkerCrashed
from bridge.worker.rpc import ConnectionClosed, RpcConnection, RpcError, RpcTimeout

log = structlog.get_logger("bridge.codex.v1")

EVENT_PREFIX: Final = "codex/event/"
UNSUBSCRIBE_TIMEOUT_S: Final = 5.0
# interruptConversation is answered when the task aborts (~5 ms, NOTES); for a
# task that already finished it is never answered, so the wait is short. The
# turn's end arrives as task_complete / turn_aborted either way.
INTERRUPT_TIMEOUT_S: Final = 2.0


def _refuse_unsupported(request: TurnRequest) -> None:
    def refuse(what: str, param: str) -> InvalidRequest:
        return InvalidRequest(
            f"{what} cannot be carried by this Codex worker's (legacy v1) protocol.",
            param=param,
            code="unsupported_by_dialect",
        )

    if request.history:
        raise refuse("Earlier messages of a conversation", "messages")
    if request.tools:
        raise refuse("Client tools", "tools")
    if request.continue_from is not None:
        raise refuse("Continuing a stored response", "previous_response_id")
    if request.output_schema is not None:
        raise refuse("A JSON schema for the reply", "response_format")
    if request.input_images:
        raise refuse("Image inputs", "messages")
    if request.input is None:
        raise refuse("Tool results", "messages")


# Codex 0.77 always sends the model an <environment_context> naming the cwd;
# in plain, "/" says nothing about the host (there is no tool to use it).
PLAIN_CWD: Final = "/"


def _cwd(settings: ThreadSettings) -> str:
    return PLAIN_CWD if settings.profile == "plain" else settings.cwd


def conversation_params(request: TurnRequest, settings: ThreadSettings) -> dict[str, Any]:
    params: dict[str, Any] = {
        "cwd": _cwd(settings),
        "approvalPolicy": APPROVAL_POLICY,
        "sandbox": "read-only",
    }
    if request.model:
        params["model"] = request.model
    if settings.profile == "plain":
        params["baseInstructions"] = request.instructions or PLAIN_DEFAULT_INSTRUCTIONS
    elif request.instructions:
        params["developerInstructions"] = request.instructions
    return params


async def start_turn(
    conn: RpcConnection, router: ThreadRouter, request: TurnRequest, settings: ThreadSettings
) -> V1Turn:
    _refuse_unsupported(request)
    timeout = settings.rpc_timeout_s
    try:
        created = await conn.request(
            "newConversation", conversation_params(request, settings), timeout=timeout
        )
        conversation_id = str(created["conversationId"])
    except START_ERRORS as exc:
        raise start_error(exc, "newConversation") from exc
    turn = V1Turn(conn, router, conversation_id, settings, request)
    router.add(conversation_id, turn)
    requested = False
    try:
        listener = await conn.request(
            "addConversationListener", {"conversationId": conversation_id}, timeout=timeout
        )
        turn.subscription_id = (
            listener.get("subscriptionId") if isinstance(listener, dict) else None
        )
        params: dict[str, Any] = {
            "conversationId": conversation_id,
            "items": [{"type": "text", "data": {"text": request.input}}],
            "cwd": _cwd(settings),
            "approvalPolicy": APPROVAL_POLICY,
            "sandboxPolicy": {"type": "read-only"},
            "model": request.model or created.get("model"),
            "summary": request.reasoning_summary or "auto",
        }
        if request.effort:
            params["effort"] = request.effort
        requested = True
        await conn.request("sendUserTurn", params, timeout=timeout)
    except BaseException as exc:
        if requested and not isinstance(exc, RpcError | ConnectionClosed):
            # No answer (or a cancel) is no refusal: Codex may run the task.
            # interruptConversation needs no turn id, and Codex reads it after
            # the sendUserTurn it follows.
            await shielded(turn.interrupt())
        await turn.aclose()
        if isinstance(exc, START_ERRORS):
            raise start_error(exc, "sendUserTurn") from exc
        raise
    return turn


def _usage_of(info: Any) -> Usage | None:
    """Each request has a fresh conversation, so its running total is this turn's usage."""
    total = info.get("total_token_usage") if isinstance(info, dict) else None
    if not isinstance(total, dict):
        return None
    return Usage(
        input_tokens=int(total.get("input_tokens") or 0),
        cached_input_tokens=int(total.get("cached_input_tokens") or 0),
        output_tokens=int(total.get("output_tokens") or 0),
        reasoning_tokens=int(total.get("reasoning_output_tokens") or 0),
    )


class V1Turn(QueuedTurn):
    """One task on its own conversation. Implements `bridge.codex.turn.Turn`."""

    def __init__(
        self,
        conn: RpcConnection,
        router: ThreadRouter,
        conversation_id: str,
        settings: ThreadSettings,
        request: TurnRequest | None = None,
    ) -> None:
        super().__init__(conn, conversation_id, settings.rpc_timeout_s, settings.max_queued_events)
        self._router = router
        self._request = request
        self._reasoning_part = 0
        self.subscription_id: Any = None

    def feed(self, method: str, params: dict[str, Any]) -> None:
        # 0.77 sends the v2 item/* notifications too; only the legacy events count.
        if method.startswith(EVENT_PREFIX) or method == CONNECTION_LOST or "msg" in params:
            super().feed(method, params)

    def _translate(self, method: str, params: dict[str, Any]) -> None:
        if self._done:
            return
        if method == CONNECTION_LOST:
            self._done = True
            crashed = WorkerCrashed("The Codex worker exited during the turn.")
            self._ready.append(Failed(crashed, self._usage))
            return
        msg = params.get("msg")
        if not isinstance(msg, dict):
            return
        kind = msg.get("type") or method.removeprefix(EVENT_PREFIX)
        if kind == "agent_message_delta":
            delta = msg.get("delta")
            if delta:
                self._ready.append(TextDelta(str(delta)))
        elif kind == "agent_reasoning_delta":
            delta = msg.get("delta")
            if delta:
                self._ready.append(ReasoningDelta(str(delta), "", self._reasoning_part))
        elif kind == "agent_reasoning_section_break":
            self._reasoning_part += 1
        elif kind == "token_count":
            usage = _usage_of(msg.get("info"))
            if usage is not None:
                self._usage = usage
        elif kind == "task_complete":
            self._done = True
            self._ready.append(Finished("stop", self._usage))
        elif kind == "turn_aborted":
            self._done = True
            if self._usage == Usage() and self._request is not None:
                # Codex never counts a model call that was cut short.
                self._usage = Usage(input_tokens=estimate.prompt_tokens(self._request))
            self._ready.append(Finished("interrupted", self._usage))
        elif kind == "error":
            self._done = True
            message = str(msg.get("message") or "The model provider failed.")
            self._ready.append(Failed(UpstreamFailed(message), self._usage))

    async def interrupt(self) -> None:
        if self._done or self._conn.closed:
            return
        with contextlib.suppress(ConnectionClosed, RpcTimeout, RpcError):
            await self._conn.request(
                "interruptConversation",
                {"conversationId": self.thread_id},
                timeout=INTERRUPT_TIMEOUT_S,
            )

    def resolve_tool_call(self, call_id: str, output: str, *, success: bool = True) -> bool:
        return False  # v1 carries no client tools

    async def answer_tool_call(self, params: dict[str, Any]) -> dict[str, Any]:
        raise RpcError(-32601, "client tools are not available on v1")

    def keep_thread(self, reply_text: str) -> bool:
        return False  # conversation affinity is v2 only: a v1 conversation is always closed

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._router.remove(self.thread_id)
        await self._reap_overflow()
        if self._conn.closed or self.subscription_id is None:
            return
        with contextlib.suppress(ConnectionClosed, RpcTimeout, RpcError):
            await self._conn.request(
                "removeConversationListener",
                {"subscriptionId": self.subscription_id},
                timeout=UNSUBSCRIBE_TIMEOUT_S,
            )
