"""The aiohttp application factory: routes, middlewares, and the lifecycle of what they use.

`make_app(settings)` builds everything with no globals and no work at import
time. Resources start in order through `cleanup_ctx` and stop in reverse:
the state directory (private modes, legacy import; the instance lock is the
CLI's, `bridge/cli.py`), the response store, the usage ledger, the demo
model (when enabled), then the worker pool. The listener is bound
by the caller (`bridge.server` or a test), so `/healthz` answers while the
workers are still starting and `/readyz` says when they are ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client.aiohttp import make_aiohttp_handler

from bridge.api import chat, completions, health, models, responses, stored_responses
from bridge.api.cors import CORS, CorsPolicy, add_cors_headers, cors_middleware
from bridge.api.errors import error_middleware
from bridge.api.images import IMAGE_FETCHES, RemoteFetches
from bridge.api.middleware import (
    BODY_READS,
    METRICS,
    BodyReads,
    add_response_headers,
    body_read_middleware,
    request_context_middleware,
)
from bridge.api.pending import PENDING, PendingToolCalls
from bridge.api.tracing import tracing_middleware
from bridge.api.turns import TURNS, TurnRegistry
from bridge.appkeys import (
    ACCOUNT,
    ACCOUNTS,
    AFFINITY,
    CATALOG,
    LIMITS,
    POOL,
    SETTINGS,
    STATE,
    STORE,
)
from bridge.catalog import CatalogEntry, ModelCatalog
from bridge.codex.account import AccountState, account_rank
from bridge.codex.affinity import ConversationIndex
from bridge.codex.dialect import account_driver_factory
from bridge.codex.selfcheck import check_worker_tools
from bridge.codex.turn import TurnLimits
from bridge.config import (
    Settings,
    resolve_accounts,
    resolve_codex_bin,
    resolve_workroot,
    worker_count,
)
from bridge.demo import DEMO_MODEL_ID, DemoModel
from bridge.ops import auth, usage
from bridge.ops.account_rests import SharedAccountRests
from bridge.ops.admission import KEY_LIMITS, KeyLimits
from bridge.ops.auth import AUTH, auth_middleware, build_policy, metrics_guard
from bridge.ops.leases import RedisKeyLimits
from bridge.ops.metrics import Metrics
from bridge.ops.statedir import StateLayout, prepare_state, private_dir
from bridge.ops.usage_redis import RedisUsageLedger
from bridge.redis_store import RedisBreaker, RedisResponseStore
from bridge.retention import RETENTION, Retention
from bridge.store import ResponseStore, SqliteResponseStore
from bridge.tracing import PROVIDER, build_provider
from bridge.worker.launch import (
    CodexFlavor,
    codex_version,
    flavor_for,
    prepare_codex_home,
    prepare_workdir,
    provider_env_keys,
    remove_bridge_config,
    worker_argv,
    worker_env,
    worker_overrides,
    write_bridge_config,
)
from bridge.worker.pool import WorkerPool
from bridge.worker.rpc import MessageHook
from bridge.worker.supervisor import WorkerConfig

log = structlog.get_logger("bridge.app")

CODEX_VERSION: Final = version("openai-codex-cli-bin")
DEMO: Final = web.AppKey("demo", DemoModel)
REDIS_BREAKER: Final = web.AppKey("redis_breaker", RedisBreaker)
"""With `store.url`: when Redis failed lately, every client of it skips it for a while."""
# How long startup waits for the first worker before listing Codex's models;
# the bridge serves (and /readyz says 503) meanwhile.
CATALOG_DISCOVERY_TIMEOUT_S: Final = 120.0


def make_app(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    rpc_message_hook: MessageHook | None = None,
    span_exporter: SpanExporter | None = None,
) -> web.Application:
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        # Outermost first: every request gets an id and an access line; errors
        # become envelopes; CORS preflights are answered before authentication;
        # bodies are read only after it, and only so many at once.
        middlewares=[
            request_context_middleware,
            tracing_middleware,
            error_middleware,
            cors_middleware,
            auth_middleware,
            body_read_middleware,
        ],
    )
    app[SETTINGS] = settings
    endpoint = settings.tracing.otlp_endpoint
    if endpoint is not None or span_exporter is not None:
        app[PROVIDER] = build_provider(
            settings.tracing.service_name,
            version("codex-bridge"),
            endpoint=endpoint,
            exporter=span_exporter,
        )
        app.on_cleanup.append(_stop_tracing)
    app[METRICS] = Metrics(version=version("codex-bridge"), codex_version=CODEX_VERSION)
    app.on_response_prepare.append(add_response_headers)
    app.on_response_prepare.append(auth.add_ratelimit_headers)
    app.on_response_prepare.append(add_cors_headers)
    app[CORS] = CorsPolicy(settings.server.cors_origins)
    app[BODY_READS] = BodyReads(
        settings.server.max_concurrent_body_reads, wait_s=settings.codex.queue_timeout_s
    )
    app[IMAGE_FETCHES] = RemoteFetches(
        settings.images.max_concurrent_fetches, wait_s=settings.codex.queue_timeout_s
    )
    app[LIMITS] = TurnLimits(
        first_token_s=settings.codex.first_token_timeout_s,
        idle_s=settings.codex.idle_timeout_s,
        deadline_s=settings.codex.request_deadline_s,
    )
    app[CATALOG] = ModelCatalog(_static_models(settings))
    env = dict(os.environ if environ is None else environ)
    app[AUTH] = build_policy(settings, env)
    if settings.store.url:
        # One for the store, the ledger and the leases: an outage one of them met, all skip.
        app[REDIS_BREAKER] = RedisBreaker()
        # Per-key caps hold across every instance sharing this Redis.
        app.cleanup_ctx.append(_leases_ctx)
    else:
        app[KEY_LIMITS] = KeyLimits()
    pending = PendingToolCalls(settings.codex.tool_call_timeout_s, settings.codex.max_parked_turns)
    app[PENDING] = pending
    app[TURNS] = TurnRegistry()
    app[METRICS].parked_turns.set_function(lambda: len(pending))
    if settings.codex.affinity:
        affinity = app[AFFINITY] = ConversationIndex(
            profile=settings.codex.profile,
            max_threads=settings.codex.affinity_max_threads,
            ttl_s=settings.codex.affinity_ttl_s,
            observe=lambda outcome: app[METRICS].affinity.labels(outcome).inc(),
        )
        app[METRICS].affinity_threads.set_function(lambda: len(affinity))
    app[ACCOUNTS] = {name: AccountState() for name, _ in resolve_accounts(settings, env)}
    # The first account: with no `codex.accounts`, the only one.
    app[ACCOUNT] = next(iter(app[ACCOUNTS].values()))
    app[METRICS].watch_accounts(app[ACCOUNTS])
    if settings.store.url:
        # An account at its usage limit rests on every instance sharing this Redis.
        app.cleanup_ctx.append(_rests_ctx)

    app.cleanup_ctx.append(lambda a: _state_ctx(a, env))
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_usage_ctx)
    if settings.demo.enabled:
        app.cleanup_ctx.append(_demo_ctx)
    app.cleanup_ctx.append(lambda a: _pool_ctx(a, env, rpc_message_hook))
    app.cleanup_ctx.append(_retention_ctx)

    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model:.+}", models.get_model)
    app.router.add_post("/v1/chat/completions", chat.create_chat_completion)
    app.router.add_post("/v1/completions", completions.create_completion)
    app.router.add_post("/v1/responses", responses.create_response)
    # Before the {response_id} routes, so "input_tokens" is never taken for an id.
    app.router.add_post("/v1/responses/input_tokens", stored_responses.count_input_tokens)
    app.router.add_get("/v1/responses/{response_id}", stored_responses.get_response)
    app.router.add_delete("/v1/responses/{response_id}", stored_responses.delete_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", stored_responses.list_input_items)
    app.router.add_post("/v1/responses/{response_id}/cancel", stored_responses.cancel_response)
    app.router.add_get("/v1/usage", usage.get_usage)
    app.router.add_get(
        "/metrics",
        metrics_guard(settings.server.metrics_access, make_aiohttp_handler(app[METRICS].registry)),
    )
    app.router.add_route("*", "/auth/verify", auth.verify)
    return app


async def _stop_tracing(app: web.Application) -> None:
    # Flushes the last spans; off the loop, since an export is a blocking HTTP call.
    await asyncio.to_thread(app[PROVIDER].shutdown)


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


async def _state_ctx(app: web.Application, env: Mapping[str, str]) -> AsyncIterator[None]:
    layout = StateLayout.resolve(app[SETTINGS], env)
    prepare_state(layout)
    app[STATE] = layout
    yield


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    ttl_s = settings.store.ttl_days * 24 * 3600
    on_error = functools.partial(app[METRICS].store_error, "responses")
    store: ResponseStore
    if settings.store.url:
        # Shared by every instance (and so is the usage ledger: `_usage_ctx`).
        shared = RedisResponseStore(
            settings.store.url, ttl_s=ttl_s, on_error=on_error, breaker=app[REDIS_BREAKER]
        )
        shared.on_change = app[METRICS].store_up.set
        store = shared
    else:
        store = SqliteResponseStore(app[STATE].store_path, ttl_s=ttl_s, on_error=on_error)
    up = await store.ping()
    app[METRICS].store_up.set(up)
    if not up:
        # Not fatal: chat without previous_response_id works, and the store comes back by itself.
        log.warning("response store unreachable at startup", url=settings.store.url)
    app[STORE] = store
    yield
    await store.close()


async def _leases_ctx(app: web.Application) -> AsyncIterator[None]:
    url = app[SETTINGS].store.url
    assert url is not None
    limits = RedisKeyLimits(url, breaker=app[REDIS_BREAKER])
    app[KEY_LIMITS] = limits
    yield
    await limits.close()


async def _rests_ctx(app: web.Application) -> AsyncIterator[None]:
    url = app[SETTINGS].store.url
    assert url is not None
    rests = SharedAccountRests(url, app[ACCOUNTS])
    rests.start()
    yield
    await rests.close()


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """The purge of expired responses; stops first, before the pool it deletes threads with."""
    retention = Retention(
        app[STORE],
        app[STATE].homes,
        app[METRICS],
        app.get(POOL),
        app[SETTINGS].store.purge_interval_s,
        in_use=functools.partial(stored_responses.thread_in_use, app),
    )
    app[RETENTION] = retention
    task = asyncio.create_task(retention.run(), name="retention")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _usage_ctx(app: web.Application) -> AsyncIterator[None]:
    url = app[SETTINGS].store.url
    on_error = functools.partial(app[METRICS].store_error, "usage")
    # With a shared store, /v1/usage answers for every instance.
    ledger = (
        RedisUsageLedger(url, on_error=on_error, breaker=app[REDIS_BREAKER])
        if url
        else usage.UsageLedger(app[STATE].store_path, on_error=on_error)
    )
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
    *,
    flavor: CodexFlavor,
) -> list[WorkerConfig]:
    codex = settings.codex
    overrides = effective_overrides(settings, demo, flavor)
    homes: list[tuple[str, Path]] = []
    for name, home in resolve_accounts(settings, env):
        codex_home = prepare_codex_home(home)
        if flavor.honours_cli_overrides:
            remove_bridge_config(codex_home)
        else:
            # Codex 0.77 ignores `-c` for app-server threads (protocol NOTES): the same
            # settings go into a config.toml the bridge owns, or the bridge refuses to start.
            write_bridge_config(codex_home, overrides)
        homes.append((name, codex_home))
    argv = worker_argv(resolve_codex_bin(settings), overrides)
    extra_env: dict[str, str] = {}
    if demo is not None:
        extra_env[DemoModel.API_KEY_ENV] = DemoModel.API_KEY_VALUE
    passthrough = {*codex.env_passthrough, *provider_env_keys(overrides)}
    # In the state directory, never beside the Codex home: instances with sibling Codex
    # homes used to share it and wipe each other's worker cwd on start.
    workroot = private_dir(resolve_workroot(settings, env))
    # `codex.workers` workers per account (0: one per CPU, at most 8), each on its account's Codex home.
    slots = [(name, home) for name, home in homes for _ in range(worker_count(settings))]
    return [
        WorkerConfig(
            argv=argv,
            env=worker_env(env, codex_home=home, passthrough=passthrough, extra=extra_env),
            workdir=prepare_workdir(workroot, i),
            account=name,
            profile=codex.profile,
            rpc_timeout_s=codex.rpc_timeout_s,
            handshake_timeout_s=codex.handshake_timeout_s,
            backoff_initial_s=codex.restart_backoff_initial_s,
            backoff_max_s=codex.restart_backoff_max_s,
            healthy_reset_s=codex.healthy_reset_s,
            health_interval_s=codex.health_interval_s,
            stop_grace_s=codex.stop_grace_s,
            max_queued_events=codex.max_queued_events,
            prewarm_threads=codex.prewarm_threads,
            max_turns=codex.worker_max_turns,
            max_rss_mb=codex.worker_max_rss_mb,
            drain_timeout_s=codex.request_deadline_s,
            version=version("codex-bridge"),
            message_hook=message_hook,
            dialect=codex.dialect,
        )
        for i, (name, home) in enumerate(slots)
    ]


def effective_overrides(
    settings: Settings, demo: DemoModel | None, flavor: CodexFlavor
) -> list[str]:
    """Every Codex setting of the workers: startup, profile, demo provider, operator (last wins)."""
    codex = settings.codex
    return worker_overrides(
        flavor,
        profile=codex.profile,
        agent_view_image=codex.agent_view_image,
        agent_web_search=codex.agent_web_search,
        provider=demo.codex_config_overrides(codex_account=settings.demo.codex_account)
        if demo is not None
        else (),
        operator=codex.config_overrides,
    )


async def _pool_ctx(
    app: web.Application, env: Mapping[str, str], message_hook: MessageHook | None
) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    demo = app.get(DEMO)
    codex_bin = resolve_codex_bin(settings)
    flavor = flavor_for(await codex_version(codex_bin))
    configs = worker_configs(settings, env, demo, message_hook, flavor=flavor)
    # Refuses to start (SelfCheckFailed, a ConfigError: exit 2) when the model would be
    # offered tools the profile promises it does not have.
    await check_worker_tools(
        configs[0],
        flavor,
        codex_bin=codex_bin,
        overrides=effective_overrides(settings, demo, flavor),
        models=_probe_models(settings),
        agent_view_image=settings.codex.agent_view_image,
        agent_web_search=settings.codex.agent_web_search,
    )
    pool = WorkerPool(
        configs,
        driver_factory=account_driver_factory(app[ACCOUNTS]),
        max_turns_per_worker=settings.codex.max_turns_per_worker,
        queue_limit=settings.codex.queue_limit,
        queue_timeout_s=settings.codex.queue_timeout_s,
        observer=app[METRICS],
    )
    pool.rank = account_rank(app[ACCOUNTS])
    app[POOL] = pool
    app[METRICS].watch_pool(pool)
    pool.start()
    discovery = None
    if demo is None:
        discovery = asyncio.create_task(_discover_models(pool, app[CATALOG]))
    affinity = app.get(AFFINITY)
    sweeper = asyncio.create_task(affinity.run_sweeper()) if affinity is not None else None
    yield
    await app[PENDING].close()
    for task in (discovery, sweeper):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if affinity is not None:
        affinity.clear()  # the held threads go with their workers
    await pool.stop()


def _probe_models(settings: Settings) -> list[str | None]:
    """Every Codex model the configuration names (a model's family can add tools)."""
    models: list[str | None] = [settings.codex.default_model]
    models += [alias.codex_model for alias in settings.codex.models if alias.codex_model]
    return models


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
