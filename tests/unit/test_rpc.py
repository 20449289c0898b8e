"""The JSON-RPC connection and child process layer, against a real fake app-server subprocess."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from bridge.worker.process import (
    STDERR_LINES_PER_S,
    ChildProcess,
    ProcessSpec,
    StderrLimiter,
    redact_line,
)
from bridge.worker.rpc import (
    SERVER_OVERLOADED,
    ConnectionClosed,
    RpcConnection,
    RpcError,
    RpcTimeout,
    ServerOverloaded,
)
from tests.fakes.fake_app_server import FAKE_SECRET

FAKE = str(Path(__file__).resolve().parents[1] / "fakes" / "fake_app_server.py")
WAIT_S = 10.0


class Peer:
    def __init__(self, proc: ChildProcess, conn: RpcConnection) -> None:
        self.proc = proc
        self.conn = conn
        self.notes: list[tuple[str, dict[str, Any]]] = []
        self.asked: list[tuple[str, dict[str, Any]]] = []


async def start_peer(*args: str, answer: Any = None, env: dict[str, str] | None = None) -> Peer:
    log = structlog.get_logger("test")
    proc = await ChildProcess.spawn(
        ProcessSpec(argv=[sys.executable, FAKE, *args], env=env or {}, cwd="."),
        logger=log,
        name="fake",
    )
    peer: Peer

    async def on_request(method: str, params: dict[str, Any]) -> Any:
        peer.asked.append((method, params))
        if isinstance(answer, Exception):
            raise answer
        return answer

    conn = RpcConnection(
        proc.stdout,
        proc.stdin,
        on_notification=lambda m, p: peer.notes.append((m, p)),
        on_server_request=on_request,
        logger=log,
    )
    peer = Peer(proc, conn)
    conn.start()
    return peer


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = await start_peer()
    yield p
    await p.conn.close()
    await p.proc.stop(grace=1)


async def test_request_resolves_with_the_matching_response(peer: Peer) -> None:
    assert await peer.conn.request("echo", {"a": 1}, timeout=WAIT_S) == {"a": 1}


async def test_concurrent_requests_are_matched_by_id(peer: Peer) -> None:
    slow = asyncio.ensure_future(peer.conn.request("slow", {"ms": 200}, timeout=WAIT_S))
    fast = await peer.conn.request("echo", {"n": 2}, timeout=WAIT_S)
    assert fast == {"n": 2}
    assert not slow.done()
    assert await slow == "late"


async def test_error_answers_raise_rpc_error_with_code(peer: Peer) -> None:
    with pytest.raises(RpcError) as error:
        await peer.conn.request("no/such", {}, timeout=WAIT_S)
    assert error.value.code == -32600


async def test_request_times_out_and_a_late_answer_is_dropped(peer: Peer) -> None:
    with pytest.raises(RpcTimeout):
        await peer.conn.request("slow", {"ms": 300}, timeout=0.05)
    assert peer.conn.pending_count == 0
    # The late answer arrives and is ignored; the connection keeps working.
    assert await peer.conn.request("slow", {"ms": 400}, timeout=WAIT_S) == "late"


async def test_notifications_are_dispatched_in_order(peer: Peer) -> None:
    await peer.conn.request("notify_me", {"n": 5}, timeout=WAIT_S)
    assert peer.notes == [("note", {"i": k}) for k in range(5)]


async def test_server_request_is_answered_by_the_handler() -> None:
    p = await start_peer(answer={"decision": "decline"})
    try:
        assert await p.conn.request("ask_me", {}, timeout=WAIT_S) == {"decision": "decline"}
        assert p.asked == [("item/commandExecution/requestApproval", {"x": 1})]
    finally:
        await p.conn.close()
        await p.proc.stop(grace=1)


async def test_failing_server_request_handler_still_gets_an_error_answer() -> None:
    p = await start_peer(answer=ValueError("boom"))
    try:
        result = await p.conn.request("ask_me", {}, timeout=WAIT_S)
        assert result == {"code": -32603, "message": "internal error"}
    finally:
        await p.conn.close()
        await p.proc.stop(grace=1)


async def test_garbage_lines_do_not_kill_the_reader(peer: Peer) -> None:
    assert await peer.conn.request("garbage", {}, timeout=WAIT_S) == "after garbage"
    assert await peer.conn.request("echo", {"still": True}, timeout=WAIT_S) == {"still": True}


async def test_large_answers_arrive_whole(peer: Peer) -> None:
    result = await peer.conn.request("big", {"size": 3_000_000}, timeout=WAIT_S)
    assert len(result) == 3_000_000


async def test_crash_fails_pending_requests_with_connection_closed(peer: Peer) -> None:
    waiting = asyncio.ensure_future(peer.conn.request("never", {}, timeout=WAIT_S))
    with pytest.raises(ConnectionClosed):
        await peer.conn.request("crash", {}, timeout=WAIT_S)
    with pytest.raises(ConnectionClosed):
        await waiting
    await asyncio.wait_for(peer.conn.wait_closed(), WAIT_S)
    assert peer.conn.closed
    with pytest.raises(ConnectionClosed):
        await peer.conn.request("echo", {}, timeout=WAIT_S)
    assert await peer.proc.wait() == 3


async def test_stop_closes_stdin_and_the_child_exits_cleanly(peer: Peer) -> None:
    assert await peer.proc.stop(grace=WAIT_S) == 0


async def test_stop_escalates_to_kill_for_a_child_that_ignores_term() -> None:
    p = await start_peer("--ignore-term")
    await p.conn.request("echo", {}, timeout=WAIT_S)
    code = await p.proc.stop(grace=0.1, term_grace=0.1)
    assert code == -9
    await p.conn.close()


async def test_stderr_flood_never_blocks_the_child() -> None:
    p = await start_peer("--stderr-flood", "20000")
    try:
        assert await p.conn.request("echo", {"ok": 1}, timeout=WAIT_S) == {"ok": 1}
    finally:
        await p.conn.close()
        await p.proc.stop(grace=1)


async def test_notify_socket_is_not_passed_to_the_child() -> None:
    p = await start_peer(env={"NOTIFY_SOCKET": "/run/systemd/notify", "KEEP": "1"})
    try:
        # The fake echoes nothing of its env; check what was handed to exec.
        assert "NOTIFY_SOCKET" not in p.proc.spawn_env
        assert p.proc.spawn_env["KEEP"] == "1"
    finally:
        await p.conn.close()
        await p.proc.stop(grace=1)


@pytest.mark.parametrize(
    "shape",
    [
        "string_code",
        "float_code",
        "bool_code",
        "no_message",
        "list_message",
        "not_an_object",
        "empty",
    ],
)
async def test_malformed_error_object_becomes_rpc_error_and_the_reader_lives_when_peer_sends_it(
    peer: Peer, shape: str
) -> None:
    with capture_logs() as logs:
        with pytest.raises(RpcError) as error:
            await peer.conn.request("bad_error", {"shape": shape}, timeout=WAIT_S)
    assert isinstance(error.value.code, int)
    assert isinstance(error.value.message, str)
    assert any(e["event"] == "rpc malformed error object" for e in logs)
    # The reader survived: the next request is answered.
    assert await peer.conn.request("echo", {"after": shape}, timeout=WAIT_S) == {"after": shape}


async def test_overload_error_is_raised_as_server_overloaded_when_the_peer_is_saturated() -> None:
    p = await start_peer("--max-threads", "0")
    try:
        with pytest.raises(ServerOverloaded) as error:
            await p.conn.request("thread/start", {}, timeout=WAIT_S)
        assert error.value.code == SERVER_OVERLOADED
    finally:
        await p.conn.close()
        await p.proc.stop(grace=1)


async def test_answers_with_unhashable_ids_are_dropped_without_killing_the_reader(
    peer: Peer,
) -> None:
    assert await peer.conn.request("bad_id", {}, timeout=WAIT_S) == "after bad ids"
    assert not peer.conn.closed


def test_stderr_lines_are_redacted_when_they_carry_credentials() -> None:
    line = (
        "ERROR request failed: Authorization: Bearer abc.def-123 "
        "api_key=sk-proj-0123456789abcdef token: 'xyz' \x1b[31mred\x1b[0m"
    )
    redacted = redact_line(line)
    for secret in ("abc.def-123", "0123456789abcdef", "xyz", "\x1b["):
        assert secret not in redacted
    assert redacted.startswith("ERROR request failed:")
    assert "red" in redacted
    # Token counts are not credentials.
    assert redact_line("input_tokens=12 max_tokens: 5") == "input_tokens=12 max_tokens: 5"


def test_stderr_limiter_admits_a_bounded_number_per_window_and_reports_the_rest() -> None:
    now = [0.0]
    limiter = StderrLimiter(3, 1.0, clock=lambda: now[0])
    assert [limiter.admit()[0] for _ in range(5)] == [True, True, True, False, False]
    now[0] = 1.5
    assert limiter.admit() == (True, 2)
    assert limiter.suppressed == 0


async def test_stderr_flood_is_rate_limited_redacted_and_summarised() -> None:
    with capture_logs() as logs:
        p = await start_peer("--stderr-flood", "2000")
        try:
            assert await p.conn.request("echo", {"ok": 1}, timeout=WAIT_S) == {"ok": 1}
        finally:
            await p.conn.close()
            await p.proc.stop(grace=1)
    lines = [e for e in logs if e["event"] == "codex stderr"]
    summaries = [e for e in logs if e["event"] == "codex stderr lines suppressed"]
    # One window's worth (a slow machine may straddle a few windows), never the flood.
    assert 0 < len(lines) <= STDERR_LINES_PER_S * 5
    assert sum(e["suppressed"] for e in summaries) == 2000 - len(lines)
    assert FAKE_SECRET not in repr(logs)
