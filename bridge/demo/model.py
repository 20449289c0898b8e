"""The demo model: a deterministic OpenAI Responses streaming server on 127.0.0.1.

Codex calls `POST {base_url}/responses` with `stream: true`; this answers
with the SSE events Codex parses (response.created, a reasoning item with
reasoning_summary_part.added / reasoning_summary_text.delta... when a summary
is scripted and asked for, output_item.added, output_text.delta...,
output_item.done, response.completed with usage), or
with scripted failures, hangs and tool calls (see `bridge.demo.script`).
Like the ChatGPT backend it can answer a plan's usage limit (HTTP 429,
`error.type: "usage_limit_reached"`, `resets_at`, `plan_type`, the
`x-codex-primary-*` / `x-codex-secondary-*` headers) and report rate-limit
windows in those headers on a normal answer: by directive
(`[[usage_limit=SECONDS]]`, `[[rate_limits=PRIMARY,SECONDARY]]`) or by
credential (an API key containing `LIMITED_KEY_MARKER` is at its limit, one
containing `REFUSED_KEY_MARKER` is refused with 401).
`serve --demo`, the tests and the benchmarks all use it. Knows the
Responses wire format; knows nothing of the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from bridge.demo.script import Script, parse_script, split_deltas

DEMO_MODEL_ID: Final = "codex-demo"
Sender = Callable[[str, dict[str, Any]], Awaitable[None]]
# How many request bodies are kept for tests to inspect.
MAX_RECORDED: Final = 500
# A scripted hang never outlives this (the client or stop() usually ends it first).
MAX_HANG_S: Final = 600.0
# Credentials that behave like a plan at its usage limit / a revoked key.
LIMITED_KEY_MARKER: Final = "-limited"
REFUSED_KEY_MARKER: Final = "-refused"
# A limited key's window resets this long after the request.
LIMITED_KEY_RESET_S: Final = 3600
# The windows the backend reports: 5 hours and a week (codex-rs rate_limits.rs headers).
PRIMARY_WINDOW_MINUTES: Final = 300
SECONDARY_WINDOW_MINUTES: Final = 10080
DEMO_PLAN: Final = "plus"


class DemoModel:
    API_KEY_ENV: Final = "CODEX_BRIDGE_DEMO_KEY"
    API_KEY_VALUE: Final = "demo-key-not-a-secret"

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, stream_idle_timeout_ms: int = 10_000
    ) -> None:
        self._host = host
        self._port = port
        self._idle_ms = stream_idle_timeout_ms
        self._runner: web.AppRunner | None = None
        self._requests: list[dict[str, Any]] = []
        self.credentials: list[str] = []
        """The `Authorization` header of each recorded request (which account sent it)."""
        self._ids = itertools.count(1)
        self._stopping = asyncio.Event()
        self.aborted_streams = 0
        """Streams whose client (Codex) went away before the end: interrupted turns."""

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._requests

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}/v1"

    def codex_config_overrides(
        self, provider: str = "codexbridge-demo", *, codex_account: bool = False
    ) -> list[str]:
        """The provider settings; `codex_account`: authenticate with the Codex account
        (as OpenAI's provider does) instead of the demo's own key."""
        p = f"model_providers.{provider}"
        credential = (
            f"{p}.requires_openai_auth=true"
            if codex_account
            else f'{p}.env_key="{self.API_KEY_ENV}"'
        )
        return [
            f'model_provider="{provider}"',
            f'model="{DEMO_MODEL_ID}"',
            f'{p}.name="codex-bridge demo"',
            f'{p}.base_url="{self.base_url}"',
            f'{p}.wire_api="responses"',
            credential,
            f"{p}.request_max_retries=0",
            # Retried streams replay text (NOTES S4); the demo never needs them.
            f"{p}.stream_max_retries=0",
            f"{p}.stream_idle_timeout_ms={self._idle_ms}",
            f"{p}.supports_websockets=false",
        ]

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ----------------------------------------------------------------------
    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": DEMO_MODEL_ID,
                        "object": "model",
                        "created": 0,
                        "owned_by": "codex-bridge-demo",
                    }
                ],
            }
        )

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError:
            return web.json_response(
                {
                    "error": {
                        "message": "bad body",
                        "type": "invalid_request_error",
                        "code": None,
                        "param": None,
                    }
                },
                status=400,
            )
        credential = request.headers.get("Authorization", "")
        self._requests.append(body)
        del self._requests[:-MAX_RECORDED]
        self.credentials.append(credential)
        del self.credentials[:-MAX_RECORDED]
        script = parse_script(body)
        if script.ttfb_ms:
            await asyncio.sleep(script.ttfb_ms / 1000)
        if REFUSED_KEY_MARKER in credential:
            return web.json_response(
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                        "param": None,
                    }
                },
                status=401,
            )
        limit_s = script.usage_limit_s
        if limit_s is None and LIMITED_KEY_MARKER in credential:
            limit_s = LIMITED_KEY_RESET_S
        if limit_s is not None:
            return usage_limit_answer(limit_s)
        if script.status is not None and script.status >= 400:
            headers = {"retry-after": "1"} if script.status == 429 else {}
            return web.json_response(
                {
                    "error": {
                        "message": f"scripted {script.status}",
                        "type": "server_error",
                        "code": None,
                        "param": None,
                    }
                },
                status=script.status,
                headers=headers,
            )
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if script.rate_limits is not None:
            primary, secondary = script.rate_limits
            headers.update(rate_limit_headers(primary, secondary, reset_in_s=LIMITED_KEY_RESET_S))
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        finished = False
        try:
            await self._stream(response, script, str(body.get("model") or DEMO_MODEL_ID))
            finished = True
        except ConnectionResetError:
            pass
        finally:
            if not finished:
                self.aborted_streams += 1
        return response

    async def _stream(self, response: web.StreamResponse, script: Script, model: str) -> None:
        n = next(self._ids)
        rid = f"resp_demo_{n}"
        seq = itertools.count()

        async def send(event_type: str, data: dict[str, Any]) -> None:
            data["type"] = event_type
            data["sequence_number"] = next(seq)
            await response.write(
                b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
            )

        base = {
            "id": rid,
            "object": "response",
            "created_at": 0,
            "model": model,
            "status": "in_progress",
            "output": [],
        }
        await send("response.created", {"response": base})
        await send("response.in_progress", {"response": base})
        output: list[dict[str, Any]] = []
        text_deltas = 0
        if script.reasoning:
            output.append(await self._reasoning(send, n, script.reasoning))
        first = len(output)
        if script.tool_calls:
            for index, call in enumerate(script.tool_calls):
                item = {
                    "id": f"fc_demo_{n}_{index}",
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": f"call_demo_{n}_{index}",
                    "name": call.name,
                    "arguments": "",
                }
                await send(
                    "response.output_item.added", {"output_index": first + index, "item": item}
                )
                half = len(call.arguments) // 2
                for chunk in (call.arguments[:half], call.arguments[half:]):
                    await send(
                        "response.function_call_arguments.delta",
                        {"item_id": item["id"], "output_index": first + index, "delta": chunk},
                    )
                await send(
                    "response.function_call_arguments.done",
                    {
                        "item_id": item["id"],
                        "output_index": first + index,
                        "arguments": call.arguments,
                    },
                )
                done = {**item, "status": "completed", "arguments": call.arguments}
                await send(
                    "response.output_item.done", {"output_index": first + index, "item": done}
                )
                output.append(done)
        else:
            item_id = f"msg_demo_{n}"
            message = {
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            await send("response.output_item.added", {"output_index": first, "item": message})
            await send(
                "response.content_part.added",
                {
                    "item_id": item_id,
                    "output_index": first,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
            )
            if script.garbage:
                await response.write(b"data: this is not json\n\n")
                return
            sent: list[str] = []
            for delta in split_deltas(script.reply):
                if script.hang_after is not None and text_deltas >= script.hang_after:
                    await self._hang()
                    return
                if script.fail_after is not None and text_deltas >= script.fail_after:
                    failed = {
                        **base,
                        "status": "failed",
                        "error": {"code": "server_error", "message": "scripted response.failed"},
                    }
                    await send("response.failed", {"response": failed})
                    return
                if script.delay_ms:
                    await asyncio.sleep(script.delay_ms / 1000)
                await send(
                    "response.output_text.delta",
                    {
                        "item_id": item_id,
                        "output_index": first,
                        "content_index": 0,
                        "delta": delta,
                        "logprobs": [],
                    },
                )
                sent.append(delta)
                text_deltas += 1
            if script.hang_after is not None:
                await self._hang()
                return
            text = "".join(sent)
            part = {"type": "output_text", "text": text, "annotations": []}
            await send(
                "response.output_text.done",
                {
                    "item_id": item_id,
                    "output_index": first,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                },
            )
            await send(
                "response.content_part.done",
                {"item_id": item_id, "output_index": first, "content_index": 0, "part": part},
            )
            done_message = {**message, "status": "completed", "content": [part]}
            await send("response.output_item.done", {"output_index": first, "item": done_message})
            output.append(done_message)
        output_tokens = max(1, text_deltas) + script.reasoning_tokens
        usage = {
            "input_tokens": script.input_tokens,
            "input_tokens_details": {"cached_tokens": script.cached_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": script.reasoning_tokens},
            "total_tokens": script.input_tokens + output_tokens,
        }
        await send(
            "response.completed",
            {"response": {**base, "status": "completed", "output": output, "usage": usage}},
        )

    async def _reasoning(self, send: Sender, n: int, parts: tuple[str, ...]) -> dict[str, Any]:
        """A reasoning item with a summary, in the events Codex parses; returns the item."""
        item_id = f"rs_demo_{n}"
        item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
        await send("response.output_item.added", {"output_index": 0, "item": item})
        summary: list[dict[str, Any]] = []
        for index, text in enumerate(parts):
            ref = {"item_id": item_id, "output_index": 0, "summary_index": index}
            empty = {"type": "summary_text", "text": ""}
            await send("response.reasoning_summary_part.added", {**ref, "part": empty})
            for delta in split_deltas(text):
                await send("response.reasoning_summary_text.delta", {**ref, "delta": delta})
            await send("response.reasoning_summary_text.done", {**ref, "text": text})
            part = {"type": "summary_text", "text": text}
            await send("response.reasoning_summary_part.done", {**ref, "part": part})
            summary.append(part)
        done = {**item, "summary": summary, "encrypted_content": None}
        await send("response.output_item.done", {"output_index": 0, "item": done})
        return done

    async def _hang(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MAX_HANG_S):
                await self._stopping.wait()


def rate_limit_headers(primary: float, secondary: float, *, reset_in_s: int) -> dict[str, str]:
    """The backend's rate-limit headers, as Codex parses them (codex-api rate_limits.rs)."""
    now = int(time.time())
    return {
        "x-codex-primary-used-percent": f"{primary:g}",
        "x-codex-primary-window-minutes": str(PRIMARY_WINDOW_MINUTES),
        "x-codex-primary-reset-at": str(now + reset_in_s),
        "x-codex-secondary-used-percent": f"{secondary:g}",
        "x-codex-secondary-window-minutes": str(SECONDARY_WINDOW_MINUTES),
        "x-codex-secondary-reset-at": str(now + SECONDARY_WINDOW_MINUTES * 60),
    }


def usage_limit_answer(resets_in_s: int) -> web.Response:
    """The ChatGPT backend's answer when the plan's usage limit is reached."""
    resets_at = int(time.time()) + resets_in_s
    return web.json_response(
        {
            "error": {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": DEMO_PLAN,
                "resets_at": resets_at,
                "resets_in_seconds": resets_in_s,
            }
        },
        status=429,
        headers=rate_limit_headers(100, 40, reset_in_s=resets_in_s),
    )
