"""One supervised `codex app-server` worker: spawn, handshake, health, restart, stop.

The supervisor loop keeps a worker process alive: it spawns it, performs the
`initialize`/`initialized` handshake under a timeout, marks it ready, probes it
periodically, and on exit restarts it with exponential backoff and jitter
(reset after a healthy period). Turns in flight when the process dies end at
once with `WorkerCrashed` through the thread router.

Knows processes, JSON-RPC and the handshake; the per-turn protocol lives in
`bridge.codex.v2`, and OpenAI shapes are unknown here.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from bridge.codex import v1
from bridge.codex.server_requests import ServerRequestPolicy
from bridge.codex.turn import Turn, TurnRequest
from bridge.codex.v2 import OPT_OUT_NOTIFICATIONS, ThreadRouter, ThreadSettings, start_turn
from bridge.errors import ServiceUnavailable
from bridge.worker.process import ChildProcess, ProcessSpec
from bridge.worker.rpc import ConnectionClosed, MessageHook, RpcConnection, RpcError, RpcTimeout

log = structlog.get_logger("bridge.worker")

CLIENT_NAME: Final = "codex-bridge"
METHOD_NOT_FOUND: Final = -32601
# Backoff jitter: each delay is scaled by a random factor in [1 - J, 1 + J] so
# several workers (or instances) that died together do not restart in lockstep.
BACKOFF_JITTER: Final = 0.2
# The health probe is a cheap read that exercises the worker's request loop;
# it gets the ordinary RPC timeout.
HEALTH_PROBE_METHOD: Final = "thread/loaded/list"


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    argv: Sequence[str]
    env: Mapping[str, str]
    workdir: Path
    profile: str
    rpc_timeout_s: float
    handshake_timeout_s: float
    backoff_initial_s: float
    backoff_max_s: float
    healthy_reset_s: float
    health_interval_s: float
    stop_grace_s: float
    version: str = "0"
    dialect: str = "auto"
    """"v2", "v1", or "auto": v2 when the worker accepts thread/start, else v1."""
    message_hook: MessageHook | None = None
    """Sees every JSON-RPC message (tests validate them against the schema bundle)."""


StateListener = Callable[["Worker", WorkerState], None]


class WorkerObserver(Protocol):
    """Where a worker reports what metrics want to know; every call is cheap and sync."""

    def restarted(self, reason: str) -> None: ...
    def handshake(self, seconds: float) -> None: ...
    def rpc_failed(self, method: str, kind: str) -> None: ...


class Worker:
    """A supervised app-server process that runs turns for the pool."""

    def __init__(
        self,
        worker_id: int,
        config: WorkerConfig,
        *,
        on_state: StateListener | None = None,
        observer: WorkerObserver | None = None,
    ) -> None:
        self.id = worker_id
        self.config = config
        self.state = WorkerState.STOPPED
        self.active_turns = 0
        self.restarts = 0
        self.pid: int | None = None
        self.user_agent: str | None = None
        self.dialect = config.dialect if config.dialect != "auto" else "v2"
        self._on_state = on_state
        self._observer = observer
        self._router = ThreadRouter()
        self._policy = ServerRequestPolicy(self._router)
        self._conn: RpcConnection | None = None
        self._proc: ChildProcess | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(worker=worker_id)
        self._thread_settings = ThreadSettings(
            profile=config.profile, cwd=str(config.workdir), rpc_timeout_s=config.rpc_timeout_s
        )

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"worker-{self.id}")

    async def wait_ready(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        return self._ready.is_set()

    @property
    def supervising(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY

    async def stop(self) -> None:
        self._stopping.set()
        self._ready.clear()
        if self._proc is not None:
            await self._proc.stop(grace=self.config.stop_grace_s)
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_state(WorkerState.STOPPED)

    def kill(self) -> None:
        """SIGKILL the current process (fault injection and emergencies)."""
        if self._proc is not None:
            self._proc.kill()

    # -- turns -------------------------------------------------------------------------
    async def start_turn(self, request: TurnRequest) -> Turn:
        conn = self._conn
        if conn is None or not self.ready or conn.closed:
            raise ServiceUnavailable("No Codex worker is ready.", retry_after=1)
        if self.dialect == "v1":
            return await v1.start_turn(conn, self._router, request, self._thread_settings)
        return await start_turn(conn, self._router, request, self._thread_settings)

    async def _detect_dialect(self, conn: RpcConnection) -> str:
        """v2 when the worker has what the v2 dialect uses (thread/start, thread/inject_items).

        Codex 0.77 answers thread/start but not thread/inject_items, so it
        gets v1, which it speaks fully.
        """
        if self.config.dialect != "auto":
            return self.config.dialect
        timeout = self.config.rpc_timeout_s
        probe = {
            "cwd": str(self.config.workdir),
            "ephemeral": True,
            "approvalPolicy": "never",
            "sandbox": "read-only",
        }
        try:
            started = await conn.request("thread/start", probe, timeout=timeout)
            thread_id = started["thread"]["id"]
        except (RpcError, KeyError, TypeError):
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

    async def request(self, method: str, params: Mapping[str, Any] | None) -> Any:
        """A plain RPC on the ready worker (model/list and the like)."""
        conn = self._conn
        if conn is None or not self.ready:
            raise ServiceUnavailable("No Codex worker is ready.", retry_after=1)
        return await conn.request(method, params, timeout=self.config.rpc_timeout_s)

    # -- supervision -------------------------------------------------------------------
    async def _supervise(self) -> None:
        backoff = self.config.backoff_initial_s
        first = True
        while not self._stopping.is_set():
            if not first:
                self._set_state(WorkerState.RESTARTING)
                delay = backoff * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
                self._log.info("worker restarting", delay_s=round(delay, 3))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                if self._stopping.is_set():
                    break
            first = False
            started = time.monotonic()
            reason = await self._run_once()
            if self._stopping.is_set():
                break
            self.restarts += 1
            self._log.warning("worker restart", reason=reason, restarts=self.restarts)
            if self._observer is not None:
                self._observer.restarted(reason)
            if time.monotonic() - started >= self.config.healthy_reset_s:
                backoff = self.config.backoff_initial_s
            else:
                backoff = min(backoff * 2, self.config.backoff_max_s)

    async def _run_once(self) -> str:
        """Run one process to its end; returns why it ended (a metric label)."""
        self._set_state(WorkerState.STARTING)
        spec = ProcessSpec(argv=self.config.argv, env=self.config.env, cwd=str(self.config.workdir))
        try:
            proc = await ChildProcess.spawn(spec, logger=self._log, name=f"codex-{self.id}")
        except OSError as exc:
            self._log.error("worker spawn failed", error=str(exc), argv0=self.config.argv[0])
            return "spawn_failed"
        self._proc = proc
        self.pid = proc.pid
        conn = RpcConnection(
            proc.stdout,
            proc.stdin,
            on_notification=self._on_notification,
            on_server_request=self._policy.answer,
            logger=self._log,
            name=f"codex-{self.id}",
        )
        if self._observer is not None:
            conn.on_error = self._observer.rpc_failed
        conn.on_message = self.config.message_hook
        conn.start()
        self._conn = conn
        reason = "exited"
        health: asyncio.Task[str] | None = None
        try:
            t0 = time.perf_counter()
            if not await self._handshake(conn):
                reason = "handshake_failed"
                return reason
            try:
                self.dialect = await self._detect_dialect(conn)
            except (RpcTimeout, ConnectionClosed) as exc:
                self._log.error("worker dialect detection failed", error=repr(exc))
                return "handshake_failed"
            handshake_s = time.perf_counter() - t0
            if self._observer is not None:
                self._observer.handshake(handshake_s)
            self._log.info(
                "worker ready",
                pid=proc.pid,
                handshake_ms=round(handshake_s * 1000, 1),
                user_agent=self.user_agent,
                dialect=self.dialect,
            )
            self._ready.set()
            self._set_state(WorkerState.READY)
            health = asyncio.create_task(self._probe_health(conn), name=f"health-{self.id}")
            closed = asyncio.create_task(conn.wait_closed())
            done, _ = await asyncio.wait({health, closed}, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            if health in done:
                reason = health.result()
            return reason
        finally:
            self._ready.clear()
            if health is not None:
                health.cancel()
            self._router.connection_lost()
            await conn.close()
            code = await proc.stop(grace=self.config.stop_grace_s)
            self._conn = None
            self._proc = None
            if not self._stopping.is_set():
                self._log.warning("worker exited", pid=proc.pid, returncode=code, reason=reason)

    async def _handshake(self, conn: RpcConnection) -> bool:
        params = {
            "clientInfo": {
                "name": CLIENT_NAME,
                "title": CLIENT_NAME,
                "version": self.config.version,
            },
            "capabilities": {
                "experimentalApi": True,
                "optOutNotificationMethods": list(OPT_OUT_NOTIFICATIONS),
            },
        }
        try:
            result = await conn.request(
                "initialize", params, timeout=self.config.handshake_timeout_s
            )
            await conn.notify("initialized")
        except (ConnectionClosed, RpcTimeout, RpcError) as exc:
            self._log.error("worker handshake failed", error=repr(exc))
            return False
        if isinstance(result, dict):
            self.user_agent = str(result.get("userAgent") or "")
        return True

    async def _probe_health(self, conn: RpcConnection) -> str:
        """Returns only when the worker stopped answering; the caller then restarts it."""
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            try:
                await conn.request(HEALTH_PROBE_METHOD, {}, timeout=self.config.rpc_timeout_s)
            except RpcError:
                continue  # an answer, even an error, proves the loop is alive
            except RpcTimeout:
                self._log.error("worker health probe timed out; restarting it")
                return "unresponsive"
            except ConnectionClosed:
                return "exited"

    def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "configWarning" or (method == "warning" and "threadId" not in params):
            self._log.warning("codex warning", method=method, summary=params.get("summary"))
            return
        self._router.dispatch(method, params)

    def _set_state(self, state: WorkerState) -> None:
        if state is self.state:
            return
        self.state = state
        if self._on_state is not None:
            self._on_state(self, state)
