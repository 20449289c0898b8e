"""One supervised `codex app-server` worker: spawn, handshake, health, restart, stop.

The supervisor loop keeps a worker process alive: it (re)creates the
worker's working directory, spawns the process, performs the
`initialize`/`initialized` handshake under a timeout, lets the driver choose
the dialect, marks it ready, and probes it every `health_interval_s` with
the driver's probe (what a turn needs, not just an answer) plus a check that
its working directory still exists. A request that times out on the worker
marks it unready at once (`PROBING`) and probes it immediately. A probe that
times out means the process hangs: it is SIGKILLed without the graceful
stdin/SIGTERM wait; a failed probe or a vanished directory restart it
gracefully. Restarts use exponential backoff with jitter (reset after a
healthy period); turns in flight when the process ends fail at once with
`WorkerCrashed` through the driver.

Recycling bounds a worker's memory (Codex 0.163 keeps every thread it ever
ran, about 0.9 MB each, even after `thread/unsubscribe`; no call frees
one): a process that has started `max_turns` turns, or whose resident
memory passes `max_rss_mb` (checked at every health interval and every few
turn starts), goes `DRAINING`: it takes no new turns, its running turns
finish (for at most `drain_timeout_s`, the request deadline), then it is
stopped gracefully and started again without backoff. Turns parked for a
client's tool results hold no slot and do not delay it; their follow-ups
replay. The pool queues requests meanwhile instead of refusing them.

Knows processes and JSON-RPC. The Codex protocol (capabilities, dialect
choice, thread routing, server requests, the probe) is behind `WorkerDriver`,
injected by whoever builds the pool (`bridge.codex.dialect`); OpenAI shapes
are unknown here.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from bridge.errors import ServiceUnavailable
from bridge.worker.process import ChildProcess, ProcessSpec
from bridge.worker.rpc import (
    ConnectionClosed,
    MessageHook,
    RpcConnection,
    RpcError,
    RpcTimeout,
    ServerOverloaded,
)

log = structlog.get_logger("bridge.worker")

CLIENT_NAME: Final = "codex-bridge"
# Backoff jitter: each delay is scaled by a random factor in [1 - J, 1 + J] so
# several workers (or instances) that died together do not restart in lockstep.
BACKOFF_JITTER: Final = 0.2
# Restart reasons after which the process is known to be hung: no stdin/SIGTERM grace.
HUNG_REASONS: Final = frozenset({"unresponsive"})
# Restart reasons of a planned recycle start with this (a metric label: recycle_max_turns).
RECYCLE_PREFIX: Final = "recycle_"
# Resident memory is also read every this many turn starts, not only per health
# interval: under load a worker grows by tens of MB per second.
RSS_CHECK_EVERY_TURNS: Final = 16


# The worker's directory and any parent the supervisor recreates: owner only.
PRIVATE_DIR_MODE: Final = 0o700


def make_private_dirs(path: Path) -> None:
    """Creates `path` and every missing parent 0700, whatever the umask.

    `mkdir(parents=True)` gives the parents the umask's mode (0755 under the
    usual 022), so a deleted `workdirs/` would come back readable by all.
    """
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by someone else: theirs to keep
        os.chmod(directory, PRIVATE_DIR_MODE)


class RestartWanted(Exception):
    """Raised by a driver's probe: the process is healthy but must be replaced (`reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    PROBING = "probing"
    """Alive but suspect (a request timed out): takes no new turns until a probe passes."""
    DRAINING = "draining"
    """Past its turn or memory bound: takes no new turns, restarts once its running ones end."""
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
    max_queued_events: int = 4096
    """Events one turn may buffer unread (`codex.max_queued_events`); read by the driver."""
    max_turns: int = 0
    """Turns one process may start before it is recycled (`codex.worker_max_turns`); 0 = no bound."""
    max_rss_mb: int = 0
    """Resident memory (MiB) past which a process is recycled (`codex.worker_max_rss_mb`); 0 = no bound."""
    drain_timeout_s: float = 900.0
    """How long a recycled process's running turns may take to finish (`codex.request_deadline_s`)."""
    prewarm_threads: int = 0
    """Started threads a worker keeps in stock (`codex.prewarm_threads`); read by the driver."""
    version: str = "0"
    dialect: str = "auto"
    """"v2", "v1", or "auto": v2 when the worker accepts thread/start, else v1."""
    message_hook: MessageHook | None = None
    """Sees every JSON-RPC message (tests validate them against the schema bundle)."""
    account: str = "default"
    """The account (Codex home) this worker serves: a routing key and a metric label."""


class WorkerDriver(Protocol):
    """The app-server protocol as a worker needs it; `bridge.codex.dialect.CodexDriver`."""

    @property
    def name(self) -> str:
        """The dialect the current process speaks (a metric label)."""
        ...

    def capabilities(self) -> dict[str, Any]: ...
    def on_notification(self, method: str, params: dict[str, Any]) -> None: ...
    async def on_server_request(self, method: str, params: dict[str, Any]) -> Any: ...

    async def select(self, conn: RpcConnection) -> None:
        """After the handshake: choose how to speak to this process."""
        ...

    async def probe(self, conn: RpcConnection) -> None:
        """Exercise what a turn needs; raise RpcTimeout, ConnectionClosed or RpcError."""
        ...

    def connection_lost(self) -> None:
        """The process is gone: end every turn it was running."""
        ...


DriverFactory = Callable[[WorkerConfig], WorkerDriver]
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
        driver: WorkerDriver,
        on_state: StateListener | None = None,
        observer: WorkerObserver | None = None,
    ) -> None:
        self.id = worker_id
        self.config = config
        self.driver = driver
        self.state = WorkerState.STOPPED
        self._active_turns = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.turns_started = 0
        """Turns started on the current process."""
        self._recycle: str | None = None
        self.restarts = 0
        self.pid: int | None = None
        self.user_agent: str | None = None
        self._on_state = on_state
        self._observer = observer
        self._conn: RpcConnection | None = None
        self._proc: ChildProcess | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._probe_now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(worker=worker_id)

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

    @property
    def recycling(self) -> bool:
        """Draining or restarting for a planned recycle: it will be back, so wait for it."""
        return self._recycle is not None

    @property
    def active_turns(self) -> int:
        """Turn slots held on this worker (the pool takes and gives them)."""
        return self._active_turns

    @active_turns.setter
    def active_turns(self, value: int) -> None:
        self._active_turns = value
        if value <= 0:
            self._idle.set()
        else:
            self._idle.clear()

    def turn_started(self) -> None:
        """A turn started on this process: counts against its turn and memory bounds."""
        self.turns_started += 1
        config = self.config
        if config.max_turns and self.turns_started >= config.max_turns:
            self.recycle("max_turns")
        elif config.max_rss_mb and self.turns_started % RSS_CHECK_EVERY_TURNS == 0:
            self._check_memory()

    def recycle(self, reason: str) -> None:
        """Drain this process and start a new one (a planned restart, not a failure)."""
        if self._recycle is not None or self.state not in (WorkerState.READY, WorkerState.PROBING):
            return
        self._recycle = reason
        self._log.info(
            "worker recycling",
            reason=reason,
            turns=self.turns_started,
            running=self.active_turns,
            pid=self.pid,
        )
        self._set_state(WorkerState.DRAINING)
        self._probe_now.set()

    def _check_memory(self) -> None:
        proc = self._proc
        rss = proc.rss_mb() if proc is not None else None
        if rss is not None and rss > self.config.max_rss_mb:
            self._log.info(
                "worker memory above bound", rss_mb=round(rss), bound=self.config.max_rss_mb
            )
            self.recycle("max_rss")

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
    @property
    def dialect(self) -> str:
        return self.driver.name

    def connection(self) -> RpcConnection:
        """The ready worker's connection, for the driver to start a turn on."""
        conn = self._conn
        if conn is None or not self.ready or conn.closed:
            raise ServiceUnavailable("No Codex worker is ready.", retry_after=1)
        return conn

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
            if self._observer is not None:
                self._observer.restarted(reason)
            if reason.startswith(RECYCLE_PREFIX):
                self._log.info("worker recycled", reason=reason, restarts=self.restarts)
                backoff = self.config.backoff_initial_s  # planned: nothing to back off from
                continue
            self._recycle = None  # a failed process is not coming back on schedule
            self._log.warning("worker restart", reason=reason, restarts=self.restarts)
            if time.monotonic() - started >= self.config.healthy_reset_s:
                backoff = self.config.backoff_initial_s
            else:
                backoff = min(backoff * 2, self.config.backoff_max_s)

    async def _run_once(self) -> str:
        """Run one process to its end; returns why it ended (a metric label)."""
        self._set_state(WorkerState.STARTING)
        workdir = self.config.workdir
        try:
            # An operator or a cleanup job may have removed it; a cwd that does
            # not exist fails the spawn (and on Codex 0.77 every turn).
            make_private_dirs(workdir)
        except OSError as exc:
            self._log.error("worker directory unusable", error=str(exc), path=str(workdir))
            return "spawn_failed"
        spec = ProcessSpec(argv=self.config.argv, env=self.config.env, cwd=str(workdir))
        try:
            proc = await ChildProcess.spawn(spec, logger=self._log, name=f"codex-{self.id}")
        except OSError as exc:
            self._log.error("worker spawn failed", error=str(exc), argv0=self.config.argv[0])
            return "spawn_failed"
        self._proc = proc
        self.pid = proc.pid
        self.turns_started = 0
        conn = RpcConnection(
            proc.stdout,
            proc.stdin,
            on_notification=self.driver.on_notification,
            on_server_request=self.driver.on_server_request,
            logger=self._log,
            name=f"codex-{self.id}",
        )
        conn.on_error = self._rpc_failed
        conn.on_message = self.config.message_hook
        conn.start()
        self._conn = conn
        self._probe_now.clear()
        reason = "exited"
        health: asyncio.Task[str] | None = None
        try:
            t0 = time.perf_counter()
            if not await self._handshake(conn):
                reason = "handshake_failed"
                return reason
            try:
                await self.driver.select(conn)
            except (RpcTimeout, ConnectionClosed, RpcError) as exc:
                self._log.error("worker dialect detection failed", error=repr(exc))
                reason = "handshake_failed"
                return reason
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
            self._recycle = None
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
            if not self._stopping.is_set():
                # Unready before anything is awaited: no new turn lands on a dying process.
                self._set_state(WorkerState.RESTARTING)
            if health is not None:
                health.cancel()
            if reason in HUNG_REASONS:
                proc.kill()  # a hung process would only sit out the graceful waits
            self.driver.connection_lost()
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
            "capabilities": self.driver.capabilities(),
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

    def _rpc_failed(self, method: str, kind: str) -> None:
        if self._observer is not None:
            self._observer.rpc_failed(method, kind)
        if kind == "timeout" and self.state is WorkerState.READY:
            # A worker that lets a request time out may hang: take no new turns
            # on it until the probe (run now, not at the next interval) says
            # it is fine.
            self._log.warning("worker request timed out; probing it", method=method)
            self._set_state(WorkerState.PROBING)
            self._probe_now.set()

    async def _probe_health(self, conn: RpcConnection) -> str:
        """Returns only when the worker must be replaced; the caller then restarts it."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.health_interval_s):
                    await self._probe_now.wait()
            self._probe_now.clear()
            if self._recycle is not None:
                return await self._drain()
            reason = await self._check(conn)
            if reason is not None:
                return reason
            if self.config.max_rss_mb:
                self._check_memory()
                if self._recycle is not None:
                    continue
            if self.state is WorkerState.PROBING:
                self._log.info("worker probe passed; ready again")
                self._set_state(WorkerState.READY)

    async def _drain(self) -> str:
        """Waits (bounded) until no turn runs on this process; returns the restart reason."""
        assert self._recycle is not None
        reason = RECYCLE_PREFIX + self._recycle
        try:
            async with asyncio.timeout(self.config.drain_timeout_s):
                await self._idle.wait()
        except TimeoutError:
            self._log.warning(
                "worker drain timed out; restarting with turns still running",
                running=self.active_turns,
                timeout_s=self.config.drain_timeout_s,
            )
        return reason

    async def _check(self, conn: RpcConnection) -> str | None:
        """One health check: None when the worker can run turns, else why it cannot."""
        if not self.config.workdir.is_dir():
            self._log.error(
                "worker directory vanished; restarting it", path=str(self.config.workdir)
            )
            return "workdir_missing"
        probe_started = time.monotonic()
        try:
            await self.driver.probe(conn)
        except ServerOverloaded:
            return None  # busy, not broken: the answer proves the loop is alive
        except RestartWanted as exc:
            self._log.info("worker restart wanted by its driver", reason=exc.reason)
            return exc.reason
        except RpcTimeout:
            if conn.last_received >= probe_started:
                # Slow, not hung: it kept sending (other turns' events) while
                # the probe waited. Killing it would end every running turn.
                self._log.warning("worker health probe slow; the worker is busy, not hung")
                return None
            self._log.error("worker health probe timed out; killing it")
            return "unresponsive"
        except ConnectionClosed:
            return "exited"
        except RpcError as exc:
            self._log.error("worker health probe failed; restarting it", error=str(exc))
            return "probe_failed"
        return None

    def _set_state(self, state: WorkerState) -> None:
        if state is self.state:
            return
        self.state = state
        if self._on_state is not None:
            self._on_state(self, state)
