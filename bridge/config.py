"""The bridge's settings: built once, frozen, from defaults < TOML file < BRIDGE_* env < flags.

`FIELDS` is the single declarative table of every setting (section, key,
env name, meaning); the env mapping, the validation messages and the
README's configuration table all come from it. Knows settings; knows
nothing of what uses them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MiB: Final = 1024 * 1024
# Account names are metric labels: short, fixed alphabet, and few.
_ACCOUNT_NAME: Final = re.compile(r"^[a-z0-9_-]{1,32}$")
MAX_ACCOUNTS: Final = 16
DEFAULT_ACCOUNT: Final = "default"


class ConfigError(Exception):
    """Configuration the bridge cannot start with; the message names the setting."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelAlias(_Frozen):
    id: Annotated[str, Field(min_length=1)]
    codex_model: str | None = None
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None

    @classmethod
    def parse(cls, text: str) -> ModelAlias:
        """`ID`, `ID=CODEX_MODEL` or `ID=CODEX_MODEL@EFFORT` (e.g. `gpt-high=gpt-6@high`)."""
        model_id, _, target = text.strip().partition("=")
        codex_model, _, effort = target.partition("@")
        return cls.model_validate(
            {
                "id": model_id.strip(),
                "codex_model": codex_model.strip() or None,
                "effort": effort.strip() or None,
            }
        )


class ServerSettings(_Frozen):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8140
    max_body_bytes: Annotated[int, Field(ge=1024)] = 16 * MiB
    metrics_access: Literal["loopback", "key", "open"] = "loopback"
    sse_keepalive_s: Annotated[float, Field(gt=0)] = 15.0
    shutdown_timeout_s: Annotated[float, Field(ge=0)] = 30.0
    state_dir: str | None = None
    cors_origins: tuple[str, ...] = ()
    stream_header_hold_s: Annotated[float, Field(ge=0)] = 10.0
    sse_write_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    max_concurrent_body_reads: Annotated[int, Field(ge=1)] = 32
    reasoning_content: bool = True


class CodexSettings(_Frozen):
    bin: str | None = None
    home: str | None = None
    profile: Literal["plain", "agent"] = "plain"
    dialect: Literal["auto", "v2", "v1"] = "auto"
    config_overrides: tuple[str, ...] = ()
    models: tuple[ModelAlias, ...] = ()
    default_model: str | None = None
    workers: Annotated[int, Field(ge=0, le=64)] = 0
    max_turns_per_worker: Annotated[int, Field(ge=1, le=256)] = 8
    queue_limit: Annotated[int, Field(ge=0)] = 64
    queue_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    rpc_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    handshake_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    first_token_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    idle_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    request_deadline_s: Annotated[float, Field(gt=0)] = 900.0
    tool_call_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    restart_backoff_initial_s: Annotated[float, Field(gt=0)] = 0.5
    restart_backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    healthy_reset_s: Annotated[float, Field(gt=0)] = 60.0
    health_interval_s: Annotated[float, Field(gt=0)] = 30.0
    stop_grace_s: Annotated[float, Field(ge=0)] = 5.0
    worker_max_rss_mb: Annotated[int, Field(ge=0)] = 1536
    worker_max_turns: Annotated[int, Field(ge=0)] = 0
    max_parked_turns: Annotated[int, Field(ge=0)] = 64
    max_queued_events: Annotated[int, Field(ge=1024)] = 4096
    prewarm_threads: Annotated[int, Field(ge=0, le=64)] = 2
    affinity: bool = True
    affinity_max_threads: Annotated[int, Field(ge=0)] = 256
    affinity_ttl_s: Annotated[float, Field(gt=0)] = 600.0
    agent_view_image: bool = False
    agent_web_search: bool = False
    env_passthrough: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()

    @field_validator("accounts")
    @classmethod
    def _accounts_are_name_home(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names: set[str] = set()
        for item in value:
            name, sep, home = item.partition("=")
            if not sep or not _ACCOUNT_NAME.match(name.strip()) or not home.strip():
                raise ValueError(
                    f"{item!r} is not NAME=CODEX_HOME (NAME: 1-32 of a-z, 0-9, _ and -)"
                )
            if name.strip() in names:
                raise ValueError(f"account {name.strip()!r} is named twice")
            names.add(name.strip())
        if len(value) > MAX_ACCOUNTS:
            raise ValueError(f"at most {MAX_ACCOUNTS} accounts")
        return value

    @field_validator("config_overrides")
    @classmethod
    def _overrides_are_key_value(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            key, sep, _ = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{item!r} is not KEY=VALUE")
        return value


class AuthSettings(_Frozen):
    api_keys: tuple[str, ...] = ()
    keys_file: str | None = None
    protect_models: bool = True
    trusted_proxies: tuple[str, ...] = ()
    identity_header: str = "X-Bridge-Key-Name"
    allow_anonymous_remote: bool = False
    verify_without_keys: bool = False

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value


class StoreSettings(_Frozen):
    path: str | None = None
    url: str | None = None
    ttl_days: Annotated[float, Field(gt=0)] = 30.0
    purge_interval_s: Annotated[float, Field(gt=0)] = 3600.0

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value or None


class ImageSettings(_Frozen):
    max_per_request: Annotated[int, Field(ge=0)] = 16
    max_bytes: Annotated[int, Field(ge=1024)] = 20 * MiB
    max_total_bytes: Annotated[int, Field(ge=1024)] = 40 * MiB
    max_concurrent_fetches: Annotated[int, Field(ge=1)] = 8
    max_pixels: Annotated[int, Field(ge=1)] = 25_000_000
    fetch_remote: bool = True
    fetch_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    fetch_allow: tuple[str, ...] = ()


class DemoSettings(_Frozen):
    enabled: bool = False
    codex_account: bool = False


class LogSettings(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    log_content: bool = False


class TracingSettings(_Frozen):
    otlp_endpoint: str | None = None
    service_name: Annotated[str, Field(min_length=1)] = "codex-bridge"

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL (OTLP/HTTP)")
        return value or None


class Settings(_Frozen):
    server: ServerSettings = ServerSettings()
    codex: CodexSettings = CodexSettings()
    auth: AuthSettings = AuthSettings()
    store: StoreSettings = StoreSettings()
    images: ImageSettings = ImageSettings()
    demo: DemoSettings = DemoSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()


@dataclass(frozen=True, slots=True)
class FieldDoc:
    section: str
    key: str
    env: str
    meaning: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"


# Every setting, once. The README table is generated from this (see
# `config_table_markdown`), and a test keeps the two and `Settings` in step.
FIELDS: Final = (
    FieldDoc(
        "server", "host", "BRIDGE_HOST", "Listen address. Beyond loopback, configure API keys."
    ),
    FieldDoc("server", "port", "BRIDGE_PORT", "Listen port."),
    FieldDoc(
        "server",
        "max_body_bytes",
        "BRIDGE_MAX_BODY_BYTES",
        "Request body limit; larger bodies get 413.",
    ),
    FieldDoc(
        "server",
        "metrics_access",
        "BRIDGE_METRICS_ACCESS",
        "`/metrics` for `loopback` peers only, for callers with an API `key`, or `open`.",
    ),
    FieldDoc(
        "server",
        "sse_keepalive_s",
        "BRIDGE_SSE_KEEPALIVE_S",
        "Seconds between `: keepalive` comments on quiet streams.",
    ),
    FieldDoc(
        "server",
        "shutdown_timeout_s",
        "BRIDGE_SHUTDOWN_TIMEOUT_S",
        "On SIGTERM, how long running turns may finish before they are interrupted.",
    ),
    FieldDoc(
        "server",
        "state_dir",
        "BRIDGE_STATE_DIR",
        "This instance's state directory (default Codex home, worker directories, SQLite files), locked against a second instance; empty means `$STATE_DIRECTORY` under systemd, else `$XDG_STATE_HOME/codex-bridge` (`~/.local/state/codex-bridge`).",
    ),
    FieldDoc(
        "server",
        "cors_origins",
        "BRIDGE_CORS_ORIGINS",
        "Browser origins allowed to call the API (`*` for any); empty turns CORS off (env: comma-separated).",
    ),
    FieldDoc(
        "server",
        "stream_header_hold_s",
        "BRIDGE_STREAM_HEADER_HOLD_S",
        "How long a stream holds its HTTP headers for the first content, so an early upstream failure is a real HTTP status.",
    ),
    FieldDoc(
        "server",
        "sse_write_timeout_s",
        "BRIDGE_SSE_WRITE_TIMEOUT_S",
        "How long one write to a stream may wait for a client that does not read before the request ends.",
    ),
    FieldDoc(
        "server",
        "max_concurrent_body_reads",
        "BRIDGE_MAX_CONCURRENT_BODY_READS",
        "Request bodies read at the same time; others wait their turn.",
    ),
    FieldDoc(
        "server",
        "reasoning_content",
        "BRIDGE_REASONING_CONTENT",
        "Chat completions carry Codex's reasoning summary as `reasoning_content`.",
    ),
    FieldDoc(
        "codex",
        "bin",
        "BRIDGE_CODEX_BIN",
        "Path to `codex`; empty means the binary of the pinned `openai-codex-cli-bin` package.",
    ),
    FieldDoc(
        "codex",
        "home",
        "BRIDGE_CODEX_HOME",
        "CODEX_HOME of the workers, locked against a second instance; empty means `codex-home` in the state directory.",
    ),
    FieldDoc(
        "codex",
        "profile",
        "BRIDGE_CODEX_PROFILE",
        "`plain`: a model API, no host tools. `agent`: Codex's own prompt and tools, read-only, approvals declined.",
    ),
    FieldDoc(
        "codex",
        "dialect",
        "BRIDGE_CODEX_DIALECT",
        "App-server protocol: `v2`, `v1` (legacy Codex), or `auto` (v2 when the worker accepts `thread/start`, else v1).",
    ),
    FieldDoc(
        "codex",
        "config_overrides",
        "BRIDGE_CODEX_CONFIG",
        "`KEY=VALUE` Codex settings passed to every worker as `-c` (env: one per line).",
    ),
    FieldDoc(
        "codex",
        "models",
        "BRIDGE_MODELS",
        "Extra model ids to serve: `ID`, `ID=CODEX_MODEL` or `ID=CODEX_MODEL@EFFORT` (env: comma-separated).",
    ),
    FieldDoc(
        "codex",
        "default_model",
        "BRIDGE_DEFAULT_MODEL",
        "Codex model for served ids that name none; empty lets Codex choose.",
    ),
    FieldDoc(
        "codex",
        "workers",
        "BRIDGE_WORKERS",
        "Number of `codex app-server` processes; 0: one per CPU, at most 8 (docs/benchmarks.md).",
    ),
    FieldDoc(
        "codex",
        "max_turns_per_worker",
        "BRIDGE_MAX_TURNS_PER_WORKER",
        "Concurrent turns one worker runs; more wait in the queue.",
    ),
    FieldDoc(
        "codex",
        "queue_limit",
        "BRIDGE_QUEUE_LIMIT",
        "Requests that may wait for a turn slot; beyond it, 429.",
    ),
    FieldDoc(
        "codex",
        "queue_timeout_s",
        "BRIDGE_QUEUE_TIMEOUT_S",
        "How long a request waits for a turn slot before 429.",
    ),
    FieldDoc(
        "codex",
        "rpc_timeout_s",
        "BRIDGE_RPC_TIMEOUT_S",
        "Timeout of one JSON-RPC request to a worker.",
    ),
    FieldDoc(
        "codex",
        "handshake_timeout_s",
        "BRIDGE_HANDSHAKE_TIMEOUT_S",
        "Timeout of a worker's initialize handshake.",
    ),
    FieldDoc(
        "codex",
        "first_token_timeout_s",
        "BRIDGE_FIRST_TOKEN_TIMEOUT_S",
        "Time to the first reply text before 504.",
    ),
    FieldDoc(
        "codex", "idle_timeout_s", "BRIDGE_IDLE_TIMEOUT_S", "Time between turn events before 504."
    ),
    FieldDoc(
        "codex",
        "request_deadline_s",
        "BRIDGE_REQUEST_DEADLINE_S",
        "Overall time one request may take before 504.",
    ),
    FieldDoc(
        "codex",
        "tool_call_timeout_s",
        "BRIDGE_TOOL_CALL_TIMEOUT_S",
        "How long a parked turn (holding no turn slot) waits for the client to send its tool results.",
    ),
    FieldDoc(
        "codex",
        "restart_backoff_initial_s",
        "BRIDGE_RESTART_BACKOFF_INITIAL_S",
        "First delay before restarting a dead worker (doubles each time, with jitter).",
    ),
    FieldDoc(
        "codex", "restart_backoff_max_s", "BRIDGE_RESTART_BACKOFF_MAX_S", "Longest restart delay."
    ),
    FieldDoc(
        "codex",
        "healthy_reset_s",
        "BRIDGE_HEALTHY_RESET_S",
        "Uptime after which a worker's restart backoff starts over.",
    ),
    FieldDoc(
        "codex",
        "health_interval_s",
        "BRIDGE_HEALTH_INTERVAL_S",
        "Seconds between health probes of each worker.",
    ),
    FieldDoc(
        "codex",
        "stop_grace_s",
        "BRIDGE_STOP_GRACE_S",
        "After closing a worker's stdin, how long to wait before SIGTERM.",
    ),
    FieldDoc(
        "codex",
        "worker_max_rss_mb",
        "BRIDGE_WORKER_MAX_RSS_MB",
        "A worker whose resident memory passes this many MiB takes no new turns, lets its running ones finish and restarts (Codex keeps every thread in memory); 0 = no bound.",
    ),
    FieldDoc(
        "codex",
        "worker_max_turns",
        "BRIDGE_WORKER_MAX_TURNS",
        "A worker that has started this many turns is recycled the same way; 0 = no bound.",
    ),
    FieldDoc(
        "codex",
        "max_parked_turns",
        "BRIDGE_MAX_PARKED_TURNS",
        "Turns that may wait for clients' tool results at once (they hold no turn slot); beyond it the oldest is released.",
    ),
    FieldDoc(
        "codex",
        "max_queued_events",
        "BRIDGE_MAX_QUEUED_EVENTS",
        "Events one turn may buffer for a slow client before the turn is interrupted and the request fails.",
    ),
    FieldDoc(
        "codex",
        "prewarm_threads",
        "BRIDGE_PREWARM_THREADS",
        "Ephemeral threads each worker starts ahead of time, while it runs no turn, for the configurations in use (0: off).",
    ),
    FieldDoc(
        "codex",
        "affinity",
        "BRIDGE_AFFINITY",
        "Conversation affinity: a chat conversation re-sent with one more message continues "
        "the Codex thread that answered it (one upstream prompt cache key, no replay); per "
        "API key, in memory, Codex 0.163+ only.",
    ),
    FieldDoc(
        "codex",
        "affinity_max_threads",
        "BRIDGE_AFFINITY_MAX_THREADS",
        "Idle conversation threads held at most, bridge-wide (least recently kept let go "
        "first; at most 32 per API key).",
    ),
    FieldDoc(
        "codex",
        "affinity_ttl_s",
        "BRIDGE_AFFINITY_TTL_S",
        "Seconds a conversation's idle thread is held for its next turn.",
    ),
    FieldDoc(
        "codex",
        "agent_view_image",
        "BRIDGE_AGENT_VIEW_IMAGE",
        "Agent profile: let the model read image files of the host (`view_image`).",
    ),
    FieldDoc(
        "codex",
        "agent_web_search",
        "BRIDGE_AGENT_WEB_SEARCH",
        "Agent profile: let the model search the web.",
    ),
    FieldDoc(
        "codex",
        "env_passthrough",
        "BRIDGE_WORKER_ENV",
        "Extra environment variable names passed to workers, beside the fixed allow-list (env: comma-separated).",
    ),
    FieldDoc(
        "codex",
        "accounts",
        "BRIDGE_CODEX_ACCOUNTS",
        "A pool of Codex accounts, `NAME=CODEX_HOME` each (env: comma-separated): `codex.workers` "
        "workers per account, each on its account's home (`codex.home` is then unused); requests "
        "go to the account with the most headroom, and one at its usage limit rests until its reset.",
    ),
    FieldDoc(
        "auth",
        "api_keys",
        "BRIDGE_API_KEYS",
        "API keys, each `KEY`, `NAME:KEY` or `NAME:KEY:MAX_CONCURRENT` (env: comma-separated). Prefer the keys file.",
    ),
    FieldDoc(
        "auth",
        "keys_file",
        "BRIDGE_API_KEYS_FILE",
        "File with one key entry per line; empty means `$CREDENTIALS_DIRECTORY/api-keys` when systemd provides it.",
    ),
    FieldDoc(
        "auth",
        "protect_models",
        "BRIDGE_AUTH_PROTECT_MODELS",
        "Require a key for `/v1/models` too (other `/v1/*` routes always need one when keys exist).",
    ),
    FieldDoc(
        "auth",
        "trusted_proxies",
        "BRIDGE_TRUSTED_PROXIES",
        "Proxy addresses/CIDRs whose identity header is believed if it names a configured key; trusting `127.0.0.1` trusts every local user (env: comma-separated).",
    ),
    FieldDoc(
        "auth",
        "identity_header",
        "BRIDGE_AUTH_IDENTITY_HEADER",
        "Header carrying the caller's key name from a trusted proxy (Traefik `authResponseHeaders`).",
    ),
    FieldDoc(
        "auth",
        "allow_anonymous_remote",
        "BRIDGE_ALLOW_ANONYMOUS_REMOTE",
        "Listen beyond loopback with no API keys (only behind an authenticating proxy).",
    ),
    FieldDoc(
        "auth",
        "verify_without_keys",
        "BRIDGE_AUTH_VERIFY_WITHOUT_KEYS",
        "Let `/auth/verify` approve every request when no API keys are configured (otherwise it refuses).",
    ),
    FieldDoc(
        "store",
        "path",
        "BRIDGE_STORE_PATH",
        "SQLite file of stored responses and the usage ledger; empty means `bridge.sqlite3` in the state directory.",
    ),
    FieldDoc(
        "store",
        "url",
        "BRIDGE_STORE_URL",
        "Redis URL shared by several instances (`redis://host:6379/0`): stored responses, the usage ledger and per-key concurrency caps live there; empty keeps them in this instance (SQLite, memory).",
    ),
    FieldDoc(
        "store",
        "ttl_days",
        "BRIDGE_STORE_TTL_DAYS",
        "How long a stored response can be fetched or continued.",
    ),
    FieldDoc(
        "store",
        "purge_interval_s",
        "BRIDGE_STORE_PURGE_INTERVAL_S",
        "Seconds between purges of expired stored responses and their Codex threads.",
    ),
    FieldDoc(
        "images",
        "max_per_request",
        "BRIDGE_IMAGES_MAX_PER_REQUEST",
        "Images one request may carry; more get 400.",
    ),
    FieldDoc(
        "images",
        "max_bytes",
        "BRIDGE_IMAGES_MAX_BYTES",
        "Largest image (decoded `data:` URL or fetched body).",
    ),
    FieldDoc(
        "images",
        "max_total_bytes",
        "BRIDGE_IMAGES_MAX_TOTAL_BYTES",
        "Bytes one request's remote images may total; more get 400.",
    ),
    FieldDoc(
        "images",
        "max_concurrent_fetches",
        "BRIDGE_IMAGES_MAX_CONCURRENT_FETCHES",
        "Remote image fetches running at once, bridge-wide (each reads at most "
        "`images.max_bytes`); one more waits up to `codex.queue_timeout_s`, then 503.",
    ),
    FieldDoc(
        "images",
        "max_pixels",
        "BRIDGE_IMAGES_MAX_PIXELS",
        "Largest image in pixels (width x height); larger images get 400.",
    ),
    FieldDoc(
        "images",
        "fetch_remote",
        "BRIDGE_IMAGES_FETCH_REMOTE",
        "Fetch `http(s)` image URLs and hand Codex the bytes; false answers 400.",
    ),
    FieldDoc(
        "images",
        "fetch_timeout_s",
        "BRIDGE_IMAGES_FETCH_TIMEOUT_S",
        "Timeout of one image fetch, redirects included.",
    ),
    FieldDoc(
        "images",
        "fetch_allow",
        "BRIDGE_IMAGES_FETCH_ALLOW",
        "Hosts or CIDRs that may be fetched although loopback, private or link-local (env: comma-separated).",
    ),
    FieldDoc(
        "demo",
        "enabled",
        "BRIDGE_DEMO",
        "Run the built-in scripted model and point the workers at it.",
    ),
    FieldDoc(
        "demo",
        "codex_account",
        "BRIDGE_DEMO_CODEX_ACCOUNT",
        "The demo model authenticates like OpenAI's provider: with the Codex account "
        "(`codex-bridge login`), so sign-in and plan limits can be tried offline.",
    ),
    FieldDoc("log", "level", "BRIDGE_LOG_LEVEL", "`debug`, `info`, `warning` or `error`."),
    FieldDoc(
        "log", "log_content", "BRIDGE_LOG_CONTENT", "Allow prompt and reply text in debug logs."
    ),
    FieldDoc(
        "tracing",
        "otlp_endpoint",
        "BRIDGE_OTLP_ENDPOINT",
        "OTLP/HTTP traces endpoint (`http://collector:4318/v1/traces`): spans for request, admission, turn and JSON-RPC calls, honouring `traceparent`; empty turns tracing off.",
    ),
    FieldDoc(
        "tracing",
        "service_name",
        "BRIDGE_OTEL_SERVICE_NAME",
        "`service.name` of the exported spans (one per instance, e.g. `codex-bridge-a`).",
    ),
)

_LIST_SPLIT: Final = {
    "config_overrides": "\n",
    "models": ",",
    "api_keys": ",",
    "trusted_proxies": ",",
    "cors_origins": ",",
    "env_passthrough": ",",
    "fetch_allow": ",",
    "accounts": ",",
}


def _section_model(section: str) -> type[BaseModel]:
    annotation = Settings.model_fields[section].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation


def _default_of(doc: FieldDoc) -> Any:
    return _section_model(doc.section).model_fields[doc.key].default


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    known = {doc.dotted for doc in FIELDS}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key in values:
            if f"{section}.{key}" not in known:
                raise ConfigError(f"{path}: unknown setting {section}.{key}")
    return data


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for doc in FIELDS:
        raw = env.get(doc.env)
        if raw is None or raw == "":
            continue
        value: Any = raw
        if doc.key in _LIST_SPLIT:
            value = [item.strip() for item in raw.split(_LIST_SPLIT[doc.key]) if item.strip()]
        values[doc.dotted] = value
    return values


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    tree.setdefault(section, {})[key] = value


def load_settings(
    *,
    config_path: str | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Any],
) -> Settings:
    """Layers the sources and validates once; raises ConfigError with a human message."""
    tree: dict[str, Any] = {}
    path = config_path or env.get("BRIDGE_CONFIG")
    if path:
        for section, values in _read_toml(path).items():
            for key, value in values.items():
                _set(tree, f"{section}.{key}", value)
    known = {doc.dotted: doc for doc in FIELDS}
    for dotted, value in [*_from_env(env).items(), *overrides.items()]:
        if dotted not in known:
            raise ConfigError(f"unknown setting {dotted}")
        _set(tree, dotted, value)
    if "models" in tree.get("codex", {}):
        try:
            tree["codex"]["models"] = [
                m if isinstance(m, dict) else ModelAlias.parse(str(m)).model_dump()
                for m in tree["codex"]["models"]
            ]
        except ValidationError:
            raise ConfigError(
                "codex.models: every entry must be ID, ID=CODEX_MODEL or ID=CODEX_MODEL@EFFORT "
                "with EFFORT one of none, minimal, low, medium, high, xhigh"
            ) from None
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    dotted = ".".join(loc[:2])
    doc = next((d for d in FIELDS if d.dotted == dotted), None)
    where = f"{dotted} ({doc.env})" if doc else ".".join(loc)
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"invalid {where}: {message}; got {error.get('input')!r}"


# `codex.workers = 0`: one Codex process per CPU, at most eight. On two cores
# two workers carried 1.0-1.4x the throughput of one at c=8/16 for the same
# CPU (docs/benchmarks.md: Codex's turn handling does not keep two cores busy
# from one process); each costs ~120 MB at start and grows until
# `codex.worker_max_rss_mb` recycles it, hence the cap: past eight, set it.
MAX_AUTO_WORKERS: Final = 8


def worker_count(settings: Settings, cpus: int | None = None) -> int:
    """`codex.workers`, or when 0 one worker per CPU (at least one, at most `MAX_AUTO_WORKERS`)."""
    if settings.codex.workers:
        return settings.codex.workers
    return max(1, min(MAX_AUTO_WORKERS, cpus if cpus is not None else usable_cpus()))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as `taskset` or a cpuset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def resolve_codex_bin(settings: Settings) -> str:
    """An absolute path: workers run in their own empty directory, so a relative one would miss."""
    configured = settings.codex.bin
    if not configured:
        from codex_cli_bin import bundled_codex_path  # type: ignore[import-untyped]

        return str(bundled_codex_path())
    if "/" not in configured:
        found = shutil.which(configured)
        if found is None:
            raise ConfigError(f"codex.bin (BRIDGE_CODEX_BIN): {configured!r} is not on PATH")
        return found
    path = Path(configured).expanduser().resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ConfigError(f"codex.bin (BRIDGE_CODEX_BIN): {path} is not an executable file")
    return str(path)


def resolve_state_dir(settings: Settings, env: Mapping[str, str] | None = None) -> Path:
    """This instance's state directory: the setting, else systemd's, else the XDG one.

    Independent of `codex.home`: an explicit Codex home no longer decides where
    the worker directories and SQLite files go (two instances with sibling Codex
    homes used to share them)."""
    env = os.environ if env is None else env
    if settings.server.state_dir:
        return Path(settings.server.state_dir).expanduser().resolve()
    state = env.get("STATE_DIRECTORY")
    if state:
        # systemd may list several directories, colon-separated: the first is ours.
        return Path(state.split(":")[0])
    xdg = env.get("XDG_STATE_HOME")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "codex-bridge"


def resolve_codex_home(settings: Settings, env: Mapping[str, str] | None = None) -> Path:
    if settings.codex.home:
        return Path(settings.codex.home).expanduser().resolve()
    return resolve_state_dir(settings, env) / "codex-home"


def resolve_accounts(
    settings: Settings, env: Mapping[str, str] | None = None
) -> list[tuple[str, Path]]:
    """Each account's name and Codex home; without `codex.accounts`, one named "default"."""
    if not settings.codex.accounts:
        return [(DEFAULT_ACCOUNT, resolve_codex_home(settings, env))]
    out = []
    for item in settings.codex.accounts:
        name, _, home = item.partition("=")
        out.append((name.strip(), Path(home.strip()).expanduser().resolve()))
    return out


def resolve_workroot(settings: Settings, env: Mapping[str, str] | None = None) -> Path:
    """Where each worker gets its empty cwd (`worker-N`), wiped on every start."""
    return resolve_state_dir(settings, env) / "workdirs"


def resolve_store_path(settings: Settings, env: Mapping[str, str] | None = None) -> Path:
    if settings.store.path:
        return Path(settings.store.path).expanduser().resolve()
    return resolve_state_dir(settings, env) / "bridge.sqlite3"


def resolve_legacy_store_path(
    settings: Settings, env: Mapping[str, str] | None = None
) -> Path | None:
    """Where versions before `server.state_dir` kept the SQLite file, when that differs from
    today's: beside an explicitly configured Codex home (the default layout is unchanged)."""
    if settings.store.path or not settings.codex.home:
        return None
    legacy = resolve_codex_home(settings, env).parent / "bridge.sqlite3"
    return None if legacy == resolve_store_path(settings, env) else legacy


def _format_default(value: Any) -> str:
    if value is None or value == ():
        return "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, int) and value >= MiB and value % MiB == 0:
        return f"{value // MiB} MiB"
    return str(value)


def config_table_markdown() -> str:
    lines = ["| Setting | Env | Default | Meaning |", "|---|---|---|---|"]
    for doc in FIELDS:
        lines.append(
            f"| `{doc.dotted}` | `{doc.env}` | {_format_default(_default_of(doc))} | {doc.meaning} |"
        )
    return "\n".join(lines)
