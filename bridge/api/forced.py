"""`tool_choice` kept: which tools the model is offered, and forced calls as structured output.

Codex can only offer tools; it cannot force a call. So a `required` or
named `tool_choice` does not offer the tools at all: the turn asks for
structured output instead (Codex's `outputSchema`, sent to the model as a
strict JSON schema), whose only valid replies are calls of the allowed
functions — `{"call": {"name": <const>, "arguments": <its parameters>}}`,
one `anyOf` branch per function — and the reply becomes a tool call with
a bridge-made call id. A reply that is not such a call is an upstream
error, never text. `none` offers no tools; `allowed_tools` narrows them.

The parameters go into the schema made strict-mode valid (every object
closed, every property required, optional ones nullable; the nulls are
dropped again from the arguments). A schema strict mode cannot express
(free-form objects, maps) is asked for as a JSON string instead.

Knows tool specs, schemas and the turn vocabulary; no OpenAI request shapes
(the endpoints parse `tool_choice` into a `ToolChoice`) and no JSON-RPC.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from bridge.codex.events import ToolCall, Usage
from bridge.codex.turn import ToolSpec
from bridge.errors import InvalidRequest, UpstreamFailed

# The wrapper property of the forced reply: strict mode wants an object at the root.
CALL_KEY: Final = "call"
SCHEMA_KEYS: Final = ("anyOf", "oneOf", "allOf")
DEFS_KEYS: Final = ("$defs", "definitions")

Mode = Literal["none", "auto", "required"]


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """An endpoint's `tool_choice`, normalized: the mode and the functions it allows."""

    mode: Mode = "auto"
    allowed: tuple[str, ...] | None = None
    """Names the model may call; None allows every tool."""
    param: str = "tool_choice"


@dataclass(frozen=True, slots=True)
class ForcedCall:
    """The output schema of a forced call, and how its reply becomes a `ToolCall`."""

    schema: dict[str, Any]
    originals: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each function's own parameters, to drop the nulls strict mode put in."""
    as_string: frozenset[str] = frozenset()
    """Functions whose arguments come back as a JSON string."""

    def to_call(self, text: str, usage: Usage) -> ToolCall:
        """The tool call the reply names; UpstreamFailed when the reply is not one."""
        try:
            reply = orjson.loads(text)
            call = reply[CALL_KEY]
            name = call["name"]
            arguments = call["arguments"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            raise _bad_reply() from None
        if not isinstance(name, str) or name not in self.originals:
            raise _bad_reply()
        if name in self.as_string:
            if not isinstance(arguments, str):
                raise _bad_reply()
            try:
                arguments = orjson.loads(arguments)
            except orjson.JSONDecodeError:
                raise _bad_reply() from None
        if not isinstance(arguments, dict):
            raise _bad_reply()
        arguments = _drop_optional_nulls(arguments, self.originals[name])
        return ToolCall(
            call_id="call_" + secrets.token_hex(12),
            name=name,
            arguments=orjson.dumps(arguments).decode(),
            usage=usage,
        )


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What the turn offers the model, and the forced call when the choice demands one."""

    tools: list[ToolSpec]
    forced: ForcedCall | None = None


def plan_tools(specs: Sequence[ToolSpec], choice: ToolChoice) -> ToolPlan:
    """Raises InvalidRequest for a choice that names no offered tool."""
    if choice.mode == "none" or (not specs and choice.mode == "auto" and choice.allowed is None):
        return ToolPlan([])
    names = [spec.name for spec in specs]
    if not specs:
        raise InvalidRequest(
            f"Invalid value for '{choice.param}': '{choice.param}' is only allowed when "
            "'tools' are specified.",
            param=choice.param,
            code="invalid_value",
        )
    if choice.allowed is not None:
        missing = [name for name in choice.allowed if name not in names]
        if missing:
            raise InvalidRequest(
                f"Invalid value for '{choice.param}': no function named '{missing[0]}' is "
                "in 'tools'.",
                param=choice.param,
                code="invalid_value",
            )
        specs = [spec for spec in specs if spec.name in choice.allowed]
    if choice.mode == "auto":
        return ToolPlan(list(specs))
    return ToolPlan([], forced_call(specs))


def forced_call(specs: Sequence[ToolSpec]) -> ForcedCall:
    branches: list[dict[str, Any]] = []
    as_string: set[str] = set()
    for spec in specs:
        arguments = strict_schema(spec.parameters)
        if arguments is None:
            as_string.add(spec.name)
            arguments = {
                "type": "string",
                "description": "The arguments as one JSON object matching this JSON schema: "
                + orjson.dumps(spec.parameters).decode(),
            }
        branch: dict[str, Any] = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "const": spec.name},
                "arguments": arguments,
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        if spec.description:
            branch["description"] = spec.description
        branches.append(branch)
    call: dict[str, Any] = branches[0] if len(branches) == 1 else {"anyOf": branches}
    schema = {
        "type": "object",
        "properties": {CALL_KEY: call},
        "required": [CALL_KEY],
        "additionalProperties": False,
    }
    return ForcedCall(
        schema,
        originals={spec.name: spec.parameters for spec in specs},
        as_string=frozenset(as_string),
    )


def strict_schema(schema: Any) -> dict[str, Any] | None:
    """A strict-mode-valid copy of a parameters schema, or None when it cannot be one."""
    if not isinstance(schema, dict):
        return None
    out = copy.copy(schema)
    for key in SCHEMA_KEYS:
        if key in out:
            if not isinstance(out[key], list):
                return None
            subs = [strict_schema(sub) for sub in out[key]]
            if any(sub is None for sub in subs):
                return None
            out[key] = subs
    for key in DEFS_KEYS:
        if key in out:
            if not isinstance(out[key], dict):
                return None
            defs = {name: strict_schema(sub) for name, sub in out[key].items()}
            if any(sub is None for sub in defs.values()):
                return None
            out[key] = defs
    if "items" in out:
        items = strict_schema(out["items"])
        if items is None:
            return None
        out["items"] = items
    kind = out.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if is_object or "properties" in out:
        properties = out.get("properties")
        if properties is None:
            # A free-form object (or a map): strict mode has no way to say it.
            return None
        if not isinstance(properties, dict) or out.get("additionalProperties") not in (None, False):
            return None
        required = set(out.get("required") or ())
        closed: dict[str, Any] = {}
        for name, sub in properties.items():
            strict = strict_schema(sub)
            if strict is None:
                return None
            closed[name] = strict if name in required else {"anyOf": [strict, {"type": "null"}]}
        out["properties"] = closed
        out["required"] = list(closed)
        out["additionalProperties"] = False
    return out


def _drop_optional_nulls(value: Any, schema: Any) -> Any:
    """Undoes strict_schema's nullable optionals: a null for an optional property means absent."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return value
        required = set(schema.get("required") or ())
        return {
            key: _drop_optional_nulls(item, properties.get(key))
            for key, item in value.items()
            if not (item is None and key not in required and key in properties)
        }
    if isinstance(value, list):
        return [_drop_optional_nulls(item, schema.get("items")) for item in value]
    return value


def _bad_reply() -> UpstreamFailed:
    return UpstreamFailed(
        "The model did not produce a call of the function(s) tool_choice requires.",
        code="invalid_tool_call_output",
    )
