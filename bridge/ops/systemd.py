"""Talks to systemd's service manager: readiness, status, stopping and the watchdog.

Speaks the sd_notify(3) datagram protocol directly (one ``AF_UNIX``/``SOCK_DGRAM``
datagram of newline-separated ``KEY=VALUE`` assignments to ``$NOTIFY_SOCKET``),
so there is no dependency on libsystemd. Outside systemd (no ``NOTIFY_SOCKET``)
every call is a no-op that returns False.

Boundary: knows the notify protocol and the ``NOTIFY_SOCKET``/``WATCHDOG_USEC``/
``WATCHDOG_PID`` variables, nothing else. It does not decide *when* the bridge is
ready or healthy: the app calls :meth:`SystemdNotifier.ready` once it can serve,
and hands :meth:`SystemdNotifier.run_watchdog` a health callable. Keeping these
variables away from Codex workers is the worker launcher's job.

A failed send never raises: it is logged at warning level and reported as False,
because losing a status line must not take the service down.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from typing import Final

import structlog

# Per sd_watchdog_enabled(3): ping at half the timeout so one late wake-up
# of the event loop does not already cost a restart.
WATCHDOG_PING_FRACTION: Final = 0.5

_USEC_PER_SECOND: Final = 1_000_000

log = structlog.get_logger("bridge.systemd")


def _socket_address(raw: str) -> str | None:
    """NOTIFY_SOCKET value -> address for ``AF_UNIX``; None if not a unix socket."""
    if raw.startswith("@"):
        return "\0" + raw[1:]  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # e.g. "vsock:CID:PORT" (systemd >= 253); not used for services


def sd_notify(*states: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``, ``"STATUS=..."``) as one datagram.

    Returns True when the datagram was handed to the kernel, False when not
    running under a notify-type unit (``NOTIFY_SOCKET`` unset) or when the send
    failed (logged at warning). The send never blocks: if PID 1 is not draining
    its queue, the message is dropped rather than stalling the event loop.
    """
    environ = os.environ if env is None else env
    raw = environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    address = _socket_address(raw)
    if address is None:
        log.warning("sd_notify unsupported socket address", notify_socket=raw)
        return False
    payload = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sent = sock.send(payload)
    except (OSError, ValueError) as exc:  # ValueError: NUL byte in a path
        log.warning(
            "sd_notify send failed", notify_socket=raw, states=list(states), error=repr(exc)
        )
        return False
    if sent != len(payload):  # datagrams are all-or-nothing; be explicit anyway
        log.warning("sd_notify short send", notify_socket=raw, sent=sent, size=len(payload))
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None if the watchdog is off for us.

    Half of ``WATCHDOG_USEC``; None when it is unset, not a positive integer, or
    when ``WATCHDOG_PID`` names another process (the variables were inherited).
    """
    environ = os.environ if env is None else env
    usec_raw = environ.get("WATCHDOG_USEC")
    if not usec_raw:
        return None
    pid_raw = environ.get("WATCHDOG_PID")
    if pid_raw:
        try:
            pid = int(pid_raw)
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_PID", watchdog_pid=pid_raw)
            return None
        if pid != os.getpid():
            return None
    try:
        usec = int(usec_raw)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC", watchdog_usec=usec_raw)
        return None
    if usec <= 0:
        return None
    return usec * WATCHDOG_PING_FRACTION / _USEC_PER_SECOND


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram (e.g. "READY=1").
    return " ".join(text.splitlines())


class SystemdNotifier:
    """The bridge's handle on systemd, bound to one environment snapshot.

    The environment is captured at construction, so later changes to
    ``os.environ`` (e.g. code that scrubs ``NOTIFY_SOCKET`` for children) do not
    silence the service.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env: dict[str, str] = dict(os.environ if env is None else env)

    @property
    def enabled(self) -> bool:
        """Whether there is a service manager to talk to."""
        return bool(self._env.get("NOTIFY_SOCKET"))

    @property
    def watchdog_interval(self) -> float | None:
        return watchdog_interval(self._env)

    def ready(self, status: str) -> bool:
        """``READY=1`` plus a status line; call once the bridge can take requests."""
        return sd_notify("READY=1", f"STATUS={_one_line(status)}", env=self._env)

    def status(self, text: str) -> bool:
        """Free-form status shown by ``systemctl status`` (e.g. ``workers 2/2 ready``)."""
        return sd_notify(f"STATUS={_one_line(text)}", env=self._env)

    def stopping(self) -> bool:
        """``STOPPING=1``: the bridge has begun its drain (send on SIGTERM)."""
        return sd_notify("STOPPING=1", env=self._env)

    async def run_watchdog(self, is_healthy: Callable[[], bool]) -> None:
        """Ping ``WATCHDOG=1`` every interval while ``is_healthy()`` is True.

        Returns at once when the watchdog is not enabled for this process.
        Otherwise runs until cancelled. Because it runs on the event loop, a
        wedged loop stops the pings by itself; ``is_healthy`` adds the checks
        the loop cannot see (e.g. the pool supervisor is alive). A callable
        that raises counts as unhealthy.
        """
        interval = self.watchdog_interval
        if interval is None or not self.enabled:
            return
        healthy_before = True
        while True:
            try:
                healthy = is_healthy()
            except Exception as exc:
                log.warning("watchdog health check raised", error=repr(exc))
                healthy = False
            if healthy:
                sd_notify("WATCHDOG=1", env=self._env)
                if not healthy_before:
                    log.info("watchdog pings resumed")
            elif healthy_before:
                log.warning("watchdog pings withheld: bridge unhealthy", interval_s=interval)
            healthy_before = healthy
            await asyncio.sleep(interval)
