"""sd_notify and the watchdog against real AF_UNIX datagram sockets.

Each test binds a receiver where systemd's would be (a filesystem path or an
abstract ``@name``), points ``NOTIFY_SOCKET`` at it through the ``env``
parameter, and asserts on the exact bytes that arrive. Waits are bounded socket
receives or bounded waits on an event; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

import pytest
from structlog.testing import capture_logs

from bridge.ops.systemd import SystemdNotifier, sd_notify, watchdog_interval

# Bounded wait for a datagram that should already be queued (sends are synchronous).
RECV_TIMEOUT_S: Final = 5.0
# 2 ms WatchdogSec -> a 1 ms ping interval, so watchdog tests finish at once.
FAST_WATCHDOG_USEC: Final = "2000"
# Far above any kernel's datagram queue limit (net.unix.max_dgram_qlen).
QUEUE_FILL_ATTEMPTS: Final = 10_000


@dataclass(slots=True)
class Receiver:
    """Our stand-in for PID 1's notify socket."""

    sock: socket.socket
    notify_socket: str  # the NOTIFY_SOCKET value that reaches ``sock``

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def drain(self) -> list[bytes]:
        """Every datagram queued right now, without waiting."""
        datagrams: list[bytes] = []
        self.sock.setblocking(False)  # a timeout-mode socket would poll first
        try:
            while True:
                datagrams.append(self.sock.recv(4096))
        except BlockingIOError:
            return datagrams
        finally:
            self.sock.settimeout(RECV_TIMEOUT_S)

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.notify_socket, **extra}


def _datagram_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(RECV_TIMEOUT_S)
    return sock


@pytest.fixture
def path_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    # A short directory: AF_UNIX paths are limited to 107 bytes.
    path = str(tmp_path_factory.mktemp("sd") / "notify.sock")
    sock = _datagram_socket()
    sock.bind(path)
    with sock:
        yield Receiver(sock, path)


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"codex-bridge-test-{os.getpid()}-{secrets.token_hex(4)}"
    sock = _datagram_socket()
    sock.bind("\0" + name)
    with sock:
        yield Receiver(sock, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    fixture: Receiver = request.getfixturevalue(f"{request.param}_receiver")
    return fixture


# --- sd_notify -------------------------------------------------------------------


def test_ready_sends_ready_and_status_in_one_datagram(receiver: Receiver) -> None:
    assert SystemdNotifier(receiver.env()).ready("workers 2/2 ready") is True
    assert receiver.recv() == b"READY=1\nSTATUS=workers 2/2 ready"


def test_status_sends_one_status_line(receiver: Receiver) -> None:
    assert SystemdNotifier(receiver.env()).status("workers 1/2 ready") is True
    assert receiver.recv() == b"STATUS=workers 1/2 ready"


def test_stopping_sends_stopping(receiver: Receiver) -> None:
    assert SystemdNotifier(receiver.env()).stopping() is True
    assert receiver.recv() == b"STOPPING=1"


def test_sd_notify_joins_states_with_newlines_into_one_datagram(receiver: Receiver) -> None:
    assert sd_notify("RELOADING=1", "MONOTONIC_USEC=42", env=receiver.env()) is True
    assert receiver.recv() == b"RELOADING=1\nMONOTONIC_USEC=42"


def test_status_text_with_newlines_cannot_inject_other_assignments(receiver: Receiver) -> None:
    SystemdNotifier(receiver.env()).status("draining\nREADY=1")
    assert receiver.recv() == b"STATUS=draining READY=1"


def test_sd_notify_is_a_noop_returning_false_without_notify_socket() -> None:
    assert sd_notify("READY=1", env={}) is False
    assert sd_notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False
    assert SystemdNotifier({}).enabled is False
    assert SystemdNotifier({}).ready("up") is False


def test_sd_notify_reads_the_process_environment_when_no_env_is_given(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.notify_socket)
    assert sd_notify("WATCHDOG=1") is True
    assert receiver.recv() == b"WATCHDOG=1"


def test_notifier_keeps_its_environment_snapshot_after_os_environ_is_scrubbed(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.notify_socket)
    notifier = SystemdNotifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notifier.stopping() is True
    assert receiver.recv() == b"STOPPING=1"


def test_send_to_a_missing_socket_returns_false_and_logs_a_warning(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    missing = str(tmp_path_factory.mktemp("sd") / "gone.sock")
    with capture_logs() as logs:
        assert sd_notify("READY=1", env={"NOTIFY_SOCKET": missing}) is False
    assert [(entry["log_level"], entry["event"]) for entry in logs] == [
        ("warning", "sd_notify send failed")
    ]


def test_unsupported_socket_address_returns_false_and_logs_a_warning() -> None:
    with capture_logs() as logs:
        assert sd_notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert [entry["log_level"] for entry in logs] == ["warning"]


def test_send_returns_false_instead_of_blocking_when_the_receiver_queue_is_full(
    receiver: Receiver,
) -> None:
    # PID 1 not reading: the kernel queue fills (net.unix.max_dgram_qlen,
    # default 10) and a blocking send would stall the event loop forever.
    results: list[bool] = []
    with capture_logs() as logs:
        while len(results) < QUEUE_FILL_ATTEMPTS and (not results or results[-1]):
            results.append(sd_notify("WATCHDOG=1", env=receiver.env()))
    assert results[0] is True
    assert results[-1] is False
    assert [entry["event"] for entry in logs] == ["sd_notify send failed"]
    assert receiver.drain()[0] == b"WATCHDOG=1"


# --- watchdog_interval -----------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0


def test_watchdog_interval_honours_watchdog_pid_of_this_process() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 15.0


def test_watchdog_pid_of_another_process_disables_the_watchdog() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getppid())}
    assert watchdog_interval(env) is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"},
    ],
)
def test_watchdog_interval_is_none_when_unset_or_malformed(env: dict[str, str]) -> None:
    assert watchdog_interval(env) is None


def test_watchdog_interval_reads_the_process_environment_when_no_env_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 2.0


# --- run_watchdog ----------------------------------------------------------------


@dataclass(slots=True)
class ScriptedHealth:
    """A health callable that answers from a script, one answer per check.

    At every check it first records the datagrams queued since the previous
    check, i.e. exactly what the watchdog sent in response to the previous
    answer. When the script runs out it sets ``done`` and answers False.
    """

    receiver: Receiver
    answers: list[bool | Exception]
    seen: list[list[bytes]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self) -> bool:
        self.seen.append(self.receiver.drain())
        if len(self.seen) > len(self.answers):
            self.done.set()
            return False
        answer = self.answers[len(self.seen) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def _run_until_script_ends(notifier: SystemdNotifier, health: ScriptedHealth) -> None:
    task = asyncio.create_task(notifier.run_watchdog(health))
    try:
        await asyncio.wait_for(health.done.wait(), RECV_TIMEOUT_S)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


PING: Final = [b"WATCHDOG=1"]


async def test_watchdog_pings_only_while_healthy(receiver: Receiver) -> None:
    health = ScriptedHealth(receiver, answers=[False, False, True, True, False, False, True])
    notifier = SystemdNotifier(receiver.env(WATCHDOG_USEC=FAST_WATCHDOG_USEC))

    await _run_until_script_ends(notifier, health)

    # seen[i] is what the watchdog sent after answer i-1.
    assert health.seen == [[], [], [], PING, PING, [], [], PING]


async def test_watchdog_treats_a_raising_health_check_as_unhealthy(receiver: Receiver) -> None:
    health = ScriptedHealth(receiver, answers=[RuntimeError("pool gone"), True])
    notifier = SystemdNotifier(receiver.env(WATCHDOG_USEC=FAST_WATCHDOG_USEC))

    with capture_logs() as logs:
        await _run_until_script_ends(notifier, health)

    assert health.seen == [[], [], PING]
    assert ("warning", "watchdog health check raised") in [
        (entry["log_level"], entry["event"]) for entry in logs
    ]


@pytest.mark.parametrize(
    "watchdog_env",
    [
        pytest.param({}, id="no-watchdog-usec"),
        pytest.param(
            {"WATCHDOG_USEC": FAST_WATCHDOG_USEC, "WATCHDOG_PID": str(os.getppid())},
            id="watchdog-pid-of-another-process",
        ),
    ],
)
async def test_watchdog_returns_at_once_and_sends_nothing_when_not_enabled_for_us(
    receiver: Receiver, watchdog_env: dict[str, str]
) -> None:
    checks: list[None] = []

    def is_healthy() -> bool:
        checks.append(None)
        return True

    await asyncio.wait_for(
        SystemdNotifier(receiver.env(**watchdog_env)).run_watchdog(is_healthy), RECV_TIMEOUT_S
    )

    assert checks == []
    assert receiver.drain() == []


async def test_watchdog_returns_at_once_without_notify_socket() -> None:
    env = {"WATCHDOG_USEC": FAST_WATCHDOG_USEC}
    await asyncio.wait_for(SystemdNotifier(env).run_watchdog(lambda: True), RECV_TIMEOUT_S)


async def test_watchdog_is_cancellable_while_running(receiver: Receiver) -> None:
    first_check = asyncio.Event()

    def is_healthy() -> bool:
        first_check.set()
        return True

    notifier = SystemdNotifier(receiver.env(WATCHDOG_USEC="60000000"))  # 30 s between pings
    task = asyncio.create_task(notifier.run_watchdog(is_healthy))
    await asyncio.wait_for(first_check.wait(), RECV_TIMEOUT_S)
    assert receiver.recv() == b"WATCHDOG=1"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, RECV_TIMEOUT_S)
    assert task.cancelled()
