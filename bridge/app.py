"""The aiohttp application factory: routes, middlewares, and the lifecycle of what they use.

`make_app(settings)` builds everything with no globals and no work at import
time. Resources start in order through `cleanup_ctx` and stop in reverse:
the demo model (when enabled), then the worker pool. The listener is bound
by the caller (`bridge.server` or a test), so `/healthz` answers while the
workers are still starting and `/readyz` says when they are ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from bridge.api import chat, completions, health, models, responses
from bridge.api.errors import error_middleware
from bridge.api.middleware import METRICS, add_response_headers, request_context_middleware
from bridge.api.pending import PENDING, PendingToolCalls
from bridge.appkeys import CATALOG, LIMITS, POOL, SETTINGS, STORE
from bridge.catalog import CatalogEntry, ModelCatalog
from bridge.codex.turn import TurnLimits
from bridge.config import Settings, resolve_codex_bin, resolve_codex_home, resolve_store_path
from bridge.demo import DEMO_MODEL_ID, DemoModel
from bridge.ops import auth, usage
from bridge.ops.admission import KEY_LIMITS, KeyLimits
from bridge.ops.auth import AUTH, auth_middleware, build_policy, metrics_guard
from bridge.ops.metrics import Metrics
from bridge.store import SqliteResponseStore
from bridge.worker.launch import prepare_codex_home, prepare_workdir, worker_argv, worker_env
from bridge.worker.pool import WorkerPool
from bridge.worker.rpc import MessageHook
from bridge.worker.supervisor import WorkerConfig

log = structlog.get_logger("bridge.app")

CODEX_VERSION: Final = version("openai-codex-cli-bin")
DEMO: Final = web.AppKey("demo", DemoModel)
# How long startup waits for the first worker before listing Codex's models;
# the bridge serves (and /readyz says 503) meanwhile.
CATALOG_DISCOVERY_TIMEOUT_S: Final = 120.0


def make_app(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    rpc_message_hook: MessageHook | None = None,
) -> web.Application:
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[request_context_middleware, error_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics(version=version("codex-bridge"), codex_version=CODEX_VERSION)
    app.on_response_prepare.append(add_response_headers)
    app.on_response_prepare.append(auth.add_ratelimit_headers)
    app[LIMITS] = TurnLimits(
        first_token_s=settings.codex.first_token_timeout_s,
        idle_s=settings.codex.idle_timeout_s,
        deadline_s=settings.codex.request_deadline_s,
    )
    app[CATALOG] = ModelCatalog(_static_models(settings))
    env = dict(os.environ if environ is None else environ)
    app[AUTH] = build_policy(settings, env)
    app[KEY_LIMITS] = KeyLimits()
    app[PENDING] = PendingToolCalls(settings.codex.tool_call_timeout_s)

    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_usage_ctx)
    if settings.demo.enabled:
        app.cleanup_ctx.append(_demo_ctx)
    app.cleanup_ctx.append(lambda a: _pool_ctx(a, env, rpc_message_hook))

    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model:.+}", models.get_model)
    app.router.add_post("/v1/chat/completions", chat.create_chat_completion)
    app.router.add_post("/v1/completions", completions.create_completion)
    app.router.add_post("/v1/responses", responses.create_response)
    app.router.add_get("/v1/responses/{response_id}", responses.get_response)
    app.router.add_get("/v1/usage", usage.get_usage)
    app.router.add_get(
        "/metrics",
        metrics_guard(settings.server.metrics_access, make_aiohttp_handler(app[METRICS].registry)),
    )
    app.router.add_route("*", "/auth/verify", auth.verify)
    return app


def _static_models(settings: Settings) -> list[CatalogEntry]:
    entries = [
        CatalogEntry(
            id=alias.id,
            codex_model=alias.codex_model or settings.codex.default_model,
            owned_by="codex-bridge",
            created=0,
            effort=alias.effort,
        )
        for alias in settings.codex.models
    ]
    if settings.demo.enabled:
        entries.insert(
            0, CatalogEntry(id=DEMO_MODEL_ID, codex_model=None, owned_by="codex-bridge", created=0)
        )
    return entries


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = SqliteResponseStore(
        resolve_store_path(settings), ttl_s=settings.store.ttl_days * 24 * 3600
    )
    app[STORE] = store
    yield
    await store.close()


async def _usage_ctx(app: web.Application) -> AsyncIterator[None]:
    ledger = usage.UsageLedger(resolve_store_path(app[SETTINGS]))
    ledger.start()
    app[usage.USAGE] = ledger
    yield
    await ledger.close()


async def _demo_ctx(app: web.Application) -> AsyncIterator[None]:
    demo = DemoModel()
    await demo.start()
    app[DEMO] = demo
    log.info("demo model listening", url=demo.base_url)
    yield
    await demo.stop()


def worker_configs(
    settings: Settings,
    env: Mapping[str, str],
    demo: DemoModel | None,
    message_hook: MessageHook | None = None,
) -> list[WorkerConfig]:
    codex = settings.codex
    codex_home = prepare_codex_home(resolve_codex_home(settings))
    overrides = list(codex.config_overrides)
    extra_env: dict[str, str] = {}
    if demo is not None:
        # Operator overrides still come last and win.
        overrides = [*demo.codex_config_overrides(), *overrides]
        extra_env[DemoModel.API_KEY_ENV] = DemoModel.API_KEY_VALUE
        write_demo_config(codex_home, demo)
    argv = worker_argv(
        resolve_codex_bin(settings), profile=codex.profile, operator_overrides=overrides
    )
    workroot = codex_home.parent / "workdirs"
    return [
        WorkerConfig(
            argv=argv,
            env=worker_env(env, codex_home=codex_home, extra=extra_env),
            workdir=prepare_workdir(workroot, i),
            profile=codex.profile,
            rpc_timeout_s=codex.rpc_timeout_s,
            handshake_timeout_s=codex.handshake_timeout_s,
            backoff_initial_s=codex.restart_backoff_initial_s,
            backoff_max_s=codex.restart_backoff_max_s,
            healthy_reset_s=codex.healthy_reset_s,
            health_interval_s=codex.health_interval_s,
            stop_grace_s=codex.stop_grace_s,
            version=version("codex-bridge"),
            message_hook=message_hook,
            dialect=codex.dialect,
        )
        for i in range(codex.workers)
    ]


DEMO_CONFIG_MARKER: Final = "# Written by codex-bridge --demo; replaced on every demo start."


def write_demo_config(codex_home: Path, demo: DemoModel) -> None:
    """The demo provider in `$CODEX_HOME/config.toml` too: Codex 0.77 ignores `-c` provider
    overrides for app-server threads (protocol NOTES). An operator's own file is left alone."""
    path = codex_home / "config.toml"
    if path.exists() and not path.read_text().startswith(DEMO_CONFIG_MARKER):
        log.warning("not writing the demo provider: config.toml is not ours", path=str(path))
        return
    path.write_text("\n".join([DEMO_CONFIG_MARKER, *demo.codex_config_overrides(), ""]))


async def _pool_ctx(
    app: web.Application, env: Mapping[str, str], message_hook: MessageHook | None
) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    demo = app.get(DEMO)
    pool = WorkerPool(
        worker_configs(settings, env, demo, message_hook),
        max_turns_per_worker=settings.codex.max_turns_per_worker,
        queue_limit=settings.codex.queue_limit,
        queue_timeout_s=settings.codex.queue_timeout_s,
        observer=app[METRICS],
    )
    app[POOL] = pool
    app[METRICS].watch_pool(pool)
    pool.start()
    discovery = None
    if demo is None:
        discovery = asyncio.create_task(_discover_models(pool, app[CATALOG]))
    yield
    await app[PENDING].close()
    if discovery is not None:
        discovery.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await discovery
    await pool.stop()


async def _discover_models(pool: WorkerPool, catalog: ModelCatalog) -> None:
    """Adds Codex's built-in model catalog (`model/list`) once a worker is up."""
    if not await pool.wait_ready(CATALOG_DISCOVERY_TIMEOUT_S):
        return
    worker = pool.any_ready()
    if worker is None:
        return
    try:
        result = await worker.request("model/list", {})
    except Exception as exc:
        log.warning("model/list failed; serving configured models only", error=repr(exc))
        return
    ids = [
        str(m.get("id") or m.get("model")) for m in result.get("data", []) if isinstance(m, dict)
    ]
    catalog.set_discovered(mid for mid in ids if mid and mid != "None")
    log.info("model catalog discovered", models=len(ids))
