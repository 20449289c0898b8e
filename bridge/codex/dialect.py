"""Which app-server dialect a worker speaks, and the per-worker protocol state that goes with it.

The worker layer (`bridge.worker`) knows processes and JSON-RPC only. Each
worker is given a `CodexDriver` (the `WorkerDriver` protocol it declares)
and calls it at the protocol's seams: the handshake capabilities, the
notification and server-request handlers, `select` once per process after
the handshake (v2 when the worker has `thread/start` and
`thread/inject_items`, else v1), `probe` for health (what a turn needs: an
ephemeral thread opened and closed), and `connection_lost` when the process
ends. `start_turn(worker, request)` runs a `TurnRequest` on a leased worker
in the dialect chosen for it, routing the thread's notifications to its turn.
A v2 worker also keeps its Codex home's `AccountState` current
(`account/read` after the handshake and with every probe; the account
notifications), refuses turns at once while Codex is not signed in, and
asks for a restart when `auth.json` changed (an app-server never re-reads it).

Knows the v1/v2 entry points and the few method names needed to choose and
probe; knows no OpenAI shapes and nothing about processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from pathlib import Path
from typing import Any, Final

import structlog

from bridge.codex import v1, v2
from bridge.codex.account import LOGIN_HINT, AccountState, CredentialsWatch
from bridge.codex.prewarm import ThreadStock
from bridge.codex.server_requests import ServerRequestPolicy
from bridge.codex.turn import Turn, TurnRequest
from bridge.errors import CodexNotSignedIn
from bridge.worker.rpc import (
    ConnectionClosed,
    RpcConnection,
    RpcError,
    RpcTimeout,
    ServerOverloaded,
)
from bridge.worker.supervisor import DriverFactory, RestartWanted, Worker, WorkerConfig

log = structlog.get_logger("bridge.codex.dialect")

METHOD_NOT_FOUND: Final = -32601
# A v1 (legacy) worker is probed with a read that changes nothing: opening a
# conversation per probe would leave one loaded for the worker's life.
V1_PROBE_METHOD: Final = "thread/loaded/list"
NOT_SIGNED_IN_MESSAGE: Final = (
    "Codex is not signed in, and its model provider needs an account. On the bridge host, "
    f"run `{LOGIN_HINT}` (a ChatGPT plan: `{LOGIN_HINT} --device-auth`; an API key: "
    f"`{LOGIN_HINT} --with-api-key`, the key on stdin)."
)


class CodexDriver:
    """The Codex protocol side of one worker; implements `bridge.worker.supervisor.WorkerDriver`."""

    def __init__(self, config: WorkerConfig, account: AccountState | None = None) -> None:
        self._config = config
        self._router = v2.ThreadRouter()
        self._policy = ServerRequestPolicy(self._router)
        self.account = account if account is not None else AccountState()
        home = config.env.get("CODEX_HOME")
        self._credentials = CredentialsWatch(Path(home)) if home else None
        self._settings = v2.ThreadSettings(
            profile=config.profile,
            cwd=str(config.workdir),
            rpc_timeout_s=config.rpc_timeout_s,
            max_queued_events=config.max_queued_events,
            account=self.account,
        )
        self.name = config.dialect if config.dialect != "auto" else "v2"
        self._starting = 0
        self.stock = ThreadStock(config.prewarm_threads, config.rpc_timeout_s, busy=self._busy)
        self._router.on_empty = self.stock.idle
        # Held conversation threads to unload (`release_thread`), closed one at a
        # time by a single task: evictions never pile up tasks or RPCs.
        self._releasing: deque[tuple[RpcConnection, str]] = deque()
        self._releaser: asyncio.Task[None] | None = None
        self._conn: RpcConnection | None = None
        """The current process's connection (from `select` until `connection_lost`)."""

    # -- WorkerDriver --------------------------------------------------------------------
    def capabilities(self) -> dict[str, Any]:
        return {
            "experimentalApi": True,
            "optOutNotificationMethods": list(v2.OPT_OUT_NOTIFICATIONS),
        }

    def on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "configWarning" or (method == "warning" and "threadId" not in params):
            log.warning("codex warning", method=method, summary=params.get("summary"))
            return
        if method.startswith("account/") and self.account.notification(method, params):
            return
        self._router.dispatch(method, params)

    async def on_server_request(self, method: str, params: dict[str, Any]) -> Any:
        return await self._policy.answer(method, params)

    async def select(self, conn: RpcConnection) -> None:
        """Chooses the dialect for this process; raises RpcTimeout / ConnectionClosed."""
        self._conn = conn
        self._releasing.clear()
        if self._credentials is not None:
            self._credentials.reset()  # this process read auth.json as it is now
        if self._config.dialect != "auto":
            self.name = self._config.dialect
        else:
            self.name = await self._detect(conn)
        # The account is known before the first turn; a worker that cannot say is
        # judged by its health probe, not failed here.
        with contextlib.suppress(RpcTimeout, ConnectionClosed):
            await self._read_account(conn)
        if self.name == "v2":
            self.stock.attach(conn)
        else:
            self.stock.reset()

    async def probe(self, conn: RpcConnection) -> None:
        """Does what a turn needs first; raises RpcTimeout, ConnectionClosed or RpcError."""
        timeout = self._config.rpc_timeout_s
        if self._credentials is not None and self._credentials.changed():
            raise RestartWanted("credentials_changed")
        if self.name == "v1":
            with contextlib.suppress(RpcError):  # any answer proves the loop is alive
                await conn.request(V1_PROBE_METHOD, {}, timeout=timeout)
            return
        started = await conn.request("thread/start", self._probe_thread_params(), timeout=timeout)
        thread_id = _thread_id(started)
        if thread_id is None:
            raise RpcError(0, "thread/start answered without a thread id")
        await conn.request("thread/unsubscribe", {"threadId": thread_id}, timeout=timeout)
        # After the probe proper: an early answer would make a hung thread/start look
        # like a busy worker to the supervisor (it tells them apart by last_received).
        await self._read_account(conn)

    def connection_lost(self) -> None:
        self._conn = None
        self._releasing.clear()
        self.stock.reset()
        self._router.connection_lost()

    # -- turns -----------------------------------------------------------------------------
    async def start_turn(self, conn: RpcConnection, request: TurnRequest) -> Turn:
        if self.account.signed_out:
            # Codex would retry the OpenAI endpoint for over a minute before failing.
            raise CodexNotSignedIn(NOT_SIGNED_IN_MESSAGE)
        if self.name == "v1":
            return await v1.start_turn(conn, self._router, request, self._settings)
        prewarmed = None
        if request.on_thread is None and v2.prewarmable(request):
            prewarmed = self.stock.take(v2.thread_start_params(request, self._settings))
        self._starting += 1
        try:
            return await v2.start_turn(
                conn, self._router, request, self._settings, prewarmed=prewarmed
            )
        finally:
            self._starting -= 1

    def release_thread(self, thread_id: str) -> None:
        """Unloads a held conversation thread of the current process (`thread/unsubscribe`).

        In the background, best effort, each call bounded; a thread of an
        earlier process died with it (the caller checks the pid).
        """
        conn = self._conn
        if conn is None or conn.closed or self.name != "v2":
            return
        self._releasing.append((conn, thread_id))
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.get_running_loop().create_task(self._release_all())

    async def _release_all(self) -> None:
        while self._releasing:  # bounded: each thread is released once
            conn, thread_id = self._releasing.popleft()
            if conn.closed:
                continue
            with contextlib.suppress(ConnectionClosed, RpcTimeout, RpcError):
                await conn.request(
                    "thread/unsubscribe",
                    {"threadId": thread_id},
                    timeout=v2.UNSUBSCRIBE_TIMEOUT_S,
                )

    def _busy(self) -> bool:
        """A turn runs or starts: pre-warming waits, it never competes with requests."""
        return self._starting > 0 or len(self._router) > 0

    # -- internals -------------------------------------------------------------------------
    async def _read_account(self, conn: RpcConnection) -> None:
        """`account/read` (v2 only; 0.77 has no such method) into the shared account state."""
        if self.name != "v2":
            return
        try:
            result = await conn.request("account/read", {}, timeout=self._config.rpc_timeout_s)
        except RpcError as exc:
            log.warning("account/read failed", error=str(exc))
            return
        self.account.read(result)
        if self.account.account_type == "chatgpt":
            # Rate limits are a ChatGPT plan's; an API key has none to read.
            with contextlib.suppress(RpcError):
                self.account.read_limits(
                    await conn.request(
                        "account/rateLimits/read", None, timeout=self._config.rpc_timeout_s
                    )
                )

    def _probe_thread_params(self) -> dict[str, Any]:
        return {
            "cwd": str(self._config.workdir),
            "ephemeral": True,
            "approvalPolicy": v2.APPROVAL_POLICY,
            "sandbox": "read-only",
        }

    async def _detect(self, conn: RpcConnection) -> str:
        """v2 when the worker has what the v2 dialect uses (thread/start, thread/inject_items).

        Codex 0.77 answers thread/start but not thread/inject_items, so it
        gets v1, which it speaks fully.
        """
        timeout = self._config.rpc_timeout_s
        try:
            started = await conn.request(
                "thread/start", self._probe_thread_params(), timeout=timeout
            )
        except ServerOverloaded:
            raise  # says nothing about the dialect: the handshake is retried
        except RpcError:
            return "v1"
        thread_id = _thread_id(started)
        if thread_id is None:
            return "v1"
        try:
            await conn.request(
                "thread/inject_items", {"threadId": thread_id, "items": []}, timeout=timeout
            )
        except RpcError as exc:
            # Only an unknown method means "no v2 here"; other refusals are about the probe.
            if exc.code == METHOD_NOT_FOUND or "unknown variant" in exc.message:
                return "v1"
        with contextlib.suppress(RpcError, RpcTimeout, ConnectionClosed):
            await conn.request("thread/unsubscribe", {"threadId": thread_id}, timeout=timeout)
        return "v2"


def _thread_id(started: Any) -> str | None:
    thread = started.get("thread") if isinstance(started, dict) else None
    thread_id = thread.get("id") if isinstance(thread, dict) else None
    return str(thread_id) if thread_id is not None else None


def codex_driver(config: WorkerConfig) -> CodexDriver:
    """The driver factory the pool is given (`WorkerPool(driver_factory=...)`)."""
    return CodexDriver(config)


def account_driver_factory(accounts: dict[str, AccountState]) -> DriverFactory:
    """A driver factory: each worker shares the state of its account (its Codex home)."""

    def factory(config: WorkerConfig) -> CodexDriver:
        return CodexDriver(config, accounts[config.account])

    return factory


async def start_turn(worker: Worker, request: TurnRequest) -> Turn:
    """Runs `request` on `worker` (leased from the pool) in the dialect it speaks.

    Raises a `BridgeError`: `WorkerOverloaded` when Codex pushed back (the
    pool retries it), `ServiceUnavailable` when the worker is not ready.
    """
    driver = worker.driver
    if not isinstance(driver, CodexDriver):
        raise TypeError(f"worker {worker.id} has no Codex driver")
    return await driver.start_turn(worker.connection(), request)
