"""`codex-bridge serve --demo` as a real process: JSON logs, request ids, SIGTERM drain, exit code."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bridge.demo import DEMO_MODEL_ID

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class Daemon:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.url = ""

    async def read_until(self, predicate: Any, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"daemon exited; last lines: {self.lines[-5:]}")
                line = orjson.loads(raw)
                self.lines.append(line)
                if predicate(line):
                    return line


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


def datagrams(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


@pytest.fixture
async def daemon(tmp_path: Path, notify_socket: socket.socket) -> AsyncIterator[Daemon]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["NOTIFY_SOCKET"] = notify_socket.getsockname()
    env["WATCHDOG_USEC"] = "400000"  # a ping every 0.2 s while healthy
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        "--demo",
        "--port",
        "0",
        "--codex-home",
        str(tmp_path / "home"),
        "--state-dir",
        str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE,
        env={
            **env,
            "BRIDGE_SHUTDOWN_TIMEOUT_S": "20",
            # One worker whatever the CPU count (the default follows it): READY says 1/1.
            "BRIDGE_WORKERS": "1",
            "BRIDGE_SSE_KEEPALIVE_S": "0.2",
            # Streams hold their headers for the first content up to this long;
            # the keepalive test's first token comes later than that.
            "BRIDGE_STREAM_HEADER_HOLD_S": "0.2",
        },
    )
    d = Daemon(proc)
    try:
        listening = await d.read_until(
            lambda line: line.get("msg") == "codex-bridge listening", START_TIMEOUT_S
        )
        d.url = listening["url"]
        await d.read_until(lambda line: line.get("msg") == "worker ready", START_TIMEOUT_S)
        yield d
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_daemon_talks_the_systemd_notify_protocol(
    daemon: Daemon, notify_socket: socket.socket
) -> None:
    loop = asyncio.get_running_loop()
    received: list[bytes] = []
    async with asyncio.timeout(START_TIMEOUT_S):
        while not any(b"READY=1" in d for d in received) or b"WATCHDOG=1" not in received:
            received.append(await loop.sock_recv(notify_socket, 4096))
    ready = next(d for d in received if b"READY=1" in d).decode()
    assert "STATUS=1/1 workers ready" in ready
    daemon.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(STOP_TIMEOUT_S):
        assert await daemon.proc.wait() == 0
    assert b"STOPPING=1" in datagrams(notify_socket)


async def test_quiet_streams_get_keepalive_comments(daemon: Daemon) -> None:
    body = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "[[ttfb_ms=700]] [[reply=late]]"}],
        "stream": True,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{daemon.url}/v1/chat/completions", json=body) as response:
            raw = await response.read()
    assert b": keepalive\n\n" in raw
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_daemon_logs_json_with_request_ids_and_drains_on_sigterm(daemon: Daemon) -> None:
    body = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "[[words=10]] [[delay_ms=100]]"}],
        "stream": True,
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{daemon.url}/v1/chat/completions",
            json=body,
            headers={"X-Request-Id": "req-test-42", "Authorization": "Bearer sk-secret-value"},
        ) as response:
            assert response.headers["x-request-id"] == "req-test-42"
            assert int(response.headers["openai-processing-ms"]) >= 0
            first = await response.content.readany()
            assert b'"role":"assistant"' in first
            daemon.proc.send_signal(signal.SIGTERM)  # mid-stream: the turn must finish
            rest = await response.read()
    assert (first + rest).endswith(b"data: [DONE]\n\n")
    assert b'"finish_reason":"stop"' in rest
    async with asyncio.timeout(STOP_TIMEOUT_S):
        code = await daemon.proc.wait()
    assert code == 0
    assert daemon.proc.stdout is not None
    daemon.lines += [
        orjson.loads(raw) for raw in (await daemon.proc.stdout.read()).splitlines() if raw
    ]
    access = [line for line in daemon.lines if line.get("msg") == "request"]
    assert access and access[0]["request_id"] == "req-test-42"
    assert access[0]["status"] == 200
    assert access[0]["outcome"] == "ok"
    assert access[0]["completion_tokens"] == 10
    assert any(line.get("msg") == "shutting down" for line in daemon.lines)
    everything = orjson.dumps(daemon.lines).decode()
    assert "sk-secret-value" not in everything
    assert "w1 w2" not in everything  # no message content in logs by default
    for line in daemon.lines:
        assert {"timestamp", "level", "msg"} <= set(line)


async def test_a_bad_request_id_is_replaced_by_a_minted_one(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{daemon.url}/v1/models", headers={"X-Request-Id": "bad id <script>" + "x" * 200}
        ) as r:
            assert r.status == 200
            assert r.headers["x-request-id"].startswith("req_")


REPO = Path(__file__).resolve().parents[2]


async def test_serve_with_a_legacy_codex_bin_detects_v1_and_streams(tmp_path: Path) -> None:
    root = REPO
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", "--demo", "--port", "0",
        "--codex-home", str(tmp_path / "home"), "--state-dir", str(tmp_path / "state"),
        "--codex-bin", ".codex-legacy/node_modules/.bin/codex",  # relative to the cwd
        stdout=asyncio.subprocess.PIPE,
        cwd=root,
        env=env,
    )  # fmt: skip
    daemon = Daemon(proc)
    try:
        listening = await daemon.read_until(
            lambda line: line.get("msg") == "codex-bridge listening", START_TIMEOUT_S
        )
        ready = await daemon.read_until(
            lambda line: line.get("msg") == "worker ready", START_TIMEOUT_S
        )
        assert ready["dialect"] == "v1"
        body = {
            "model": DEMO_MODEL_ID,
            "messages": [{"role": "user", "content": "[[words=3]]"}],
            "stream": True,
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{listening['url']}/v1/chat/completions", json=body) as r:
                raw = await r.read()
        assert b'"content":"w1 "' in raw
        assert raw.endswith(b"data: [DONE]\n\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await proc.wait()
