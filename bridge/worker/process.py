"""A child process with piped stdio: spawn it, drain its stderr into logs, stop it without hanging.

The child gets its own process group so stop/kill reach everything it
spawned. Shutdown is bounded and shielded: close stdin, wait, SIGTERM the
group, wait, SIGKILL the group (or SIGKILL at once for a child known to be
hung). stderr lines reach the log redacted (bearer tokens, API keys,
credential headers), truncated and rate-limited, with a count of what was
suppressed. Knows processes and pipes; knows nothing of what is spoken over
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bridge.worker.rpc import MAX_LINE_BYTES

# One stderr line is logged at most this long (Rust backtraces can be huge).
STDERR_LINE_CHARS: Final = 2000
# At most this many stderr lines per second reach the log per worker; a
# flooding child costs one summary line per second, not the journal.
STDERR_LINES_PER_S: Final = 20
STDERR_WINDOW_S: Final = 1.0
# Credentials a child may print (an upstream error echoing a header, a config
# dump): bearer tokens, `sk-` style keys, Authorization/api-key/token pairs.
_SECRET_PATTERNS: Final = (
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"),
    re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_-]{8,}"),
    re.compile(
        r"(?i)\b(authorization|proxy-authorization|x-api-key|api[_-]?key|access[_-]?token"
        r"|refresh[_-]?token|token|password|secret|cookie)\b(\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
    ),
)
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
REDACTED: Final = "[redacted]"
# Reaping a SIGKILLed process takes milliseconds; this only bounds a pathology.
KILL_WAIT_S: Final = 5.0
_NOISY_ENV: Final = ("NOTIFY_SOCKET",)


def redact_line(text: str) -> str:
    """`text` without terminal colours and with anything credential-shaped masked."""
    text = _ANSI.sub("", text)
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}-{REDACTED}", text)
    return _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


class StderrLimiter:
    """Admits at most `per_window` lines per window; counts the rest for a summary."""

    def __init__(self, per_window: int, window_s: float, clock: Any = time.monotonic) -> None:
        self._per_window = per_window
        self._window_s = window_s
        self._clock = clock
        self._window_start = clock()
        self._admitted = 0
        self.suppressed = 0

    def admit(self) -> tuple[bool, int]:
        """Whether this line may be logged, and how many were suppressed before it (once)."""
        now = self._clock()
        flushed = 0
        if now - self._window_start >= self._window_s:
            self._window_start = now
            self._admitted = 0
            flushed, self.suppressed = self.suppressed, 0
        if self._admitted < self._per_window:
            self._admitted += 1
            return True, flushed
        self.suppressed += 1
        return False, flushed


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str


class ChildProcess:
    def __init__(
        self, proc: asyncio.subprocess.Process, logger: Any, name: str, env: Mapping[str, str]
    ) -> None:
        self._proc = proc
        self.spawn_env = env
        self._log = logger
        self._name = name
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.stdin: asyncio.StreamWriter = proc.stdin
        self.stdout: asyncio.StreamReader = proc.stdout
        self._stderr_task = asyncio.create_task(self._drain_stderr(proc.stderr))

    @classmethod
    async def spawn(cls, spec: ProcessSpec, *, logger: Any, name: str) -> ChildProcess:
        env = {k: v for k, v in spec.env.items() if k not in _NOISY_ENV}
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=spec.cwd,
            start_new_session=True,
            limit=MAX_LINE_BYTES,
        )
        return cls(proc, logger, name, env)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def rss_mb(self) -> float | None:
        """The process's resident memory in MiB (Linux `/proc`), None where unknown."""
        if self._proc.returncode is not None:
            return None
        try:
            with open(f"/proc/{self._proc.pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    async def wait(self) -> int:
        return await self._proc.wait()

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def stop(self, *, grace: float = 3.0, term_grace: float = 2.0) -> int:
        """Ends the process for sure; safe to call twice and from a cancelled task."""
        return await asyncio.shield(self._stop(grace, term_grace))

    async def _stop(self, grace: float, term_grace: float) -> int:
        if self._proc.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.stdin.close()
            for sig, wait in (
                (None, grace),
                (signal.SIGTERM, term_grace),
                (signal.SIGKILL, KILL_WAIT_S),
            ):
                if sig is not None:
                    self._signal(sig)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._proc.wait()
                        break
        # Anything else left in the group (the child's own children) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(KILL_WAIT_S):
                await self._stderr_task
        return self._proc.returncode if self._proc.returncode is not None else -9

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        """Reads stderr to the end so the child never blocks on a full pipe."""
        limiter = StderrLimiter(STDERR_LINES_PER_S, STDERR_WINDOW_S)
        try:
            while True:
                try:
                    line = await stream.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    continue
                except (ConnectionError, OSError):
                    return
                if not line:
                    return
                admitted, suppressed = limiter.admit()
                if suppressed:
                    self._log_suppressed(suppressed)
                if admitted:
                    self._log_line(line)
        finally:
            if limiter.suppressed:
                self._log_suppressed(limiter.suppressed)

    def _log_line(self, line: bytes) -> None:
        text = line[: STDERR_LINE_CHARS * 4].decode(errors="replace").rstrip()
        if not text:
            return
        text = redact_line(text)[:STDERR_LINE_CHARS]
        if "ERROR" in text or "panicked" in text:
            self._log.warning("codex stderr", worker_process=self._name, line=text)
        else:
            self._log.debug("codex stderr", worker_process=self._name, line=text)

    def _log_suppressed(self, count: int) -> None:
        self._log.warning(
            "codex stderr lines suppressed",
            worker_process=self._name,
            suppressed=count,
            limit_per_s=STDERR_LINES_PER_S,
        )
