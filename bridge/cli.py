"""The `codex-bridge` command line: `serve`, `login`, `logout`, `account`, `check-config`, `config-table`.

Flags become the top layer of the settings (defaults < file < env < flags);
a user error prints `codex-bridge: error: <why>` and exits 2, never a
traceback. `serve` holds the instance lock (`ops/statedir.py`) on the state
directory and the Codex home for the life of the process: a second instance
on either exits 2 naming the holder's PID.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import version
from typing import Any, NoReturn

import orjson

from bridge.config import (
    ConfigError,
    Settings,
    config_table_markdown,
    load_settings,
    resolve_accounts,
    resolve_codex_bin,
)

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"codex-bridge: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="codex-bridge", description="OpenAI-compatible API over codex app-server."
    )
    parser.add_argument(
        "--version", action="version", version=f"codex-bridge {version('codex-bridge')}"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", help="TOML settings file (also BRIDGE_CONFIG)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--demo", action="store_true", default=None, help="serve the built-in scripted demo model"
    )
    serve.add_argument("--codex-bin", help="path to the codex binary")
    serve.add_argument("--codex-home", help="CODEX_HOME for the workers")
    serve.add_argument(
        "--state-dir",
        help="this instance's state directory: Codex home, worker dirs, SQLite (locked)",
    )
    serve.add_argument(
        "--codex-config",
        action="append",
        metavar="KEY=VALUE",
        help="Codex setting passed to every worker as -c (repeatable)",
    )
    serve.add_argument(
        "--model",
        action="append",
        metavar="ID[=CODEX_MODEL]",
        help="extra model id to serve (repeatable)",
    )
    serve.add_argument(
        "--account",
        action="append",
        metavar="NAME=CODEX_HOME",
        help="a Codex account of the pool, on its own Codex home (repeatable)",
    )
    serve.add_argument("--workers", type=int)
    serve.add_argument("--profile", choices=["plain", "agent"])
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    login = sub.add_parser(
        "login", help="sign Codex in on the bridge's Codex home (default: device code)"
    )
    how = login.add_mutually_exclusive_group()
    how.add_argument(
        "--with-api-key", action="store_true", help="an OpenAI API key, read from stdin"
    )
    how.add_argument(
        "--device-auth",
        action="store_true",
        help="ChatGPT sign-in: prints a URL and a code, waits (the default)",
    )
    logout = sub.add_parser("logout", help="sign Codex out of the bridge's Codex home")
    account = sub.add_parser("account", help="show the Codex account and its rate limits")
    account.add_argument("--json", action="store_true", help="machine-readable output")
    for command in (login, logout, account):
        command.add_argument("--config", help="TOML settings file (also BRIDGE_CONFIG)")
        command.add_argument("--codex-bin", help="path to the codex binary")
        command.add_argument("--codex-home", help="CODEX_HOME, as given to serve")
        command.add_argument("--state-dir", help="the state directory, as given to serve")
        command.add_argument(
            "--codex-config",
            action="append",
            metavar="KEY=VALUE",
            help="Codex setting, as given to serve (repeatable)",
        )
        command.add_argument("--demo", action="store_true", default=None, help="as given to serve")
        command.add_argument(
            "--account",
            dest="account_name",
            metavar="NAME[=CODEX_HOME]",
            help="one account of the pool: a name in codex.accounts, or NAME=CODEX_HOME",
        )

    check = sub.add_parser("check-config", help="print the effective settings as JSON")
    check.add_argument("--config")
    sub.add_parser("config-table", help="print the settings table (Markdown)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    mapping = {
        "host": "server.host",
        "port": "server.port",
        "demo": "demo.enabled",
        "codex_bin": "codex.bin",
        "codex_home": "codex.home",
        "state_dir": "server.state_dir",
        "codex_config": "codex.config_overrides",
        "model": "codex.models",
        "account": "codex.accounts",
        "workers": "codex.workers",
        "profile": "codex.profile",
        "log_level": "log.level",
    }
    return {
        dotted: getattr(args, name)
        for name, dotted in mapping.items()
        if getattr(args, name, None) is not None
    }


def _one_account(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings of `--account NAME[=CODEX_HOME]` alone: its home as codex.home."""
    name, sep, home = str(args.account_name).partition("=")
    homes = dict(resolve_accounts(settings, os.environ))
    if not sep:
        if name not in homes or not settings.codex.accounts:
            known = ", ".join(homes) if settings.codex.accounts else "none configured"
            raise ConfigError(f"--account: no account {name!r} in codex.accounts ({known})")
        home = str(homes[name])
    return load_settings(
        config_path=args.config,
        env=os.environ,
        overrides={**_overrides(args), "codex.home": home, "codex.accounts": []},
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config-table":
        print(config_table_markdown())
        return 0
    try:
        settings = load_settings(
            config_path=args.config, env=os.environ, overrides=_overrides(args)
        )
        resolve_codex_bin(settings)  # a missing binary is a config error, not a restart loop
    except ConfigError as exc:
        print(f"codex-bridge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command in ("login", "logout", "account"):
        from bridge import signin

        try:
            if args.account_name is not None:
                settings = _one_account(settings, args)
            # Before a key is read from stdin: without --account, codex.home is no worker's.
            signin.require_one_home(settings)
        except ConfigError as exc:
            print(f"codex-bridge: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        from bridge.ops.logging import configure_logging

        # Codex's own stderr (sandbox notices) is not the user's business here.
        configure_logging("error", stream=sys.stderr)
        return signin.run(args.command, settings, args)
    if args.command == "check-config":
        from bridge.ops.logging import redact_url

        effective = settings.model_dump()
        effective["auth"]["api_keys"] = ["[redacted]"] * len(settings.auth.api_keys)
        # A Redis password (`redis://:pw@host`) or collector token rides in these URLs.
        for section, key in (("store", "url"), ("tracing", "otlp_endpoint")):
            if effective[section][key]:
                effective[section][key] = redact_url(effective[section][key])
        print(orjson.dumps(effective, option=orjson.OPT_INDENT_2).decode())
        return 0
    from bridge.ops.statedir import InstanceLock, StateLayout
    from bridge.server import serve

    lock = InstanceLock(StateLayout.resolve(settings, os.environ))
    try:
        lock.acquire()
    except ConfigError as exc:
        print(f"codex-bridge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return serve(settings)
    finally:
        lock.release()
