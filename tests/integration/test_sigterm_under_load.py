"""SIGTERM under load: every request completes or ends with a terminal error, none is cut.

A real `codex-bridge serve --demo` process with streaming and non-streaming
requests running and queued gets SIGTERM. Short turns finish inside the
drain deadline (`server.shutdown_timeout_s`); long ones are ended at it
with an error (a streamed `error` event and `[DONE]`, or a 5xx envelope);
queued ones get 503. The process exits 0 within the deadline plus grace.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bridge.demo import DEMO_MODEL_ID
from bridge.server import CANCEL_GRACE_S
from tests.integration.test_serve_process import START_TIMEOUT_S, Daemon
from tests.sse import parse_sse

SHUTDOWN_TIMEOUT_S = 6.0
# Stopping the worker (stdin close, then SIGTERM after stop_grace_s) and the loop's teardown.
EXIT_SLACK_S = 15.0
REQUEST_TIMEOUT_S = 60.0


async def _spawn(tmp_path: Path) -> Daemon:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", "--demo", "--port", "0",
        "--codex-home", str(tmp_path / "home"), "--state-dir", str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE,
        env={
            **env,
            "BRIDGE_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
            # One worker whatever the CPU count: the load below is sized for its 4 turns.
            "BRIDGE_WORKERS": "1",
            "BRIDGE_MAX_TURNS_PER_WORKER": "4",
            "BRIDGE_STOP_GRACE_S": "1",
        },
    )  # fmt: skip
    daemon = Daemon(proc)
    listening = await daemon.read_until(
        lambda line: line.get("msg") == "codex-bridge listening", START_TIMEOUT_S
    )
    daemon.url = listening["url"]
    await daemon.read_until(lambda line: line.get("msg") == "worker ready", START_TIMEOUT_S)
    return daemon


def _body(text: str, stream: bool) -> dict[str, Any]:
    return {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
    }


async def _stream(http: aiohttp.ClientSession, url: str, text: str, started: asyncio.Event) -> str:
    """'complete' or 'error:<code>'; raises when the stream ends without a terminal frame."""
    async with http.post(f"{url}/v1/chat/completions", json=_body(text, True)) as r:
        if r.status != 200:
            return f"status:{r.status}:{(await r.json())['error']['code']}"
        raw = await r.content.readany()
        started.set()
        raw += await r.read()
    frames = [f for f in parse_sse(raw.decode()) if not f.comment]
    assert frames and frames[-1].data == "[DONE]", f"stream cut without [DONE]: {raw[-300:]!r}"
    last = frames[-2].json()
    if "error" in last:
        return f"error:{last['error']['code']}"
    assert last["choices"][0]["finish_reason"] is not None, f"no terminal frame: {raw[-300:]!r}"
    return "complete"


async def _queue_depth(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("codex_bridge_queue_depth "):
                return float(line.split()[1])
    return 0.0


async def _json(http: aiohttp.ClientSession, url: str, text: str) -> str:
    async with http.post(f"{url}/v1/chat/completions", json=_body(text, False)) as r:
        body = orjson.loads(await r.read())  # an envelope, never a cut connection
        if r.status == 200:
            assert body["choices"][0]["finish_reason"] is not None
            return "complete"
        assert r.status >= 500, body
        return f"status:{r.status}:{body['error']['code']}"


async def test_every_request_completes_or_ends_with_a_terminal_error_when_sigterm_arrives_under_load(
    tmp_path: Path,
) -> None:
    daemon = await _spawn(tmp_path)
    assert daemon.proc.stdout is not None
    # Drained all along: a full pipe would block the daemon's logging.
    logs = asyncio.create_task(daemon.proc.stdout.read())
    try:
        short = "[[words=20]] [[delay_ms=150]]"  # 3 s: inside the drain deadline
        long = "[[words=400]] [[delay_ms=50]]"  # 20 s: past it
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        ) as http:
            streaming = [asyncio.Event() for _ in range(3)]
            tasks = {
                "short stream": asyncio.create_task(_stream(http, daemon.url, short, streaming[0])),
                "long stream": asyncio.create_task(_stream(http, daemon.url, long, streaming[1])),
                "long stream 2": asyncio.create_task(_stream(http, daemon.url, long, streaming[2])),
                "long json": asyncio.create_task(_json(http, daemon.url, long)),
            }
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                for event in streaming:
                    await event.wait()
                # Four turns hold the worker's four slots; these two queue behind them.
                tasks["queued json"] = asyncio.create_task(_json(http, daemon.url, short))
                tasks["queued stream"] = asyncio.create_task(
                    _stream(http, daemon.url, short, asyncio.Event())
                )
                # Polls another process's state, bounded by the timeout above.
                while await _queue_depth(http, daemon.url) < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            daemon.proc.send_signal(signal.SIGTERM)
            signalled = loop.time()
            results = dict(zip(tasks, await asyncio.gather(*tasks.values()), strict=True))
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S + CANCEL_GRACE_S + EXIT_SLACK_S):
                code = await daemon.proc.wait()
            exited_after = loop.time() - signalled
    finally:
        if daemon.proc.returncode is None:
            daemon.proc.kill()
            await daemon.proc.wait()
        await logs
    assert code == 0
    assert exited_after < SHUTDOWN_TIMEOUT_S + CANCEL_GRACE_S + EXIT_SLACK_S
    assert results["short stream"] == "complete"
    for name in ("long stream", "long stream 2"):
        assert results[name].startswith("error:"), results
    assert results["long json"].startswith("status:5"), results
    for name in ("queued json", "queued stream"):
        assert results[name] in ("complete", "status:503:shutting_down"), results
