"""Forced tool calls as structured output: the schema Codex gets and the call the reply becomes."""

from __future__ import annotations

import json

import pytest

from bridge.api.forced import ToolChoice, forced_call, plan_tools, strict_schema
from bridge.codex.events import Usage
from bridge.codex.turn import ToolSpec
from bridge.errors import InvalidRequest, UpstreamFailed

SEARCH = ToolSpec(
    "search",
    "Search the web",
    {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "filters": {
                "type": "object",
                "properties": {"site": {"type": "string"}},
            },
        },
        "required": ["query"],
    },
)
FREEFORM = ToolSpec("store", "", {"type": "object", "additionalProperties": True})


def test_strict_schema_closes_objects_and_makes_optional_properties_nullable() -> None:
    strict = strict_schema(SEARCH.parameters)
    assert strict is not None
    assert strict["required"] == ["query", "filters"]
    assert strict["additionalProperties"] is False
    filters = strict["properties"]["filters"]["anyOf"]
    assert filters[1] == {"type": "null"}
    assert filters[0]["required"] == ["site"] and filters[0]["additionalProperties"] is False


def test_strict_schema_gives_up_on_free_form_objects() -> None:
    assert strict_schema(FREEFORM.parameters) is None


def test_reply_becomes_a_call_without_the_nulls_strict_mode_added() -> None:
    forced = forced_call([SEARCH, FREEFORM])
    reply = {"call": {"name": "search", "arguments": {"query": "q", "filters": None}}}
    call = forced.to_call(json.dumps(reply), Usage(input_tokens=3))
    assert call.name == "search"
    assert json.loads(call.arguments) == {"query": "q"}
    assert call.usage == Usage(input_tokens=3)
    assert call.call_id.startswith("call_")


def test_a_free_form_function_takes_its_arguments_as_a_json_string() -> None:
    forced = forced_call([SEARCH, FREEFORM])
    branches = forced.schema["properties"]["call"]["anyOf"]
    assert branches[1]["properties"]["arguments"]["type"] == "string"
    reply = {"call": {"name": "store", "arguments": '{"k": [1, 2]}'}}
    assert json.loads(forced.to_call(json.dumps(reply), Usage()).arguments) == {"k": [1, 2]}


@pytest.mark.parametrize(
    "reply",
    [
        "plain text",
        '{"call": {"name": "unknown", "arguments": {}}}',
        '{"call": {"name": "store", "arguments": "not json"}}',
        '{"answer": 1}',
    ],
)
def test_a_reply_that_is_no_allowed_call_is_an_upstream_error(reply: str) -> None:
    with pytest.raises(UpstreamFailed):
        forced_call([SEARCH, FREEFORM]).to_call(reply, Usage())


def test_none_offers_nothing_and_auto_offers_everything() -> None:
    assert plan_tools([SEARCH], ToolChoice("none")).tools == []
    plan = plan_tools([SEARCH, FREEFORM], ToolChoice("auto", ("store",)))
    assert [t.name for t in plan.tools] == ["store"] and plan.forced is None


def test_required_without_tools_is_a_400() -> None:
    with pytest.raises(InvalidRequest):
        plan_tools([], ToolChoice("required"))
