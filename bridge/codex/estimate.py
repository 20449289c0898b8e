"""Token estimates for model calls Codex has not counted (yet), with the bridge's tokenizer.

Codex reports usage per finished model call. A call that ends in a client
tool call is not reported while the tool runs (the turn is blocked on the
client), and a call the bridge interrupted is never reported. For those the
dialects report an estimate: the tokens of what the client sent (instructions,
messages, tool calls and results, tool definitions, output schema) or of
what the model produced, counted with `bridge.tokens`. Codex's own framing
around the prompt is not in the estimate, so it errs low. Knows turn requests
and tokens; no JSON-RPC and no OpenAI shapes.
"""

from __future__ import annotations

from typing import Final

import orjson

from bridge.codex.turn import HistoryMessage, HistoryToolCall, HistoryToolOutput, TurnRequest
from bridge.tokens import count_tokens

# Framing tokens per message or item (role, separators), as OpenAI's
# chat-format accounting adds them.
ITEM_OVERHEAD_TOKENS: Final = 4
# A low-detail image's price in OpenAI's accounting; the bridge does not decode
# images to size them.
IMAGE_TOKENS: Final = 85


def prompt_tokens(request: TurnRequest) -> int:
    """Estimated input tokens of the turn's first model call."""
    texts: list[str] = [request.instructions or "", request.input or ""]
    items = 2 + len(request.history)
    images = len(request.input_images)
    for entry in request.history:
        if isinstance(entry, HistoryMessage):
            texts.append(entry.text)
            images += len(entry.images)
        elif isinstance(entry, HistoryToolCall):
            texts += (entry.name, entry.arguments)
        elif isinstance(entry, HistoryToolOutput):
            texts.append(entry.output)
    for tool in request.tools:
        texts += (tool.name, tool.description, orjson.dumps(tool.parameters).decode())
        items += 1
    if request.output_schema is not None:
        texts.append(orjson.dumps(request.output_schema).decode())
    return (
        sum(count_tokens(text) for text in texts if text)
        + items * ITEM_OVERHEAD_TOKENS
        + images * IMAGE_TOKENS
    )


def item_tokens(*texts: str) -> int:
    """Estimated tokens of one produced or returned item (a tool call, a tool result)."""
    return sum(count_tokens(text) for text in texts if text) + ITEM_OVERHEAD_TOKENS
