"""`codex-bridge login`, `logout` and `account`: the Codex account of the bridge's Codex home.

Each command starts one `codex app-server` of the worker binary on the Codex
home that `serve` would use for the same settings (`--config`,
`--codex-home`, `--state-dir`, env), with the workers' settings and
environment, in an empty temporary directory, and speaks its account
methods: `account/login/start` (`apiKey`, `chatgptDeviceCode`),
`account/login/cancel`, `account/logout`, `account/read`,
`account/rateLimits/read`. So the user never needs to know where the Codex
binary lives or which CODEX_HOME it must be given.

With a pool of accounts (`codex.accounts`) the commands need `--account
NAME`: `codex.home` is then served by no worker, so signing it in or out
would change nothing the daemon uses.

The instance lock is not taken: Codex shares its home between processes (its
own CLI does), and a daemon serving the home restarts its workers when
`auth.json` changes, within `codex.health_interval_s`. The commands say so
when a daemon holds the home.

Exit codes: 0 done, 1 the sign-in failed or timed out, 2 a usage or
configuration error, 130 cancelled (Ctrl-C or SIGTERM while waiting for a
device sign-in).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
import structlog

from bridge.codex.account import AccountState
from bridge.config import ConfigError, Settings, resolve_codex_bin, resolve_codex_home
from bridge.ops.statedir import HOME_LOCK_NAME, holder_pid
from bridge.worker.launch import (
    codex_version,
    flavor_for,
    prepare_codex_home,
    provider_env_keys,
    worker_argv,
    worker_env,
    worker_overrides,
)
from bridge.worker.process import ChildProcess, ProcessSpec
from bridge.worker.rpc import RpcConnection, RpcError, RpcTimeout
from bridge.worker.supervisor import CLIENT_NAME

log = structlog.get_logger("bridge.signin")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_CANCELLED: Final = 130
# A device code is valid for 15 minutes (auth.openai.com); waiting longer is pointless.
DEVICE_AUTH_TIMEOUT_S: Final = 15 * 60.0
# The one-off app-server answers account methods in milliseconds; the cap bounds a
# wedged binary, and covers `account/rateLimits/read`, which asks the backend.
SIGNIN_RPC_TIMEOUT_S: Final = 30.0
SIGNIN_STOP_GRACE_S: Final = 2.0
# Placeholder demo provider URL for `account` checks: nothing is ever sent to it.
_DEMO_PLACEHOLDER_PORT: Final = 9


class SigninError(Exception):
    """The account operation failed; the message says why, for the user."""


class Session:
    """One app-server on the bridge's Codex home, for account methods."""

    def __init__(
        self, conn: RpcConnection, codex_home: Path, completed: asyncio.Queue[dict[str, Any]]
    ) -> None:
        self.conn = conn
        self.codex_home = codex_home
        self.completed = completed
        """`account/login/completed` notifications, in arrival order."""

    async def call(self, method: str, params: Mapping[str, Any] | None) -> Any:
        try:
            return await self.conn.request(method, params, timeout=SIGNIN_RPC_TIMEOUT_S)
        except RpcError as exc:
            raise SigninError(exc.message) from None
        except RpcTimeout as exc:
            raise SigninError(str(exc)) from None


def require_one_home(settings: Settings) -> None:
    """ConfigError when `codex.accounts` is set: the commands act on one home, named by --account."""
    if settings.codex.accounts:
        names = ", ".join(item.partition("=")[0].strip() for item in settings.codex.accounts)
        raise ConfigError(
            f"codex.accounts is set, so name the account: --account NAME (one of: {names})"
        )


@contextlib.asynccontextmanager
async def session(settings: Settings, env: Mapping[str, str]) -> AsyncIterator[Session]:
    require_one_home(settings)
    codex_bin = resolve_codex_bin(settings)
    flavor = flavor_for(await codex_version(codex_bin))
    if not flavor.honours_cli_overrides:
        raise ConfigError(
            f"codex.bin: Codex {flavor.name} has no account methods in its app-server; sign in "
            f"with `CODEX_HOME={resolve_codex_home(settings, env)} {codex_bin} login`"
        )
    home = prepare_codex_home(resolve_codex_home(settings, env))
    overrides = worker_overrides(
        flavor,
        profile=settings.codex.profile,
        provider=_demo_provider(settings),
        operator=settings.codex.config_overrides,
    )
    passthrough = {*settings.codex.env_passthrough, *provider_env_keys(overrides)}
    with tempfile.TemporaryDirectory(prefix="codex-bridge-login-") as cwd:
        spec = ProcessSpec(
            argv=worker_argv(codex_bin, overrides),
            env=worker_env(env, codex_home=home, passthrough=passthrough),
            cwd=cwd,
        )
        try:
            proc = await ChildProcess.spawn(spec, logger=log, name="codex-account")
        except OSError as exc:
            raise ConfigError(f"codex.bin: cannot run {codex_bin}: {exc}") from exc
        completed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def on_notification(method: str, params: dict[str, Any]) -> None:
            if method == "account/login/completed":
                completed.put_nowait(params)

        async def on_server_request(method: str, params: dict[str, Any]) -> Any:
            raise RpcError(-32601, f"{CLIENT_NAME} does not answer {method} here")

        conn = RpcConnection(
            proc.stdout,
            proc.stdin,
            on_notification=on_notification,
            on_server_request=on_server_request,
            logger=log,
            name="codex-account",
        )
        conn.start()
        try:
            opened = Session(conn, home, completed)
            await opened.call(
                "initialize",
                {
                    "clientInfo": {"name": CLIENT_NAME, "title": CLIENT_NAME, "version": "0"},
                    "capabilities": {"experimentalApi": True},
                },
            )
            await conn.notify("initialized")
            yield opened
        finally:
            await conn.close()
            await proc.stop(grace=SIGNIN_STOP_GRACE_S)


def _demo_provider(settings: Settings) -> list[str]:
    """The demo provider's settings decide whether an account is needed; none is reached."""
    if not settings.demo.enabled:
        return []
    from bridge.demo import DemoModel

    return DemoModel(port=_DEMO_PLACEHOLDER_PORT).codex_config_overrides(
        codex_account=settings.demo.codex_account
    )


# -- commands -------------------------------------------------------------------------------


async def login_api_key(settings: Settings, env: Mapping[str, str], key: str) -> int:
    async with session(settings, env) as s:
        await s.call("account/login/start", {"type": "apiKey", "apiKey": key})
        print(f"Signed in with an API key (Codex home {s.codex_home}).")
    _mention_daemon(settings, env)
    return EXIT_OK


async def login_device(
    settings: Settings,
    env: Mapping[str, str],
    *,
    timeout_s: float = DEVICE_AUTH_TIMEOUT_S,
    out: Callable[[str], None] = print,
) -> int:
    async with session(settings, env) as s:
        try:
            started = await s.call("account/login/start", {"type": "chatgptDeviceCode"})
        except SigninError as exc:
            raise SigninError(
                f"device sign-in could not start: {exc}. It needs to reach auth.openai.com; "
                "on a host without that, sign in with an API key: "
                "`codex-bridge login --with-api-key` (key on stdin)"
            ) from None
        login_id = str(started.get("loginId") or "")
        out(
            f"Open {started.get('verificationUrl')} in a browser, sign in, and enter the code "
            f"{started.get('userCode')}"
        )
        out(f"Waiting for the sign-in (at most {timeout_s / 60:g} minutes; Ctrl-C cancels)...")
        outcome = await _wait_for_login(s, login_id, timeout_s)
        if outcome is None:
            with contextlib.suppress(SigninError):
                await s.call("account/login/cancel", {"loginId": login_id})
            out("Sign-in cancelled.")
            return EXIT_CANCELLED
        if not outcome.get("success"):
            raise SigninError(f"sign-in failed: {outcome.get('error') or 'no reason given'}")
        account = AccountState()
        account.read(await s.call("account/read", {}))
        out(f"Signed in: {account.status_line()} (Codex home {s.codex_home}).")
    _mention_daemon(settings, env)
    return EXIT_OK


async def _wait_for_login(s: Session, login_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The `account/login/completed` of this login; None when cancelled by a signal."""
    cancelled = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[tuple[signal.Signals, Any]] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, cancelled.set)
            installed.append((sig, previous))
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                done_task = asyncio.ensure_future(s.completed.get())
                cancel_task = asyncio.ensure_future(cancelled.wait())
                closed_task = asyncio.ensure_future(s.conn.wait_closed())
                finished, pending = await asyncio.wait(
                    {done_task, cancel_task, closed_task}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
                if cancel_task in finished:
                    return None
                if closed_task in finished and done_task not in finished:
                    raise SigninError("Codex exited during the sign-in")
                params = done_task.result()
                if params.get("loginId") in (None, login_id):
                    return params
    except TimeoutError:
        raise SigninError(f"no sign-in within {timeout_s / 60:g} minutes") from None
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous)  # asyncio.run's own Ctrl-C handling, for instance


async def logout(settings: Settings, env: Mapping[str, str]) -> int:
    async with session(settings, env) as s:
        await s.call("account/logout", None)
        print(f"Signed out (Codex home {s.codex_home}).")
    _mention_daemon(settings, env)
    return EXIT_OK


async def account(settings: Settings, env: Mapping[str, str], *, as_json: bool) -> int:
    async with session(settings, env) as s:
        state = AccountState()
        state.read(await s.call("account/read", {}))
        limits_error = None
        if state.account_type == "chatgpt":
            try:
                state.read_limits(await s.call("account/rateLimits/read", None))
            except SigninError as exc:
                limits_error = str(exc)
        home = s.codex_home
    if as_json:
        body = {"codex_home": str(home), **state.as_json(), "rate_limits_error": limits_error}
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    print(f"Codex home: {home}")
    print(f"Account:    {state.status_line()}")
    if state.email:
        print(f"Email:      {state.email}")
    for w in state.windows():
        resets = (
            datetime.fromtimestamp(w.resets_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            if w.resets_at is not None
            else "unknown"
        )
        minutes = f"{w.window_minutes} min" if w.window_minutes is not None else "?"
        print(
            f"Limit:      {w.limit_id} {w.window} ({minutes}): {w.used_percent:g}% used, resets {resets}"
        )
    if limits_error:
        print(f"Limits:     unavailable ({limits_error})")
    return EXIT_OK


def _mention_daemon(settings: Settings, env: Mapping[str, str]) -> None:
    pid = holder_pid(resolve_codex_home(settings, env) / HOME_LOCK_NAME)
    if pid is not None:
        print(
            f"The codex-bridge serving this Codex home (PID {pid}) restarts its workers on the "
            f"change within {settings.codex.health_interval_s:g}s."
        )


def read_api_key(stdin: Any = None) -> str:
    stream = stdin or sys.stdin
    if stream.isatty():
        return getpass.getpass("OpenAI API key: ").strip()
    return str(stream.read()).strip()


def run(command: str, settings: Settings, args: Any, env: Mapping[str, str] | None = None) -> int:
    """Runs one account command; errors print `codex-bridge: error: ...`."""
    environ = dict(os.environ if env is None else env)
    try:
        if command == "login" and args.with_api_key:
            key = read_api_key()
            if not key:
                print("codex-bridge: error: no API key on stdin", file=sys.stderr)
                return EXIT_USAGE
            return asyncio.run(login_api_key(settings, environ, key))
        if command == "login":
            return asyncio.run(login_device(settings, environ))
        if command == "logout":
            return asyncio.run(logout(settings, environ))
        return asyncio.run(account(settings, environ, as_json=args.json))
    except ConfigError as exc:
        print(f"codex-bridge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SigninError as exc:
        print(f"codex-bridge: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_CANCELLED
