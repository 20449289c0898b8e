"""Rebuilding a stored conversation for an instance without its Codex thread (`bridge.api.replay`)."""

from __future__ import annotations

import time
from typing import Any

from bridge.api.conversation import Said
from bridge.api.replay import replayed_conversation
from bridge.codex.turn import HistoryToolCall, HistoryToolOutput
from bridge.store import MemoryResponseStore, StoredResponse


def _message(role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def _stored(
    rid: str,
    previous: str | None,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    owner: str = "alice",
) -> StoredResponse:
    body = {"id": rid, "previous_response_id": previous, "output": outputs}
    return StoredResponse(rid, "t", "u", time.time(), body, owner, inputs)


async def test_the_chain_is_replayed_oldest_first_with_calls_and_outputs_in_place() -> None:
    store = MemoryResponseStore()
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    await store.put(_stored("r1", None, [_message("user", "hi")], [call]))
    result = {
        "type": "function_call_output",
        "call_id": "c1",
        "output": [{"type": "input_text", "text": "42"}],
    }
    # The client sent the call back with its output: it is not repeated.
    await store.put(_stored("r2", "r1", [call, result], [_message("assistant", "it is 42")]))
    last = await store.get("r2", "alice")
    assert last is not None
    assert await replayed_conversation(store, last, "alice") == [
        Said("user", "hi"),
        HistoryToolCall("c1", "f", "{}"),
        HistoryToolOutput("c1", "42"),
        Said("assistant", "it is 42"),
    ]


async def test_the_replay_starts_at_the_oldest_response_still_stored_for_the_owner() -> None:
    store = MemoryResponseStore()
    await store.put(_stored("r1", None, [_message("user", "mine?")], [], owner="bob"))
    await store.put(_stored("r2", "r1", [_message("user", "second")], [_message("assistant", "b")]))
    await store.put(_stored("r3", "r2", [_message("user", "third")], [_message("assistant", "c")]))
    last = await store.get("r3", "alice")
    assert last is not None
    # r1 is another owner's: as absent as a deleted one, and never replayed to alice.
    assert await replayed_conversation(store, last, "alice") == [
        Said("user", "second"),
        Said("assistant", "b"),
        Said("user", "third"),
        Said("assistant", "c"),
    ]
