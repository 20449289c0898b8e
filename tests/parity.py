"""Golden parity scenarios: the same HTTP requests on both dialects, normalised for comparison.

Each scenario is one HTTP exchange with the bridge (plain or SSE), recorded
as the request, the normalised response (status, JSON body or SSE frames)
and the JSON-RPC requests the bridge sent to Codex during it. Volatile
values (ids, timestamps, paths, prompt token counts that depend on Codex's
own preamble) are replaced by placeholders. `scripts/capture-fixtures`
writes them to `parity-fixtures/<dialect>/<scenario>/`; `tests/integration/
test_parity.py` replays them against the real binaries.

Only what the bridge sends is recorded on the RPC side: Codex's own
notifications arrive in an order that varies from run to run (NOTES S2).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp
import orjson

from bridge.api.pending import PENDING
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until

ROOT: Final = Path(__file__).resolve().parents[1]
FIXTURES: Final = ROOT / "parity-fixtures"
LEGACY_CODEX: Final = ROOT / ".codex-legacy" / "node_modules" / ".bin" / "codex"
DIALECTS: Final = ("v2", "v1")
CLEANUP_WAIT_S: Final = 15.0

_IDS: Final = re.compile(
    r"\b(chatcmpl|cmpl|resp|msg|fc|call|req)[-_][A-Za-z0-9_]{6,}|"
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
_VOLATILE_KEYS: Final = frozenset(
    {"created", "created_at", "completed_at", "sequence_number_base", "userAgent"}
)
# Prompt-side counts include Codex's own preamble (with the worker's temp cwd).
_PROMPT_COUNTS: Final = frozenset({"prompt_tokens", "input_tokens", "total_tokens"})
# Health probes run on a timer, not because of the scenario.
_UNRELATED_METHODS: Final = frozenset({"thread/loaded/list"})


def _scrub(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, key) for v in value]
    if key in _VOLATILE_KEYS and value is not None:
        return f"<{key}>"
    if key in _PROMPT_COUNTS and isinstance(value, int):
        return "<n>"
    if key in ("cwd", "threadId", "conversationId", "turnId", "subscriptionId") and value:
        return f"<{key}>"
    if isinstance(value, str):
        return _IDS.sub(lambda m: f"<{m.group(1) or 'uuid'}>", value)
    return value


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    body: dict[str, Any]
    v1: bool = True
    """Whether the legacy protocol can carry it (else the v1 answer is the 400)."""
    disconnect_after_content: bool = False


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": text}], **extra}


TOOLS: Final = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]

SCENARIOS: Final = (
    Scenario("chat_plain", "/v1/chat/completions", _chat("[[reply=Hello parity]]")),
    Scenario(
        "chat_stream_usage",
        "/v1/chat/completions",
        _chat("[[words=4]]", stream=True, stream_options={"include_usage": True}),
    ),
    Scenario(
        "chat_history",
        "/v1/chat/completions",
        {
            "model": DEMO_MODEL_ID,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "one"},
                {"role": "user", "content": "second [[reply=two]]"},
            ],
        },
        v1=False,
    ),
    Scenario("upstream_500", "/v1/chat/completions", _chat("[[status=500]]")),
    Scenario("upstream_hang", "/v1/chat/completions", _chat("[[words=3]] [[hang_after=1]]")),
    Scenario(
        "client_interrupt",
        "/v1/chat/completions",
        _chat("[[words=100]] [[delay_ms=50]]", stream=True),
        disconnect_after_content=True,
    ),
    Scenario(
        "completions", "/v1/completions", {"model": DEMO_MODEL_ID, "prompt": "[[reply=done]]"}
    ),
    Scenario(
        "responses_stream",
        "/v1/responses",
        {"model": DEMO_MODEL_ID, "input": "[[words=3]]", "stream": True, "store": False},
    ),
    Scenario(
        "tool_call",
        "/v1/chat/completions",
        _chat('[[tool=get_weather]] [[args={"city":"Oslo"}]]', tools=TOOLS),
        v1=False,
    ),
    Scenario(
        "structured_output",
        "/v1/chat/completions",
        _chat(
            "[[json]]",
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": {"type": "object"}},
            },
        ),
        v1=False,
    ),
    Scenario("chat_n2", "/v1/chat/completions", _chat("[[reply=twice]]", n=2)),
)


@dataclass
class Recorder:
    """Keeps the bridge's JSON-RPC requests (and its answers to Codex) while armed."""

    armed: bool = False
    sent: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, direction: Literal["c2s", "s2c"], message: dict[str, Any]) -> None:
        if not self.armed or direction != "c2s":
            return
        if message.get("method") in _UNRELATED_METHODS:
            return
        entry = {k: v for k, v in message.items() if k != "id"}
        self.sent.append(_scrub(entry))


@asynccontextmanager
async def parity_bridge(dialect: str, home: Path) -> AsyncIterator[tuple[RunningBridge, Recorder]]:
    overrides: dict[str, Any] = {
        "codex.idle_timeout_s": 2.0,
        "codex.dialect": dialect,
        # The v2 health probe opens a thread (thread/start + unsubscribe): keep it
        # out of the transcripts by not probing during a scenario.
        "codex.health_interval_s": 3600.0,
        # The transcripts pin each request's RPCs on the cold path; a background
        # refill would interleave its thread/start. The warm path sends the same
        # params and gives the same output (tests/integration/test_prewarm.py).
        "codex.prewarm_threads": 0,
        # Likewise a kept conversation thread: a kept turn sends no thread/unsubscribe,
        # and a later scenario re-sending its conversation would skip thread/start and
        # inject. The model receives the same conversation either way
        # (tests/integration/test_affinity.py).
        "codex.affinity": False,
    }
    if dialect == "v1":
        overrides["codex.bin"] = str(LEGACY_CODEX)
    recorder = Recorder()
    async with running_bridge(
        bridge_test_settings(home, **overrides), also_hook=recorder
    ) as bridge:
        yield bridge, recorder


def _frames(raw: bytes) -> list[Any]:
    frames: list[Any] = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        event = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = "\n".join(line[6:] for line in lines if line.startswith("data: "))
        payload = data if data == "[DONE]" else _scrub(orjson.loads(data))
        frames.append({"event": event, "data": payload} if event else payload)
    return frames


async def run(bridge: RunningBridge, recorder: Recorder, scenario: Scenario) -> dict[str, Any]:
    """Runs one scenario; returns {request, response, rpc}, normalised."""
    recorder.sent.clear()
    recorder.armed = True
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(bridge.base_url + scenario.path, json=scenario.body) as r:
                status = r.status
                streamed = r.headers.get("Content-Type", "").startswith("text/event-stream")
                if scenario.disconnect_after_content:
                    raw = b""
                    while b'"content":"w1 "' not in raw:
                        raw += await r.content.readany()
                    raw = raw[: raw.index(b'"content":"w1 "')].rsplit(b"\n\n", 1)[0] + b"\n\n"
                    r.close()
                else:
                    raw = await r.read()
        # A turn parked for tool results is released (interrupted) as an expiry would.
        await bridge.app[PENDING].close()
        # The slot is freed after the turn's cleanup RPCs (interrupt, unsubscribe) went out.
        await wait_until(lambda: bridge.pool.active_turns == 0, timeout=CLEANUP_WAIT_S)
    finally:
        recorder.armed = False
    body: Any = _frames(raw) if streamed else _scrub(orjson.loads(raw))
    return {
        "request": {"path": scenario.path, "body": scenario.body},
        "response": {"status": status, "body": body},
        "rpc": recorder.sent,
    }


def fixture_dir(dialect: str, scenario: Scenario) -> Path:
    return FIXTURES / dialect / scenario.name


def dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"
