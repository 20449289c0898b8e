"""Newline-delimited JSON-RPC over a pair of streams: the bridge's side of `codex app-server`.

One reader task reads lines, resolves pending requests by id, dispatches
notifications synchronously (handlers must not block), and runs
server-to-client requests in tasks of their own so a slow handler never
stalls the reader. Every server request gets an answer, even when its
handler fails: an unanswered one blocks a Codex turn forever. When the
stream ends, every waiter fails with `ConnectionClosed`.

Knows JSON-RPC framing; knows no Codex method names.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal, Protocol

import orjson
import structlog
from opentelemetry.trace import SpanKind

from bridge.tracing import tracer

# A line longer than this is dropped (the reader resyncs at the next newline).
# Codex's item/completed carries a whole reply, so the cap is generous.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024
# Garbage lines are logged truncated: enough to diagnose, never a whole payload.
LOG_SNIPPET_CHARS: Final = 200
# JSON-RPC "internal error", sent when a server-request handler fails.
INTERNAL_ERROR: Final = -32603
# The app-server's answer when its bounded ingress queue is full ("Server
# overloaded; retry later."): backpressure, safe to retry after a backoff
# because the request was never processed.
SERVER_OVERLOADED: Final = -32001
# The code given to an error object whose own code is missing or not an integer.
MALFORMED_ERROR_CODE: Final = INTERNAL_ERROR

NotificationHandler = Callable[[str, dict[str, Any]], None]
ServerRequestHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
MessageHook = Callable[[Literal["c2s", "s2c"], dict[str, Any]], None]


class RpcError(Exception):
    """The peer answered a request with an error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class ServerOverloaded(RpcError):
    """The peer refused a request because its ingress queue was full (`SERVER_OVERLOADED`)."""


def rpc_error(error: Any) -> tuple[RpcError, bool]:
    """The exception for a JSON-RPC error object, and whether the object was well-formed.

    A peer can send anything: a string, a float or boolean code, a missing or
    non-string message. None of that may escape the reader as an exception.
    """
    if not isinstance(error, dict):
        return RpcError(MALFORMED_ERROR_CODE, str(error)[:LOG_SNIPPET_CHARS], None), False
    code, message = error.get("code"), error.get("message")
    well_formed = isinstance(code, int) and not isinstance(code, bool) and isinstance(message, str)
    if not isinstance(code, int) or isinstance(code, bool):
        code = MALFORMED_ERROR_CODE
    text = message if isinstance(message, str) else ("" if message is None else str(message))
    cls = ServerOverloaded if code == SERVER_OVERLOADED else RpcError
    return cls(code, text, error.get("data")), well_formed


class ConnectionClosed(Exception):
    """The transport ended (EOF, process gone, or closed by us)."""


class RpcTimeout(Exception):
    """No answer within the request's timeout."""

    def __init__(self, method: str, timeout: float) -> None:
        super().__init__(f"{method} got no answer within {timeout:g}s")
        self.method = method


class LineWriter(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: ...


class RpcConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: LineWriter,
        *,
        on_notification: NotificationHandler,
        on_server_request: ServerRequestHandler,
        logger: Any = None,
        name: str = "worker",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_notification = on_notification
        self._on_server_request = on_server_request
        self._log = logger if logger is not None else structlog.get_logger("bridge.rpc")
        self._name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._server_tasks: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()
        self._reader_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self.last_received = time.monotonic()
        """When the peer last sent a line: a busy worker keeps sending, a hung one does not."""
        self.on_message: MessageHook | None = None
        self.on_error: Callable[[str, str], None] | None = None
        """Called with (method, "error" | "timeout" | "closed") when a request fails."""

    # -- public ------------------------------------------------------------------------
    def start(self) -> None:
        if self._reader_task is None:
            self._reader_task = asyncio.create_task(self._read_loop(), name=f"rpc-{self._name}")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def request(
        self, method: str, params: Mapping[str, Any] | None, *, timeout: float
    ) -> Any:
        if self.closed:
            raise ConnectionClosed(f"{self._name}: connection closed")
        with tracer().start_as_current_span(
            f"rpc {method}",
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "jsonrpc", "rpc.method": method},
        ):
            return await self._request(method, params, timeout=timeout)

    async def _request(
        self, method: str, params: Mapping[str, Any] | None, *, timeout: float
    ) -> Any:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        message: dict[str, Any] = {"id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        try:
            await self._send(message)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            self._failed(method, "timeout")
            raise RpcTimeout(method, timeout) from None
        except RpcError:
            self._failed(method, "error")
            raise
        except ConnectionClosed:
            self._failed(method, "closed")
            raise
        finally:
            self._pending.pop(request_id, None)

    def _failed(self, method: str, kind: str) -> None:
        if self.on_error is not None:
            self.on_error(method, kind)

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"method": method}
        if params is not None:
            message["params"] = params
        await self._send(message)

    async def close(self) -> None:
        if self._reader_task is not None and not self._reader_task.done():
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._shutdown()

    # -- internals ---------------------------------------------------------------------
    def _observe(self, direction: Literal["c2s", "s2c"], message: dict[str, Any]) -> None:
        assert self.on_message is not None
        try:
            self.on_message(direction, message)
        except Exception:
            self._log.exception("rpc message hook failed", worker=self._name)

    async def _send(self, message: dict[str, Any]) -> None:
        if self.on_message is not None:
            self._observe("c2s", message)
        line = orjson.dumps(message) + b"\n"
        async with self._write_lock:
            if self.closed or self._writer.is_closing():
                raise ConnectionClosed(f"{self._name}: connection closed")
            try:
                self._writer.write(line)
                await self._writer.drain()
            except (ConnectionError, RuntimeError) as exc:
                raise ConnectionClosed(f"{self._name}: write failed: {exc}") from exc

    async def _read_loop(self) -> None:
        reader = self._reader
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        self._handle_line(exc.partial)
                    return
                except asyncio.LimitOverrunError as exc:
                    await self._skip_oversized(exc.consumed)
                    continue
                self.last_received = time.monotonic()
                self._handle_line(line)
        except (ConnectionError, OSError) as exc:
            self._log.warning("rpc read failed", worker=self._name, error=str(exc))
        finally:
            self._shutdown()

    async def _skip_oversized(self, consumed: int) -> None:
        """Discards an over-long line up to and including its newline."""
        reader = self._reader
        self._log.error("rpc line over limit dropped", worker=self._name, limit=MAX_LINE_BYTES)
        await reader.readexactly(consumed)
        while True:
            try:
                await reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await reader.readexactly(exc.consumed)

    def _handle_line(self, line: bytes) -> None:
        # Whatever the peer sends, the reader lives on: a crashed reader would
        # leave every waiter hanging until its timeout, without a log line.
        try:
            self._dispatch_line(line)
        except Exception:
            self._log.exception(
                "rpc message handling failed",
                worker=self._name,
                line=line[:LOG_SNIPPET_CHARS].decode(errors="replace"),
            )

    def _dispatch_line(self, line: bytes) -> None:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            if line.strip():
                self._log.warning(
                    "rpc non-JSON line skipped",
                    worker=self._name,
                    line=line[:LOG_SNIPPET_CHARS].decode(errors="replace"),
                )
            return
        if not isinstance(message, dict):
            self._log.warning("rpc non-object message skipped", worker=self._name)
            return
        if self.on_message is not None:
            self._observe("s2c", message)
        method = message.get("method")
        if method is None:
            self._resolve(message)
            return
        if not isinstance(method, str):
            self._log.warning("rpc message with a non-string method skipped", worker=self._name)
            return
        params = message.get("params")
        if not isinstance(params, dict):
            params = {}
        if "id" in message:
            task = asyncio.create_task(self._answer(message["id"], method, params))
            self._server_tasks.add(task)
            task.add_done_callback(self._server_tasks.discard)
            return
        try:
            self._on_notification(method, params)
        except Exception:
            self._log.exception("notification handler failed", worker=self._name, method=method)

    def _resolve(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        future = None
        if isinstance(request_id, int) and not isinstance(request_id, bool):
            future = self._pending.get(request_id)
        if future is None or future.done():
            self._log.debug("rpc answer for unknown id dropped", id=repr(request_id)[:40])
            return
        if "error" in message and message["error"] is not None:
            error, well_formed = rpc_error(message["error"])
            if not well_formed:
                self._log.warning(
                    "rpc malformed error object",
                    worker=self._name,
                    id=request_id,
                    error=repr(message["error"])[:LOG_SNIPPET_CHARS],
                )
            future.set_exception(error)
        else:
            future.set_result(message.get("result"))

    async def _answer(self, request_id: Any, method: str, params: dict[str, Any]) -> None:
        reply: dict[str, Any]
        try:
            reply = {"id": request_id, "result": await self._on_server_request(method, params)}
        except RpcError as exc:
            reply = {"id": request_id, "error": {"code": exc.code, "message": exc.message}}
        except asyncio.CancelledError:
            raise
        except Exception:
            self._log.exception("server request handler failed", worker=self._name, method=method)
            reply = {
                "id": request_id,
                "error": {"code": INTERNAL_ERROR, "message": "internal error"},
            }
        with contextlib.suppress(ConnectionClosed):
            await self._send(reply)

    def _shutdown(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosed(f"{self._name}: connection closed"))
        self._pending.clear()
        for task in list(self._server_tasks):
            task.cancel()
