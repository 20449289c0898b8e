"""Answers every request the app-server sends to the bridge, by policy.

An unanswered server request blocks the Codex turn forever (NOTES S6), so
every method gets an answer: approvals are declined, user-input and MCP
elicitations get nothing, credential and attestation requests are refused,
and unknown methods get a JSON-RPC "method not found".

Knows Codex's server-request vocabulary (v2 and the v1 approval names); knows
no OpenAI shapes.
"""

from __future__ import annotations

from typing import Any, Final

import structlog

from bridge.codex.v2 import TOOL_UNAVAILABLE, ThreadRouter
from bridge.worker.rpc import RpcError

log = structlog.get_logger("bridge.codex.server_requests")

METHOD_NOT_FOUND: Final = -32601

# Fixed answers. "decline" lets the turn go on with the model told the action
# was rejected; "cancel" would end the whole turn (NOTES S6).
_FIXED_ANSWERS: Final[dict[str, dict[str, Any]]] = {
    "item/commandExecution/requestApproval": {"decision": "decline"},
    "item/fileChange/requestApproval": {"decision": "decline"},
    "item/permissions/requestApproval": {"permissions": {}, "scope": "turn"},
    "item/tool/requestUserInput": {"answers": {}},
    "mcpServer/elicitation/request": {"action": "decline"},
    # v1 (legacy) approval requests.
    "execCommandApproval": {"decision": "denied"},
    "applyPatchApproval": {"decision": "denied"},
}


class ServerRequestPolicy:
    """The `on_server_request` handler of a worker's RPC connection."""

    def __init__(self, router: ThreadRouter) -> None:
        self._router = router

    async def answer(self, method: str, params: dict[str, Any]) -> Any:
        turn = self._router.get(str(params.get("threadId")))
        request_id = turn.request_id if turn is not None else None
        fixed = _FIXED_ANSWERS.get(method)
        if fixed is not None:
            log.info("declined codex request", method=method, request_id=request_id)
            return fixed
        if method == "item/tool/call":
            # Client-defined tools are answered by the turn that owns the thread.
            if turn is not None:
                return await turn.answer_tool_call(params)
            return TOOL_UNAVAILABLE
        log.warning("refused codex request", method=method, request_id=request_id)
        raise RpcError(METHOD_NOT_FOUND, f"codex-bridge does not serve {method}", None)
