"""Runs the daemon: binds the listener, waits for signals, drains, and stops in order.

Shutdown sequence on SIGTERM/SIGINT: stop admitting (and `/readyz` turns 503
so Traefik drains; queued requests get 503 `shutting_down`), let in-flight
turns finish up to the drain deadline, then end the turns still running
with a terminal error (`shutting_down`: a 503 envelope, or an SSE `error`
event and `[DONE]`), so no response is cut mid-way; after a short grace
aiohttp cancels whatever is left, and the workers stop. Knows process lifecycle; no request logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Final

import structlog
from aiohttp import web

from bridge.api.turns import TURNS
from bridge.app import make_app
from bridge.appkeys import ACCOUNTS, POOL
from bridge.codex.account import AccountState
from bridge.config import ConfigError, Settings
from bridge.ops.auth import AUTH
from bridge.ops.logging import configure_logging
from bridge.ops.systemd import SystemdNotifier
from bridge.worker.pool import WorkerPool

log = structlog.get_logger("bridge.server")

# Startup waits this long for a first worker before telling systemd READY
# anyway (then /readyz reports the truth).
READY_WAIT_S: Final = 120.0
# After the drain deadline, handlers still running get this long to end
# (they are cancelled and interrupt their turns) before connections close.
CANCEL_GRACE_S: Final = 5.0
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})


def serve(settings: Settings) -> int:
    configure_logging(settings.log.level, log_content=settings.log.log_content)
    try:
        return asyncio.run(run(settings))
    except KeyboardInterrupt:
        return 0


async def run(settings: Settings, *, stop: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    notifier = SystemdNotifier()
    try:
        app = make_app(settings)
    except ConfigError as exc:
        # E.g. two API keys under one name: exit 2 (config), not a restart loop.
        log.error("refusing to start", reason=str(exc))
        return 2
    host = settings.server.host
    if not listener_allowed(settings, keys_configured=app[AUTH].enabled):
        return 2
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that hangs up cancels its handler at once
        access_log=None,
        # We drain ourselves first (below); this is only the grace after it.
        shutdown_timeout=CANCEL_GRACE_S,
    )
    try:
        await runner.setup()
    except ConfigError as exc:
        # E.g. the startup self-check found host tools in the plain profile.
        log.error("refusing to start", reason=str(exc))
        await runner.cleanup()
        return 2
    port = settings.server.port
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen", host=host, port=port, error=str(exc))
        await runner.cleanup()
        return 1
    pool = app[POOL]
    bound_host, bound_port = runner.addresses[0][:2]
    log.info(
        "codex-bridge listening",
        url=f"http://{bound_host}:{bound_port}",
        workers=len(pool.workers),
        profile=settings.codex.profile,
        demo=settings.demo.enabled,
    )
    # The watchdog pings from the event loop itself, so a wedged loop stops
    # them; it also requires every worker's supervisor task to be alive.
    watchdog = asyncio.create_task(notifier.run_watchdog(pool.supervisors_alive))
    accounts = app[ACCOUNTS]
    ready = asyncio.create_task(_announce_ready(notifier, pool, accounts))
    # Every change of an account's usability reaches `systemctl status` and the log.
    for state in accounts.values():
        state.listeners.append(lambda account: _account_changed(notifier, pool, accounts, account))
    try:
        await stop.wait()
    finally:
        log.info("shutting down", active_turns=pool.active_turns)
        notifier.stopping()
        pool.closing = True
        await _drain(pool, settings.server.shutdown_timeout_s)
        turns = app[TURNS]
        if len(turns):
            log.warning("drain deadline passed; ending running turns", turns=turns.abort_all())
            await turns.wait_empty(CANCEL_GRACE_S)
        for task in (watchdog, ready):
            task.cancel()
        await runner.cleanup()
        log.info("stopped")
    return 0


def listener_allowed(settings: Settings, *, keys_configured: bool) -> bool:
    """Whether to listen where configured; warns only when no API keys guard the listener."""
    if keys_configured:
        return True
    host = settings.server.host
    if host in LOOPBACK_HOSTS:
        log.warning("no API keys configured: every local caller is served", host=host)
        return True
    if not settings.auth.allow_anonymous_remote:
        log.error(
            "refusing to listen beyond loopback without API keys",
            host=host,
            fix="configure auth.api_keys / BRIDGE_API_KEYS, or set "
            "BRIDGE_ALLOW_ANONYMOUS_REMOTE=true behind an authenticating proxy",
        )
        return False
    log.warning(
        "listening beyond loopback without API keys: anyone who can reach it may use it",
        host=host,
    )
    return True


async def _announce_ready(
    notifier: SystemdNotifier, pool: WorkerPool, accounts: dict[str, AccountState]
) -> None:
    ok = await pool.wait_ready(READY_WAIT_S)
    notifier.ready(_status(pool, accounts) if ok else "no worker ready yet")


def _status(pool: WorkerPool, accounts: dict[str, AccountState]) -> str:
    if len(accounts) == 1:
        (only,) = accounts.values()
        states = only.status_line()
    else:
        states = ", ".join(f"{name}: {state.status_line()}" for name, state in accounts.items())
    return f"{pool.ready_count}/{len(pool.workers)} workers ready; {states}"


def _account_changed(
    notifier: SystemdNotifier,
    pool: WorkerPool,
    accounts: dict[str, AccountState],
    account: AccountState,
) -> None:
    if account.reason is not None:
        log.warning("codex account unusable", reason=account.reason, fix=account.status_line())
    else:
        log.info("codex account usable", account=account.status_line())
    notifier.status(_status(pool, accounts))


async def _drain(pool: WorkerPool, deadline: float) -> None:
    """Waits for running turns to finish, up to the drain deadline."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(deadline):
            await pool.wait_idle()
