"""How a worker process is launched: argv, Codex config, environment and working directory.

Turns settings and the worker binary's version into the exact `codex
app-server` command line, the bridge-owned `config.toml` where Codex ignores
`-c` (0.77), and an allow-listed environment. Knows Codex's config keys and
feature names per supported version (`codex features list` of each) and
which built-in tools each version may still offer; knows nothing about
JSON-RPC or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bridge.config import ConfigError

Version = tuple[int, int, int]

# `codex --version` prints one line and exits in milliseconds; this bounds a
# wedged or wrong binary at startup.
VERSION_TIMEOUT_S: Final = 15.0
_VERSION_RE: Final = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True, slots=True)
class CodexFlavor:
    """What the bridge knows about one range of Codex releases (from `min_version` up)."""

    name: str
    min_version: Version
    honours_cli_overrides: bool
    """False: `-c` is ignored for app-server threads, so the overrides go into config.toml."""
    startup: tuple[str, ...]
    """Overrides for every profile: no outbound network at startup."""
    plain: tuple[str, ...]
    """The plain profile: no host-reaching tool, none of Codex's own prompt scaffolding."""
    view_image_off: tuple[str, ...]
    web_search_off: tuple[str, ...]
    tolerated_plain_tools: frozenset[str]
    """Built-in tools this version offers even in plain and cannot switch off; each is
    harmless under the bridge's policy (see `TOLERATED_WHY`). Anything else refuses plain."""


# Why a tolerated built-in tool cannot reach the host under the bridge's policy.
TOLERATED_WHY: Final = {
    "update_plan": "keeps a plan in the conversation; touches nothing",
    "list_mcp_resources": "lists resources of configured MCP servers; the bridge configures none",
    "list_mcp_resource_templates": "the same, for resource templates",
    "read_mcp_resource": "reads from configured MCP servers only; the bridge configures none",
    "apply_patch": "offered by some model families; every write is asked for and declined, "
    "and the sandbox is read-only (it can tell the model whether a path exists)",
}

# 0.77 (`codex features list`: undo, parallel, view_image_tool, shell_tool,
# web_search_request, unified_exec, shell_snapshot, apply_patch_freeform,
# exec_policy, skills, ...). It has no switch for update_plan, the MCP resource
# tools, <environment_context>, or a model family's apply_patch.
LEGACY: Final = CodexFlavor(
    name="0.77",
    min_version=(0, 77, 0),
    honours_cli_overrides=False,
    startup=(),
    plain=(
        "features.shell_tool=false",
        "features.unified_exec=false",
        "features.shell_snapshot=false",
        "features.view_image_tool=false",
        "features.web_search_request=false",
        "features.apply_patch_freeform=false",
        # Ghost snapshots run git in the thread's cwd.
        "features.undo=false",
        # <skills> lists paths under the Codex home.
        "features.skills=false",
        "include_apply_patch_tool=false",
        "tools.view_image=false",
        "tools.web_search=false",
        # No AGENTS.md from the cwd or above.
        "project_doc_max_bytes=0",
    ),
    view_image_off=("features.view_image_tool=false", "tools.view_image=false"),
    web_search_off=("features.web_search_request=false", "tools.web_search=false"),
    tolerated_plain_tools=frozenset(
        {
            "update_plan",
            "list_mcp_resources",
            "list_mcp_resource_templates",
            "read_mcp_resource",
            "apply_patch",
        }
    ),
)

# 0.163 and later. Feature names from `codex features list` of the pinned build;
# the scaffolding switches (include_*, skills.include_instructions,
# tools.experimental_request_user_input) leave the model the client's
# instructions, messages and tools only (upstream request checked in tests).
CURRENT: Final = CodexFlavor(
    name="0.163",
    min_version=(0, 163, 0),
    honours_cli_overrides=True,
    # Codex reaches out at startup for plugin/app catalogs (NOTES: "tries
    # outbound network at startup"); a serving daemon must not.
    startup=(
        "features.plugins=false",
        "features.apps=false",
        "features.remote_plugin=false",
    ),
    plain=(
        # Host-reaching tools, agent features, and the per-thread login-shell
        # snapshot that costs ~10x under load (NOTES: "Per-turn cost").
        *(
            f"features.{name}=false"
            for name in (
                "shell_snapshot",
                "shell_tool",
                "unified_exec",
                "multi_agent",
                "goals",
                "image_generation",
                "sleep_tool",
                "hooks",
                "skill_search",
                "tool_suggest",
                "browser_use",
                "computer_use",
                "memories",
                "view_image",
                "code_mode_host",
                "in_app_browser",
                "workspace_dependencies",
            )
        ),
        'web_search="disabled"',
        # Codex's prompt scaffolding: sandbox/approval text, cwd/shell/date,
        # apps and collaboration-mode text, the skills list (host paths), and
        # a request_user_input tool the client never defined.
        "include_permissions_instructions=false",
        "include_environment_context=false",
        "include_apps_instructions=false",
        "include_collaboration_mode_instructions=false",
        "skills.include_instructions=false",
        "tools.experimental_request_user_input.enabled=false",
    ),
    view_image_off=("features.view_image=false",),
    web_search_off=('web_search="disabled"',),
    tolerated_plain_tools=frozenset({"apply_patch"}),
)

FLAVORS: Final = (LEGACY, CURRENT)


def parse_version(text: str) -> Version:
    match = _VERSION_RE.search(text)
    if match is None:
        raise ValueError(f"no version number in {text.strip()!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


async def codex_version(codex_bin: str) -> Version:
    """`<bin> --version`, parsed; a binary that cannot say is a configuration error."""
    try:
        proc = await asyncio.create_subprocess_exec(
            codex_bin,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            start_new_session=True,
        )
    except OSError as exc:
        raise ConfigError(f"codex.bin: cannot run {codex_bin}: {exc}") from exc
    try:
        async with asyncio.timeout(VERSION_TIMEOUT_S):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise ConfigError(
            f"codex.bin: `{codex_bin} --version` gave no answer in {VERSION_TIMEOUT_S:g}s"
        ) from None
    try:
        return parse_version(out.decode(errors="replace"))
    except ValueError as exc:
        raise ConfigError(f"codex.bin: `{codex_bin} --version`: {exc}") from exc


def flavor_for(version: Version) -> CodexFlavor:
    """The newest flavor whose range starts at or below `version`."""
    chosen = None
    for flavor in FLAVORS:
        if version >= flavor.min_version:
            chosen = flavor
    if chosen is None:
        oldest = ".".join(map(str, FLAVORS[0].min_version))
        raise ConfigError(
            f"codex.bin: Codex {'.'.join(map(str, version))} is older than the oldest "
            f"supported release ({oldest})"
        )
    return chosen


def worker_overrides(
    flavor: CodexFlavor,
    *,
    profile: str,
    agent_view_image: bool = False,
    agent_web_search: bool = False,
    provider: Sequence[str] = (),
    operator: Sequence[str] = (),
) -> list[str]:
    """Every Codex setting of a worker, in order; later entries win (operator last)."""
    overrides: list[str] = [*flavor.startup]
    if profile == "plain":
        overrides.extend(flavor.plain)
    else:
        if not agent_view_image:
            overrides.extend(flavor.view_image_off)
        if not agent_web_search:
            overrides.extend(flavor.web_search_off)
    overrides.extend(provider)
    overrides.extend(operator)
    return overrides


def worker_argv(codex_bin: str, overrides: Sequence[str]) -> list[str]:
    """`codex -c ... app-server`."""
    argv = [codex_bin]
    for item in overrides:
        argv += ["-c", item]
    argv.append("app-server")
    return argv


# -- config.toml owned by the bridge (Codex versions that ignore `-c`) ---------------

CONFIG_MARKER: Final = "# Written by codex-bridge from its settings; replaced on every start."
# Files written by earlier releases (demo only) are ours too.
_OUR_MARKERS: Final = (
    CONFIG_MARKER,
    "# Written by codex-bridge --demo; replaced on every demo start.",
)
_BARE_KEY: Final = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(dotted: str) -> str:
    parts = [part.strip() for part in dotted.strip().split(".")]
    return ".".join(p if _BARE_KEY.match(p) else '"' + p.replace('"', '\\"') + '"' for p in parts)


def _toml_value(raw: str) -> str:
    """Codex reads a `-c` value as TOML and falls back to a plain string; so does this."""
    value = raw.strip()
    try:
        tomllib.loads(f"v = {value}")
    except tomllib.TOMLDecodeError:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def render_config_toml(overrides: Iterable[str]) -> str:
    """The overrides as a config.toml, the last value of a key winning, as with `-c`."""
    effective: dict[str, str] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        effective.pop(key.strip(), None)
        effective[key.strip()] = value
    lines = [CONFIG_MARKER, *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in effective.items())]
    text = "\n".join(lines) + "\n"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"codex.config_overrides (BRIDGE_CODEX_CONFIG): the settings do not form a valid "
            f"Codex config.toml ({exc})"
        ) from exc
    return text


def is_bridge_config(path: Path) -> bool:
    with contextlib.suppress(OSError):
        with path.open(encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") in _OUR_MARKERS
    return False


def write_bridge_config(codex_home: Path, overrides: Iterable[str]) -> Path:
    """`$CODEX_HOME/config.toml` with the effective overrides; never replaces the operator's."""
    path = codex_home / "config.toml"
    if path.exists() and not is_bridge_config(path):
        raise ConfigError(
            f"{path} is not managed by codex-bridge, and this Codex version ignores `-c` "
            "settings for app-server threads, so the bridge must write that file itself to "
            "apply its profile and your codex.config_overrides. Move your settings into "
            "codex.config_overrides (BRIDGE_CODEX_CONFIG) and delete the file, or point "
            "codex.home at another directory."
        )
    text = render_config_toml(overrides)
    tmp = path.with_name(".config.toml.codex-bridge")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def remove_bridge_config(codex_home: Path) -> None:
    """A config.toml left by the bridge for an older Codex would add stale settings."""
    path = codex_home / "config.toml"
    if path.exists() and is_bridge_config(path):
        path.unlink()


# -- environment ----------------------------------------------------------------------

# What a worker may inherit from the bridge's environment: enough to run Codex
# and reach the provider, nothing of the bridge's own (keys file location,
# state directory, systemd sockets, BRIDGE_* settings).
ENV_ALLOW: Final = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "TZ",
        "TMPDIR",
        "RUST_LOG",
        # Codex's built-in OpenAI provider.
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        # How Codex reaches the provider from behind a proxy.
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
    }
)
ENV_ALLOW_PREFIXES: Final = ("LC_", "SSL_CERT_")
# Never passed, even when named in codex.env_passthrough or an env_key.
ENV_NEVER: Final = frozenset(
    {"CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "NOTIFY_SOCKET", "RUNTIME_DIRECTORY"}
)
ENV_NEVER_PREFIXES: Final = ("BRIDGE_", "WATCHDOG_", "LISTEN_")
_ENV_KEY: Final = re.compile(r"^\s*model_providers\.[^=]+\.env_key\s*=\s*(.+)$")


def provider_env_keys(overrides: Iterable[str]) -> set[str]:
    """The variables named by `model_providers.<id>.env_key` settings."""
    names: set[str] = set()
    for item in overrides:
        match = _ENV_KEY.match(item)
        if match:
            names.add(match.group(1).strip().strip("\"'"))
    return names


def env_passable(name: str) -> bool:
    return name not in ENV_NEVER and not name.startswith(ENV_NEVER_PREFIXES)


def worker_env(
    base: Mapping[str, str],
    *,
    codex_home: Path,
    passthrough: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The allow-listed environment of a worker (plus `passthrough` names and `extra`)."""
    wanted = set(passthrough)
    env = {
        k: v
        for k, v in base.items()
        if env_passable(k) and (k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES) or k in wanted)
    }
    env["CODEX_HOME"] = str(codex_home)
    # Codex logs through RUST_LOG; keep its stderr to warnings unless asked.
    env.setdefault("RUST_LOG", "warn")
    # Plain stderr lines: they end up as JSON log fields, not on a terminal.
    env["NO_COLOR"] = "1"
    if extra:
        env.update({k: v for k, v in extra.items() if env_passable(k)})
    return env


def prepare_workdir(root: Path, worker_id: int) -> Path:
    """An empty directory the worker's threads use as cwd: nothing there to read."""
    path = root / f"worker-{worker_id}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)
    return path


def prepare_codex_home(path: Path) -> Path:
    # Created private; an operator-provided directory keeps its own mode.
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
