"""Startup self-check: which tools does Codex really offer the model under the worker's settings?

Before the pool starts, one probe worker runs with exactly the real workers'
binary, settings and environment, except that its provider is a capture
server on 127.0.0.1 (the demo model, which records every request). One probe
turn per configured model (a model's family can add tools) shows the `tools`
the model would be offered. The plain profile is refused when anything but
the probe's own client tool and the version's tolerated built-ins remains;
the agent profile when `view_image` or web search is there without the
operator's opt-in. A probe that cannot run refuses too: what is not seen is
not trusted.

Codex 0.77 ignores `-c` for app-server threads, so there the probe gets a
scratch Codex home whose config.toml carries the same settings plus the
capture provider. Knows Codex tool names, the worker and its driver; no HTTP API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from bridge.codex.dialect import codex_driver, start_turn
from bridge.codex.events import Failed, Finished
from bridge.codex.turn import ToolSpec, TurnRequest
from bridge.config import ConfigError
from bridge.demo import DemoModel
from bridge.worker.launch import (
    TOLERATED_WHY,
    CodexFlavor,
    worker_argv,
    write_bridge_config,
)
from bridge.worker.supervisor import Worker, WorkerConfig

log = structlog.get_logger("bridge.selfcheck")

# Starting the probe worker and running its turns takes about a second; this
# bounds a worker that never becomes ready or a turn that never ends.
SELFCHECK_TIMEOUT_S: Final = 90.0
PROBE_PROVIDER: Final = "codexbridge-selfcheck"
PROBE_TOOL: Final = ToolSpec(
    name="codex_bridge_selfcheck_probe",
    description="A client tool; the self-check expects to find it in the request.",
    parameters={"type": "object", "properties": {}},
)
PROBE_INPUT: Final = "codex-bridge startup self-check"
# Names under which Codex offers tools that read the host or the web.
VIEW_IMAGE_TOOLS: Final = frozenset({"view_image"})
WEB_SEARCH_TOOLS: Final = frozenset({"web_search", "web_search_preview"})


class SelfCheckFailed(ConfigError):
    """The worker configuration offers the model tools the profile promises it does not have."""


def offered_tools(body: dict[str, Any]) -> list[str]:
    """Tool names in an upstream Responses request (hosted tools by their type)."""
    names: list[str] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            names.append(str(tool.get("name") or tool.get("type")))
    return names


def forbidden_tools(
    offered: Sequence[str],
    flavor: CodexFlavor,
    *,
    profile: str,
    agent_view_image: bool = False,
    agent_web_search: bool = False,
) -> list[str]:
    if profile == "plain":
        allowed = {PROBE_TOOL.name, *flavor.tolerated_plain_tools}
        return sorted({name for name in offered if name not in allowed})
    banned: set[str] = set()
    if not agent_view_image:
        banned |= VIEW_IMAGE_TOOLS
    if not agent_web_search:
        banned |= WEB_SEARCH_TOOLS
    return sorted({name for name in offered if name in banned})


async def check_worker_tools(
    config: WorkerConfig,
    flavor: CodexFlavor,
    *,
    codex_bin: str,
    overrides: Sequence[str],
    models: Sequence[str | None],
    agent_view_image: bool = False,
    agent_web_search: bool = False,
) -> list[str]:
    """Runs the probe; returns the tools seen. Raises SelfCheckFailed when the profile's
    promise does not hold or cannot be verified."""
    capture = DemoModel()
    await capture.start()
    scratch = Path(tempfile.mkdtemp(prefix="codex-bridge-selfcheck-"))
    worker: Worker | None = None
    try:
        probe_config = _probe_config(config, flavor, codex_bin, overrides, capture, scratch)
        worker = Worker(-1, probe_config, driver=codex_driver(probe_config))
        async with asyncio.timeout(SELFCHECK_TIMEOUT_S):
            worker.start()
            if not await worker.wait_ready(SELFCHECK_TIMEOUT_S):
                raise SelfCheckFailed("the self-check's probe worker never became ready")
            seen: list[str] = []
            for model in dict.fromkeys(models):
                seen += await _probe_turn(worker, capture, model)
    except TimeoutError:
        raise SelfCheckFailed(
            f"the startup self-check did not finish within {SELFCHECK_TIMEOUT_S:g}s"
        ) from None
    finally:
        if worker is not None:
            await worker.stop()
        await capture.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    bad = forbidden_tools(
        seen,
        flavor,
        profile=config.profile,
        agent_view_image=agent_view_image,
        agent_web_search=agent_web_search,
    )
    if bad:
        raise SelfCheckFailed(
            f"refusing to serve the {config.profile} profile: Codex (settings for "
            f"{flavor.name}) still offers the model {', '.join(bad)}. Check "
            "codex.config_overrides for settings that turn them back on, or whether this "
            "Codex release renamed its feature switches (docs/codex-upgrades.md)."
        )
    tolerated = sorted(set(seen) & set(TOLERATED_WHY))
    log.info(
        "self-check passed",
        profile=config.profile,
        codex=flavor.name,
        tools=sorted(set(seen)),
        tolerated={name: TOLERATED_WHY[name] for name in tolerated},
    )
    return sorted(set(seen))


def _probe_config(
    config: WorkerConfig,
    flavor: CodexFlavor,
    codex_bin: str,
    overrides: Sequence[str],
    capture: DemoModel,
    scratch: Path,
) -> WorkerConfig:
    # The capture provider comes last so it wins over any operator provider; the
    # model stays the configured one (its family decides some tools).
    provider = capture.codex_config_overrides(PROBE_PROVIDER)
    if any(item.partition("=")[0].strip() == "model" for item in overrides):
        provider = [item for item in provider if item.partition("=")[0].strip() != "model"]
    probe_overrides = [*overrides, *provider]
    env = dict(config.env)
    env[DemoModel.API_KEY_ENV] = DemoModel.API_KEY_VALUE
    if not flavor.honours_cli_overrides:
        home = scratch / "codex-home"
        home.mkdir(mode=0o700)
        write_bridge_config(home, probe_overrides)
        env["CODEX_HOME"] = str(home)
    workdir = scratch / "workdir"
    workdir.mkdir(mode=0o700)
    return dataclasses.replace(
        config,
        argv=worker_argv(codex_bin, probe_overrides),
        env=env,
        workdir=workdir,
        message_hook=None,
        # A failed probe is reported, not retried.
        backoff_initial_s=SELFCHECK_TIMEOUT_S,
    )


async def _probe_turn(worker: Worker, capture: DemoModel, model: str | None) -> list[str]:
    before = len(capture.requests)
    # v1 cannot carry client tools; it refuses them with a 400.
    tools = (PROBE_TOOL,) if worker.dialect == "v2" else ()
    request = TurnRequest(
        input=PROBE_INPUT, model=model, instructions="Reply briefly.", tools=tools
    )
    try:
        turn = await start_turn(worker, request)
    except Exception as exc:
        raise SelfCheckFailed(f"the self-check's probe turn could not start: {exc}") from exc
    try:
        while True:
            event = await turn.next_event()
            if isinstance(event, (Finished, Failed)):
                break
    finally:
        await turn.aclose()
    requests = capture.requests[before:]
    if not requests:
        raise SelfCheckFailed(
            "the self-check's probe turn never reached its capture server, so the tools "
            "offered to the model cannot be verified (is the provider forced elsewhere?)"
        )
    seen = offered_tools(requests[0])
    if tools and PROBE_TOOL.name not in seen:
        raise SelfCheckFailed("the self-check's probe tool was not in the model's request")
    return seen
