"""Host safety of the worker launch, on both Codex versions the bridge accepts (0.163 and 0.77).

A model (the demo model plays a compromised upstream) that issues shell
commands or file reads gets nothing from the host in the plain profile; the
startup self-check refuses a configuration that would offer host tools; the
agent profile has no view_image or web search unless the operator opts in;
workers get an allow-listed environment; the plain prompt carries nothing
of the host or of Codex; operator provider overrides reach 0.77 through a
bridge-owned config.toml.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from bridge.app import make_app
from bridge.codex.selfcheck import SelfCheckFailed
from bridge.config import ConfigError
from bridge.demo import DEMO_MODEL_ID, DemoModel
from tests.harness import RunningBridge, bridge_test_settings, running_bridge
from tests.processes import clean_env, run_to_exit, serve_argv

LEGACY_CODEX = (
    Path(__file__).resolve().parents[2] / ".codex-legacy" / "node_modules" / ".bin" / "codex"
)
SECRET = "host-secret-5e1f0c"
# A refused start spawns Codex twice (version, self-check probe); generous for a busy box.
REFUSAL_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def host_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A readable file with a secret, and a path a command would create."""
    root = tmp_path_factory.mktemp("host")
    secret = root / "api-keys"
    secret.write_text(SECRET + "\n")
    return secret, root / "pwned"


@pytest.fixture(scope="module")
async def legacy_plain(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBridge]:
    assert LEGACY_CODEX.exists(), "scripts/setup installs Codex 0.77.0 into .codex-legacy/"
    settings = bridge_test_settings(
        tmp_path_factory.mktemp("legacy-plain"), **{"codex.bin": str(LEGACY_CODEX)}
    )
    async with running_bridge(settings) as bridge:
        yield bridge


def _exists(path: Path) -> bool:
    return path.exists()


def _proc_environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


async def _chat(bridge: RunningBridge, messages: list[dict[str, Any]], **extra: Any) -> Any:
    async with openai.AsyncOpenAI(
        base_url=f"{bridge.base_url}/v1", api_key="unused", max_retries=0
    ) as client:
        return await client.chat.completions.create(model=DEMO_MODEL_ID, messages=messages, **extra)


def _commands(secret: Path, marker: Path) -> list[str]:
    """Model-issued host actions, one demo directive each, in every tool name Codex uses."""
    script = f"cat {secret}; touch {marker}"
    calls = [
        ("shell_command", {"command": script}),
        ("shell", {"command": ["bash", "-c", script]}),
        ("local_shell", {"command": ["bash", "-c", script]}),
        ("exec_command", {"cmd": script}),
        ("view_image", {"path": str(secret)}),
    ]
    return [f"[[tool={name}]][[args={json.dumps(args)}]]" for name, args in calls]


async def _assert_no_host_action(bridge: RunningBridge, secret: Path, marker: Path) -> None:
    before = len(bridge.demo.requests)
    for directive in _commands(secret, marker):
        completion = await _chat(bridge, [{"role": "user", "content": directive}])
        reply = completion.choices[0].message.content or ""
        assert reply.startswith("Tool results:"), reply  # the model's call was answered...
        assert SECRET not in reply  # ...without the file reaching the client
    upstream = orjson.dumps(bridge.demo.requests[before:]).decode()
    assert SECRET not in upstream  # nor the model
    assert not _exists(marker)  # and no command ran


async def test_model_issued_commands_never_run_when_plain_on_codex_0_77(
    legacy_plain: RunningBridge, host_files: tuple[Path, Path]
) -> None:
    await _assert_no_host_action(legacy_plain, *host_files)


async def test_model_issued_commands_never_run_when_plain_on_codex_0_163(
    bridge: RunningBridge, host_files: tuple[Path, Path]
) -> None:
    await _assert_no_host_action(bridge, *host_files)
    # The shell directive is 0.163's own tool call (unified exec).
    secret, marker = host_files
    completion = await _chat(
        bridge, [{"role": "user", "content": f"[[shell=cat {secret}; touch {marker}]]"}]
    )
    assert SECRET not in (completion.choices[0].message.content or "")
    assert not _exists(marker)


async def test_plain_refuses_to_start_when_an_override_turns_a_host_tool_back_on_on_0_77(
    tmp_path: Path,
) -> None:
    settings = bridge_test_settings(
        tmp_path / "home",
        **{"codex.bin": str(LEGACY_CODEX), "codex.config_overrides": ("features.shell_tool=true",)},
    )
    runner = web.AppRunner(make_app(settings))
    try:
        with pytest.raises(SelfCheckFailed, match="shell_command"):
            async with asyncio.timeout(REFUSAL_TIMEOUT_S):
                await runner.setup()
    finally:
        await runner.cleanup()


async def test_daemon_exits_2_when_the_self_check_finds_host_tools_in_plain_on_0_163(
    tmp_path: Path,
) -> None:
    argv = serve_argv(
        tmp_path / "state", tmp_path / "home", "--codex-config", "features.view_image=true"
    )
    code, out, err = await run_to_exit(argv, env=clean_env(), timeout_s=REFUSAL_TIMEOUT_S)
    assert code == 2, out + err
    lines = (out + err).splitlines()
    refusal = [orjson.loads(line) for line in lines if "refusing to start" in line]
    assert refusal and "view_image" in refusal[0]["reason"]


async def test_operator_config_toml_stops_a_0_77_start_instead_of_being_overwritten(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('model = "operator-choice"\n')
    settings = bridge_test_settings(home, **{"codex.bin": str(LEGACY_CODEX)})
    runner = web.AppRunner(make_app(settings))
    try:
        with pytest.raises(ConfigError, match="not managed by codex-bridge"):
            await runner.setup()
    finally:
        await runner.cleanup()
    assert (home / "config.toml").read_text() == 'model = "operator-choice"\n'


@pytest.mark.parametrize("legacy", [False, True], ids=["0.163", "0.77"])
async def test_agent_profile_offers_no_view_image_or_web_search_by_default(
    tmp_path: Path, legacy: bool
) -> None:
    overrides: dict[str, Any] = {"codex.profile": "agent"}
    if legacy:
        overrides["codex.bin"] = str(LEGACY_CODEX)
    async with running_bridge(bridge_test_settings(tmp_path / "home", **overrides)) as agent:
        completion = await _chat(agent, [{"role": "user", "content": "[[reply=agent]]"}])
        assert completion.choices[0].message.content == "agent"
        tools = {str(t.get("name") or t.get("type")) for t in agent.demo.requests[-1]["tools"]}
    assert tools, "the agent profile keeps Codex's own tools"
    assert not tools & {"view_image", "web_search", "web_search_preview"}


async def test_agent_profile_offers_view_image_and_web_search_when_the_operator_opts_in(
    tmp_path: Path,
) -> None:
    settings = bridge_test_settings(
        tmp_path / "home",
        **{
            "codex.profile": "agent",
            "codex.agent_view_image": True,
            "codex.agent_web_search": True,
        },
    )
    async with running_bridge(settings) as agent:
        await _chat(agent, [{"role": "user", "content": "[[reply=agent]]"}])
        tools = {str(t.get("name") or t.get("type")) for t in agent.demo.requests[-1]["tools"]}
    assert {"view_image", "web_search"} <= tools


ONE_LINE_CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello"},
]
CLIENT_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _host_paths(bridge: RunningBridge, tmp_root: Path) -> list[str]:
    worker = bridge.pool.workers[0]
    return [str(worker.config.workdir), str(bridge.settings.codex.home), str(tmp_root)]


async def test_plain_upstream_request_holds_only_the_clients_instructions_messages_and_tools(
    bridge: RunningBridge, tmp_path_factory: pytest.TempPathFactory
) -> None:
    before = len(bridge.demo.requests)
    await _chat(bridge, ONE_LINE_CHAT, tools=[CLIENT_TOOL])
    body = bridge.demo.requests[before]
    messages = [
        (item["role"], [part["text"] for part in item["content"]])
        for item in body["input"]
        if item.get("type") == "message"
    ]
    assert messages == [("developer", ["Be brief."]), ("user", ["Hello"])]
    assert [tool["name"] for tool in body["tools"]] == ["get_weather"]
    serialized = orjson.dumps(body).decode()
    for scaffolding in (
        "<skills_instructions>",
        "<permissions instructions>",
        "<environment_context>",
        "request_user_input",
        "collaboration",
    ):
        assert scaffolding not in serialized
    for path in _host_paths(bridge, tmp_path_factory.getbasetemp()):
        assert path not in serialized


async def test_plain_upstream_request_on_0_77_names_no_host_path(
    legacy_plain: RunningBridge, tmp_path_factory: pytest.TempPathFactory
) -> None:
    before = len(legacy_plain.demo.requests)
    await _chat(legacy_plain, ONE_LINE_CHAT)
    body = legacy_plain.demo.requests[before]
    assert body["instructions"] == "Be brief."
    serialized = orjson.dumps(body).decode()
    assert "AGENTS.md" not in serialized and "SKILL.md" not in serialized
    for path in _host_paths(legacy_plain, tmp_path_factory.getbasetemp()):
        assert path not in serialized
    # What 0.77 cannot drop: its <environment_context> (with cwd "/") and its
    # inert built-in tools (bridge/worker/launch.py: LEGACY.tolerated_plain_tools).
    tools = {tool["name"] for tool in body["tools"]}
    assert tools <= {
        "update_plan",
        "list_mcp_resources",
        "list_mcp_resource_templates",
        "read_mcp_resource",
        "apply_patch",
    }


@pytest.fixture
async def operator_provider() -> AsyncIterator[DemoModel]:
    model = DemoModel()
    await model.start()
    yield model
    await model.stop()


async def test_operator_provider_overrides_reach_the_model_on_0_77_and_workers_get_no_secrets(
    tmp_path: Path, operator_provider: DemoModel
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        DemoModel.API_KEY_ENV: DemoModel.API_KEY_VALUE,
        "CREDENTIALS_DIRECTORY": str(credentials),
        "STATE_DIRECTORY": str(tmp_path / "state"),
        "BRIDGE_UNRELATED": "bridge-only",
    }
    settings = bridge_test_settings(
        tmp_path / "home",
        **{
            "demo.enabled": False,
            "codex.bin": str(LEGACY_CODEX),
            "codex.models": ("codex-demo",),
            "codex.config_overrides": tuple(
                operator_provider.codex_config_overrides("operator-llm")
            ),
        },
    )
    async with running_bridge(settings, environ=environ) as legacy:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{legacy.base_url}/v1/chat/completions",
                json={
                    "model": "codex-demo",
                    "messages": [{"role": "user", "content": "[[reply=operator provider]]"}],
                },
            ) as response:
                body = await response.json()
        assert response.status == 200, body
        assert body["choices"][0]["message"]["content"] == "operator provider"
        assert operator_provider.requests, "the operator's provider was not used"
        pid = legacy.pool.workers[0].pid
        assert pid is not None
        raw = _proc_environ(pid)
    worker_env = dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)
    assert worker_env[DemoModel.API_KEY_ENV] == DemoModel.API_KEY_VALUE
    for name in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "BRIDGE_UNRELATED"):
        assert name not in worker_env
