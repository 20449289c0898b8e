"""Reads the demo model's script out of a Responses request: `[[name]]` / `[[name=value]]` tokens.

The directives live in the last user message of the request's `input`.
Like a real model, the demo honours what the request asks of it: a
`json_schema` text format with no reply directive gets a reply that is an
instance of the schema (`[[tool=NAME]]` / `[[args=JSON]]` pick the branch
and the arguments of a forced call's schema), and `[[reasoning=A||B]]`
streams a reasoning summary of parts A and B only when the request's
`reasoning.summary` asks for one. Pure functions over the request JSON;
knows nothing of HTTP.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

DEFAULT_REPLY: Final = "Hello from the demo model."
JSON_REPLY: Final = '{"answer":"demo","ok":true}'
# Directives that choose the reply text; a schema instance stands in for them.
REPLY_DIRECTIVES: Final = ("reply", "words", "echo", "echo_input", "echo_tools", "json")
SUMMARY_MODES: Final = ("auto", "concise", "detailed")
# Schema nesting the instance generator follows before it gives up ($ref cycles).
MAX_SCHEMA_DEPTH: Final = 32
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
    reasoning: tuple[str, ...] = ()
    """Parts of the reasoning summary to stream before the reply."""
    input_tokens: int = 1
    usage_limit_s: int | None = None
    """Answer the backend's usage-limit 429, the window resetting in this many seconds."""
    rate_limits: tuple[float, float] | None = None
    """Used percent of the primary and secondary windows, sent as rate-limit headers."""
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
    schema = _json_schema(body)
    if schema is not None and not any(name in directives for name in REPLY_DIRECTIVES):
        args = _json_or_none(directives.get("args"))
        instance = schema_instance(schema, schema, directives.get("tool"), args, 0)
        reply = json.dumps(instance, separators=(",", ":"))

    calls: list[ToolCallSpec] = []
    outputs_after_user = _tool_outputs(items[last + 1 :]) if last >= 0 else []
    if outputs_after_user:
        reply = "Tool results: " + "; ".join(outputs_after_user)
    else:
        args = directives.get("args") or "{}"
        offered = set(_tool_names(body))
        for name, value in found:
            # Under a JSON schema a model calls only the tools it is offered.
            if name == "tool" and value and (schema is None or value in offered):
                calls.append(ToolCallSpec(name=value, arguments=args))
            elif name == "shell" and value:
                calls.append(
                    ToolCallSpec(name="exec_command", arguments=json.dumps({"cmd": value}))
                )

    reasoning: tuple[str, ...] = ()
    summary = (body.get("reasoning") or {}).get("summary")
    if directives.get("reasoning") and summary in SUMMARY_MODES:
        reasoning = tuple(p for p in directives["reasoning"].split("||") if p)
    reasoning_tokens = _int(directives.get("reasoning_tokens"))
    if reasoning and not reasoning_tokens:
        reasoning_tokens = sum(len(split_deltas(p)) for p in reasoning)
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
        reasoning_tokens=reasoning_tokens,
        reasoning=reasoning,
        input_tokens=max(1, input_chars // 4),
        usage_limit_s=_int(directives["usage_limit"]) if "usage_limit" in directives else None,
        rate_limits=_percent_pair(directives.get("rate_limits")),
        directives=directives,
    )


def _percent_pair(raw: str | None) -> tuple[float, float] | None:
    """`[[rate_limits=P,S]]`: the primary and secondary windows' used percent."""
    if raw is None:
        return None
    primary, _, secondary = raw.partition(",")
    try:
        return float(primary or 0), float(secondary or 0)
    except ValueError:
        return None


def split_deltas(reply: str) -> list[str]:
    """One delta per word with its following space, so the deltas join to the reply."""
    if not reply:
        return []
    return re.findall(r"\S+\s*|\s+", reply)


def _json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        return schema if isinstance(schema, dict) else {}
    return None


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _named(branch: Any, name: str | None) -> bool:
    props = branch.get("properties") if isinstance(branch, dict) else None
    if not isinstance(props, dict) or name is None:
        return False
    named = props.get("name")
    return isinstance(named, dict) and named.get("const") == name


def schema_instance(schema: Any, root: Any, prefer: str | None, args: Any, depth: int) -> Any:
    """A small value valid under `schema`: what a structured-output model would answer.

    In a choice between branches, the one whose `name` const is `prefer` wins;
    the `arguments` next to that name are `args` when given.
    """
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key) if isinstance(target, dict) else None
        return schema_instance(target, root, prefer, args, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            # The named branch if any, else the smallest answer: null where allowed.
            pick = next(
                (b for b in branches if _named(b, prefer)),
                next((b for b in branches if b == {"type": "null"}), branches[0]),
            )
            return schema_instance(pick, root, prefer, args, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {}
        value = {
            key: schema_instance(sub, root, prefer, args, depth + 1) for key, sub in props.items()
        }
        named = "name" in props and (prefer is None or _named(schema, prefer))
        if args is not None and named and "arguments" in value:
            wants_text = (props.get("arguments") or {}).get("type") == "string"
            value["arguments"] = json.dumps(args) if wants_text else args
        return value
    return {"array": [], "string": "demo", "integer": 1, "number": 1, "boolean": True}.get(
        str(kind)
    )
