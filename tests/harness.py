"""A running bridge on 127.0.0.1 with real Codex workers and the demo model, for tests and benchmarks.

`running_bridge(...)` starts the app exactly as `codex-bridge serve --demo`
does (same factory, same runner options) on an ephemeral port and waits,
bounded, for a ready worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from aiohttp import web
from opentelemetry.sdk.trace.export import SpanExporter

from bridge.app import DEMO, make_app
from bridge.appkeys import POOL
from bridge.config import Settings, load_settings
from bridge.demo import DemoModel
from bridge.worker.pool import WorkerPool
from bridge.worker.rpc import MessageHook
from tests.rpc_schema import RpcSchemaValidator

# A cold Codex start is ~0.3 s on a quiet machine; CI machines are slower
# and busy, so readiness gets a generous bound.
READY_TIMEOUT_S: Final = 60.0


@dataclass
class RunningBridge:
    app: web.Application
    base_url: str
    settings: Settings

    @property
    def pool(self) -> WorkerPool:
        return self.app[POOL]

    @property
    def demo(self) -> DemoModel:
        return self.app[DEMO]


def bridge_test_settings(codex_home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "demo.enabled": True,
        "codex.home": str(codex_home),
        # Each bridge its own state directory (worker dirs, SQLite), beside its Codex home.
        "server.state_dir": str(codex_home.with_name(codex_home.name + "-state")),
        "server.port": 0,
        # One worker whatever the CPU count (the default follows it): tests address workers[0].
        "codex.workers": 1,
        # Short enough that hang tests finish quickly, long enough for a busy CI box.
        "codex.idle_timeout_s": 8.0,
        "codex.first_token_timeout_s": 30.0,
        "codex.health_interval_s": 5.0,
        "codex.restart_backoff_initial_s": 0.2,
        "log.level": "warning",
    }
    values.update(overrides)
    return load_settings(config_path=None, env={}, overrides=values)


@asynccontextmanager
async def running_bridge(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    also_hook: MessageHook | None = None,
    span_exporter: SpanExporter | None = None,
) -> AsyncIterator[RunningBridge]:
    """The bridge, with every JSON-RPC message checked against the pinned schema bundle."""
    validator = RpcSchemaValidator()

    def hook(direction: Literal["c2s", "s2c"], message: dict[str, Any]) -> None:
        validator(direction, message)
        if also_hook is not None:
            also_hook(direction, message)

    app = make_app(settings, environ=environ, rpc_message_hook=hook, span_exporter=span_exporter)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        bridge = RunningBridge(app=app, base_url=f"http://127.0.0.1:{port}", settings=settings)
        if not await bridge.pool.wait_ready(READY_TIMEOUT_S):
            raise RuntimeError("no Codex worker became ready")
        yield bridge
    finally:
        await runner.cleanup()
    assert validator.checked > 0
    assert not validator.errors, "protocol drift:\n" + "\n".join(sorted(set(validator.errors)))


async def wait_until(predicate: Any, *, timeout: float, interval: float = 0.05) -> None:
    """Polls an observable condition, bounded; raises TimeoutError if it never holds."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state owned by another task
            await asyncio.sleep(interval)
