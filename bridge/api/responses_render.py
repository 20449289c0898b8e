"""Renders turn events as an OpenAI Responses object and its typed SSE events.

`ResponseRenderer` owns one response: its id, its output items and the
`sequence_number` of its stream. It emits the events in OpenAI's order
(response.created, response.in_progress, output_item.added,
content_part.added, output_text.delta..., output_text.done,
content_part.done, output_item.done, then response.completed / .incomplete /
.failed; a reasoning summary is its own `reasoning` item before the text,
with reasoning_summary_part.added, reasoning_summary_text.delta...,
reasoning_summary_text.done, reasoning_summary_part.done per part) and builds the final `response` object that the non-streaming path
returns. Knows Responses shapes and turn events; knows no JSON-RPC and no
aiohttp.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from bridge.codex.events import Usage
from bridge.errors import BridgeError, InvalidRequest, RateLimited


def response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def message_id() -> str:
    return "msg_" + secrets.token_hex(24)


def reasoning_id() -> str:
    return "rs_" + secrets.token_hex(24)


def response_error_code(error: BridgeError) -> str:
    """`response.error.code` is a closed set in the SDK; bridge codes map onto it."""
    if isinstance(error, RateLimited):
        return "rate_limit_exceeded"
    if isinstance(error, InvalidRequest):
        return "invalid_prompt"
    return "server_error"


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


@dataclass(slots=True)
class ResponseEcho:
    """Request fields the response object repeats back, as OpenAI does."""

    model: str
    instructions: str | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    store: bool = True
    metadata: dict[str, str] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    tools: list[Any] = field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    reasoning_effort: str | None = None
    reasoning: dict[str, Any] | None = None
    """The request's `reasoning` object as sent; None renders effort only."""
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None


Frame = tuple[str, bytes]
"""An SSE event: its type and its JSON data."""


class ResponseRenderer:
    def __init__(
        self, echo: ResponseEcho, *, rid: str | None = None, summaries: bool = False
    ) -> None:
        self._summaries = summaries
        """Whether the request asked for reasoning summaries (OpenAI sends none unasked)."""
        self.id = rid or response_id()
        self.created_at = int(time.time())
        self._echo = echo
        self._seq = 0
        self.status = "in_progress"
        self.output: list[dict[str, Any]] = []
        self.usage: Usage | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete_reason: str | None = None
        self.completed_at: int | None = None
        # The open message item, if text is streaming into one.
        self._message: dict[str, Any] | None = None
        self._text: list[str] = []
        self._delta_prefix = b""
        # The open reasoning item, if a summary is streaming into one: Codex's
        # (item, part) it belongs to, and the texts of its parts so far.
        self._reasoning: dict[str, Any] | None = None
        self._reasoning_at: tuple[str, int] = ("", 0)
        self._parts: list[list[str]] = []

    # -- whole-object view -------------------------------------------------------------
    def response_object(self) -> dict[str, Any]:
        e = self._echo
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "completed_at": self.completed_at,
            "background": False,
            "error": self.error,
            "incomplete_details": (
                {"reason": self.incomplete_reason} if self.incomplete_reason else None
            ),
            "instructions": e.instructions,
            "max_output_tokens": e.max_output_tokens,
            "max_tool_calls": None,
            "metadata": e.metadata,
            "model": e.model,
            "output": self.output,
            "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": e.previous_response_id,
            "reasoning": (
                e.reasoning
                if e.reasoning is not None
                else {"effort": e.reasoning_effort, "summary": None}
            ),
            "service_tier": "default",
            "store": e.store,
            "temperature": e.temperature if e.temperature is not None else 1.0,
            "text": e.text,
            "tool_choice": e.tool_choice,
            "tools": e.tools,
            "top_p": e.top_p if e.top_p is not None else 1.0,
            "truncation": "disabled",
            "usage": usage_object(self.usage) if self.usage is not None else None,
            "user": e.user,
        }

    # -- events ------------------------------------------------------------------------
    def _event(self, event_type: str, body: dict[str, Any]) -> Frame:
        body["type"] = event_type
        body["sequence_number"] = self._seq
        self._seq += 1
        return event_type, orjson.dumps(body)

    def start(self) -> list[Frame]:
        return [
            self._event("response.created", {"response": self.response_object()}),
            self._event("response.in_progress", {"response": self.response_object()}),
        ]

    def text(self, delta: str) -> list[Frame]:
        frames: list[Frame] = []
        if self._message is None:
            frames.extend(self._close_reasoning())
            frames.extend(self._open_message())
        self._text.append(delta)
        # Hot path: only the delta and the sequence number vary.
        seq = self._seq
        self._seq += 1
        data = (
            self._delta_prefix
            + orjson.dumps(delta)
            + b',"logprobs":[],"sequence_number":'
            + str(seq).encode()
            + b"}"
        )
        frames.append(("response.output_text.delta", data))
        return frames

    def _open_message(self) -> list[Frame]:
        item_id = message_id()
        index = len(self.output)
        self._message = {
            "id": item_id,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self.output.append(self._message)
        self._text = []
        self._delta_prefix = (
            b'{"type":"response.output_text.delta","item_id":'
            + orjson.dumps(item_id)
            + b',"output_index":'
            + str(index).encode()
            + b',"content_index":0,"delta":'
        )
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self._event(
                "response.output_item.added",
                {"output_index": index, "item": {**self._message, "content": []}},
            ),
            self._event(
                "response.content_part.added",
                {"item_id": item_id, "output_index": index, "content_index": 0, "part": part},
            ),
        ]

    def _close_message(self, status: str = "completed") -> list[Frame]:
        message = self._message
        if message is None:
            return []
        self._message = None
        index = self.output.index(message)
        text = "".join(self._text)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        message["content"] = [part]
        message["status"] = status
        item_id = message["id"]
        return [
            self._event(
                "response.output_text.done",
                {
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                },
            ),
            self._event(
                "response.content_part.done",
                {"item_id": item_id, "output_index": index, "content_index": 0, "part": part},
            ),
            self._event("response.output_item.done", {"output_index": index, "item": message}),
        ]

    # -- reasoning summary ----------------------------------------------------------------
    def reasoning(self, delta: str, item: str, part: int) -> list[Frame]:
        """A piece of the reasoning summary; dropped unless the request asked for summaries."""
        if not self._summaries:
            return []
        frames = self._close_message()
        if self._reasoning is not None and item != self._reasoning_at[0]:
            frames.extend(self._close_reasoning())
        if self._reasoning is None:
            frames.extend(self._open_reasoning())
            frames.extend(self._open_part())
        elif part != self._reasoning_at[1]:
            frames.extend(self._close_part())
            frames.extend(self._open_part())
        self._reasoning_at = (item, part)
        self._parts[-1].append(delta)
        frames.append(
            self._event(
                "response.reasoning_summary_text.delta", {**self._part_ref(), "delta": delta}
            )
        )
        return frames

    def _open_reasoning(self) -> list[Frame]:
        self._reasoning = {"id": reasoning_id(), "type": "reasoning", "summary": []}
        self._parts = []
        self.output.append(self._reasoning)
        item = {**self._reasoning, "summary": []}
        return [
            self._event(
                "response.output_item.added", {"output_index": len(self.output) - 1, "item": item}
            )
        ]

    def _part_ref(self) -> dict[str, Any]:
        assert self._reasoning is not None
        return {
            "item_id": self._reasoning["id"],
            "output_index": self.output.index(self._reasoning),
            "summary_index": len(self._parts) - 1,
        }

    def _open_part(self) -> list[Frame]:
        self._parts.append([])
        part = {"type": "summary_text", "text": ""}
        return [
            self._event("response.reasoning_summary_part.added", {**self._part_ref(), "part": part})
        ]

    def _close_part(self) -> list[Frame]:
        assert self._reasoning is not None
        text = "".join(self._parts[-1])
        part = {"type": "summary_text", "text": text}
        self._reasoning["summary"].append(part)
        ref = self._part_ref()
        return [
            self._event("response.reasoning_summary_text.done", {**ref, "text": text}),
            self._event("response.reasoning_summary_part.done", {**ref, "part": dict(part)}),
        ]

    def _close_reasoning(self) -> list[Frame]:
        item = self._reasoning
        if item is None:
            return []
        frames = self._close_part()
        self._reasoning = None
        index = self.output.index(item)
        frames.append(
            self._event("response.output_item.done", {"output_index": index, "item": item})
        )
        return frames

    # -- function calls --------------------------------------------------------------------
    def function_call(self, call_id: str, name: str, arguments: str) -> list[Frame]:
        """A complete function call item (added, argument deltas, done)."""
        frames = self._close_reasoning() + self._close_message()
        index = len(self.output)
        item_id = "fc_" + secrets.token_hex(24)
        item = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }
        self.output.append(item)
        frames.append(
            self._event("response.output_item.added", {"output_index": index, "item": dict(item)})
        )
        frames.append(
            self._event(
                "response.function_call_arguments.delta",
                {"item_id": item_id, "output_index": index, "delta": arguments},
            )
        )
        frames.append(
            self._event(
                "response.function_call_arguments.done",
                {"item_id": item_id, "output_index": index, "name": name, "arguments": arguments},
            )
        )
        item["arguments"] = arguments
        item["status"] = "completed"
        frames.append(
            self._event("response.output_item.done", {"output_index": index, "item": item})
        )
        return frames

    def complete(self, usage: Usage) -> list[Frame]:
        frames = self._close_reasoning() + self._close_message()
        self.usage = usage
        self.status = "completed"
        self.completed_at = int(time.time())
        frames.append(self._event("response.completed", {"response": self.response_object()}))
        return frames

    def incomplete(self, usage: Usage, reason: str) -> list[Frame]:
        # The cut-off message is itself incomplete.
        frames = self._close_reasoning() + self._close_message("incomplete")
        self.usage = usage
        self.status = "incomplete"
        self.incomplete_reason = reason
        frames.append(self._event("response.incomplete", {"response": self.response_object()}))
        return frames

    def fail(self, error: BridgeError, usage: Usage | None) -> list[Frame]:
        # A message the failure cut short is incomplete, not completed.
        frames = self._close_reasoning() + self._close_message("incomplete")
        self.usage = usage
        self.status = "failed"
        self.error = {"code": response_error_code(error), "message": error.message}
        frames.append(self._event("response.failed", {"response": self.response_object()}))
        return frames
