"""Continuing a stored response on an instance that does not hold its Codex thread.

With a shared store (`store.url`) a `previous_response_id` can land on an
instance whose Codex home never saw the response's thread (another instance
ran it, or that instance is gone). `thread/fork` cannot continue it there,
so the conversation is rebuilt from the store instead: the chain of
responses back through each one's `previous_response_id`, oldest first,
each as its input items then its output (messages, function calls with
their outputs in place). The new turn starts a fresh thread with that
history, and the answer is the one the client would have got from the
instance holding the thread. Without a shared store no instance but this
one ran the stored responses: the thread is forked without looking for it.

What is not replayed: images (stored items keep no `data:` URLs), reasoning
items, and responses of the chain that expired or were deleted (the
conversation then starts at the oldest one left). Knows stored records and
conversation items; no HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bridge.api.conversation import Item, Said
from bridge.codex.threads import has_rollout
from bridge.codex.turn import HistoryToolCall, HistoryToolOutput
from bridge.store import ResponseStore, StoredResponse

# Longest chain of previous responses rebuilt for one request (each is one store read).
MAX_REPLAY_DEPTH: Final = 256


async def thread_is_here(codex_homes: Sequence[Path], thread_id: str) -> bool:
    """Whether one of this instance's Codex homes (one per account) holds the thread.

    A glob over their session folders: asked only with a shared store (`store.url`)."""
    return await asyncio.to_thread(
        lambda: any(has_rollout(home, thread_id) for home in codex_homes)
    )


async def replayed_conversation(
    store: ResponseStore, last: StoredResponse, owner: str
) -> list[Item]:
    """The conversation up to and including `last`, oldest first, from the store alone."""
    chain = [last]
    while len(chain) < MAX_REPLAY_DEPTH:
        previous_id = chain[-1].body.get("previous_response_id")
        if not isinstance(previous_id, str):
            break
        previous = await store.get(previous_id, owner)
        if previous is None:
            break
        chain.append(previous)
    items: list[Item] = []
    calls: set[str] = set()
    for record in reversed(chain):
        for raw in (*record.input_items, *(record.body.get("output") or [])):
            item = _item(raw)
            if isinstance(item, HistoryToolCall):
                # A client that sends a call back with its output repeats what the
                # previous response's output already holds.
                if item.call_id in calls:
                    continue
                calls.add(item.call_id)
            if item is not None:
                items.append(item)
    return items


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [
        str(part.get("text") if "text" in part else part.get("refusal", ""))
        for part in content
        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "refusal")
    ]
    return "\n".join(texts)


def _item(raw: Any) -> Item | None:
    if not isinstance(raw, dict):
        return None
    kind = raw.get("type")
    if kind == "message":
        return Said(str(raw.get("role", "user")), _text(raw.get("content")))
    if kind == "function_call":
        return HistoryToolCall(
            str(raw.get("call_id")), str(raw.get("name")), str(raw.get("arguments", ""))
        )
    if kind == "function_call_output":
        return HistoryToolOutput(str(raw.get("call_id")), _text(raw.get("output")))
    return None
