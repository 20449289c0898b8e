"""Reads the demo model's script out of a Responses request: `[[name]]` / `[[name=value]]` tokens.

The directives live in the last user message of the request's `input`.
Pure functions over the request JSON; knows nothing of HTTP.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

DEFAULT_REPLY: Final = "Hello from the demo model."
JSON_REPLY: Final = '{"answer":"demo","ok":true}'
_DIRECTIVE: Final = re.compile(r"\[\[([a-z_]+)(?:=(.*?))?\]\]", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ToolCallSpec:
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Script:
    reply: str = DEFAULT_REPLY
    delay_ms: int = 0
    ttfb_ms: int = 0
    status: int | None = None
    hang_after: int | None = None
    fail_after: int | None = None
    garbage: bool = False
    tool_calls: tuple[ToolCallSpec, ...] = ()
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    input_tokens: int = 1
    directives: dict[str, str] = field(default_factory=dict)


def _text_parts(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text")
        )
    return ""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    items = body.get("input")
    if isinstance(items, str):
        return [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        return []
    return [i for i in items if isinstance(i, dict)]


def _last_user_index(items: list[dict[str, Any]]) -> int:
    for index in range(len(items) - 1, -1, -1):
        if items[index].get("role") == "user" and items[index].get("type", "message") == "message":
            return index
    return -1


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _tool_outputs(items: list[dict[str, Any]]) -> list[str]:
    outputs: list[str] = []
    for item in items:
        if item.get("type") == "function_call_output":
            output = item.get("output")
            outputs.append(output if isinstance(output, str) else _text_parts(output))
    return outputs


def _tool_names(body: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            names.append(str(tool.get("name") or tool.get("type")))
    return sorted(names)


def parse_script(body: dict[str, Any]) -> Script:
    items = _messages(body)
    last = _last_user_index(items)
    text = _text_parts(items[last].get("content")) if last >= 0 else ""
    found = [(m.group(1), m.group(2)) for m in _DIRECTIVE.finditer(text)]
    directives = {name: value or "" for name, value in found}
    input_chars = sum(len(_text_parts(i.get("content"))) for i in items)

    reply = DEFAULT_REPLY
    if "reply" in directives:
        reply = directives["reply"]
    elif "words" in directives:
        reply = " ".join(f"w{i}" for i in range(1, _int(directives["words"]) + 1))
    elif "echo" in directives:
        reply = _DIRECTIVE.sub("", text).strip()
    elif "echo_input" in directives:
        reply = "\n".join(
            f"{i.get('role')}: {_text_parts(i.get('content'))}"
            for i in items
            if i.get("type", "message") == "message"
        )
    elif "echo_tools" in directives:
        reply = ",".join(_tool_names(body))
    elif "json" in directives:
        reply = JSON_REPLY

    calls: list[ToolCallSpec] = []
    outputs_after_user = _tool_outputs(items[last + 1 :]) if last >= 0 else []
    if outputs_after_user:
        reply = "Tool results: " + "; ".join(outputs_after_user)
    else:
        args = directives.get("args") or "{}"
        for name, value in found:
            if name == "tool" and value:
                calls.append(ToolCallSpec(name=value, arguments=args))
            elif name == "shell" and value:
                calls.append(
                    ToolCallSpec(name="exec_command", arguments=json.dumps({"cmd": value}))
                )

    return Script(
        reply=reply,
        delay_ms=_int(directives.get("delay_ms")),
        ttfb_ms=_int(directives.get("ttfb_ms")),
        status=_int(directives["status"]) if "status" in directives else None,
        hang_after=_int(directives["hang_after"]) if "hang_after" in directives else None,
        fail_after=_int(directives["fail_after"]) if "fail_after" in directives else None,
        garbage="garbage" in directives,
        tool_calls=tuple(calls),
        cached_tokens=_int(directives.get("cached")),
        reasoning_tokens=_int(directives.get("reasoning_tokens")),
        input_tokens=max(1, input_chars // 4),
        directives=directives,
    )


def split_deltas(reply: str) -> list[str]:
    """One delta per word with its following space, so the deltas join to the reply."""
    if not reply:
        return []
    return re.findall(r"\S+\s*|\s+", reply)
