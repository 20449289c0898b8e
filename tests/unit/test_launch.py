"""Worker launch: per-version Codex settings, the bridge-owned config.toml, the allow-listed environment."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from bridge.codex import v1, v2
from bridge.codex.selfcheck import PROBE_TOOL, forbidden_tools, offered_tools
from bridge.codex.turn import TurnRequest
from bridge.codex.v2 import ThreadSettings
from bridge.config import ConfigError
from bridge.worker.launch import (
    CONFIG_MARKER,
    CURRENT,
    LEGACY,
    CodexFlavor,
    flavor_for,
    parse_version,
    provider_env_keys,
    remove_bridge_config,
    render_config_toml,
    worker_argv,
    worker_env,
    worker_overrides,
    write_bridge_config,
)


def test_version_is_read_from_codex_version_output() -> None:
    assert parse_version("codex-cli 0.163.0\n") == (0, 163, 0)
    assert parse_version("codex-cli 0.77.0") == (0, 77, 0)
    with pytest.raises(ValueError):
        parse_version("codex-cli dev")


def test_settings_are_chosen_by_the_binary_version_when_it_is_legacy_or_current() -> None:
    assert flavor_for((0, 77, 0)) is LEGACY
    assert flavor_for((0, 100, 2)) is LEGACY
    assert flavor_for((0, 163, 0)) is CURRENT
    assert flavor_for((1, 2, 3)) is CURRENT
    with pytest.raises(ConfigError, match="older than the oldest supported"):
        flavor_for((0, 60, 0))


def test_plain_on_codex_0_77_switches_off_its_own_tool_names() -> None:
    overrides = worker_overrides(LEGACY, profile="plain")
    for switch in (
        "features.shell_tool=false",
        "features.view_image_tool=false",
        "features.web_search_request=false",
        "features.skills=false",
        "features.unified_exec=false",
    ):
        assert switch in overrides
    # 0.163 names would be silently ignored by 0.77.
    assert "features.view_image=false" not in overrides


def test_plain_on_current_codex_drops_codex_scaffolding_from_the_prompt() -> None:
    overrides = worker_overrides(CURRENT, profile="plain")
    for switch in (
        "include_permissions_instructions=false",
        "include_environment_context=false",
        "include_apps_instructions=false",
        "skills.include_instructions=false",
        "tools.experimental_request_user_input.enabled=false",
        "features.shell_tool=false",
        "features.view_image=false",
    ):
        assert switch in overrides


@pytest.mark.parametrize("flavor", [LEGACY, CURRENT], ids=["0.77", "0.163"])
def test_agent_profile_has_no_view_image_or_web_search_unless_the_operator_opts_in(
    flavor: CodexFlavor,
) -> None:
    f = flavor
    default = worker_overrides(f, profile="agent")
    assert set(f.view_image_off) <= set(default)
    assert set(f.web_search_off) <= set(default)
    opted = worker_overrides(f, profile="agent", agent_view_image=True, agent_web_search=True)
    assert not set(f.view_image_off) & set(opted)
    assert not set(f.web_search_off) & set(opted)


def test_operator_overrides_come_last_so_they_win() -> None:
    overrides = worker_overrides(
        CURRENT, profile="plain", provider=['model="demo"'], operator=['model="mine"']
    )
    assert overrides[-2:] == ['model="demo"', 'model="mine"']
    argv = worker_argv("/bin/codex", overrides)
    assert argv[0] == "/bin/codex" and argv[-1] == "app-server"
    assert argv[-3:-1] == ["-c", 'model="mine"']


def test_config_toml_keeps_the_last_value_of_each_key_and_quotes_bare_strings() -> None:
    text = render_config_toml(
        [
            'model="a"',
            "model=gpt-5",
            "features.shell_tool=false",
            'model_providers.my-llm.base_url="http://127.0.0.1:9/v1"',
            "model_providers.my-llm.request_max_retries=0",
        ]
    )
    assert text.startswith(CONFIG_MARKER + "\n")
    parsed = tomllib.loads(text)
    assert parsed["model"] == "gpt-5"
    assert parsed["features"] == {"shell_tool": False}
    assert parsed["model_providers"]["my-llm"]["request_max_retries"] == 0


def test_config_toml_that_codex_could_not_read_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"codex\.config_overrides"):
        render_config_toml(["tools=1", "tools.view_image=false"])


def test_bridge_config_is_written_private_and_replaced_on_the_next_start(tmp_path: Path) -> None:
    path = write_bridge_config(tmp_path, ['model="one"'])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_bridge_config(tmp_path, ['model="two"'])
    assert tomllib.loads(path.read_text())["model"] == "two"
    remove_bridge_config(tmp_path)
    assert not path.exists()


def test_operator_config_toml_is_never_clobbered_when_codex_ignores_cli_overrides(
    tmp_path: Path,
) -> None:
    own = tmp_path / "config.toml"
    own.write_text('model = "operator"\n')
    with pytest.raises(ConfigError, match="not managed by codex-bridge"):
        write_bridge_config(tmp_path, ['model="bridge"'])
    remove_bridge_config(tmp_path)
    assert own.read_text() == 'model = "operator"\n'


def test_old_demo_config_is_recognised_as_the_bridges_own(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '# Written by codex-bridge --demo; replaced on every demo start.\nmodel="x"\n'
    )
    write_bridge_config(tmp_path, ['model="y"'])
    assert tomllib.loads((tmp_path / "config.toml").read_text())["model"] == "y"


def test_worker_environment_is_an_allow_list_that_never_carries_bridge_secrets(
    tmp_path: Path,
) -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "SSL_CERT_FILE": "/etc/ssl/cert.pem",
        "CREDENTIALS_DIRECTORY": "/run/credentials/codex-bridge.service",
        "STATE_DIRECTORY": "/var/lib/codex-bridge",
        "BRIDGE_API_KEYS": "sk-secret",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "1",
        "AWS_SECRET_ACCESS_KEY": "nope",
        "MY_PROVIDER_KEY": "pk",
        "OPERATOR_EXTRA": "yes",
    }
    env = worker_env(
        base,
        codex_home=tmp_path,
        passthrough=["MY_PROVIDER_KEY", "OPERATOR_EXTRA", "CREDENTIALS_DIRECTORY", "BRIDGE_X"],
    )
    assert env["CODEX_HOME"] == str(tmp_path)
    for kept in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE"):
        assert env[kept] == base[kept]
    assert env["MY_PROVIDER_KEY"] == "pk" and env["OPERATOR_EXTRA"] == "yes"
    for dropped in (
        "CREDENTIALS_DIRECTORY",
        "STATE_DIRECTORY",
        "BRIDGE_API_KEYS",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert dropped not in env


def test_provider_env_key_settings_name_the_variables_a_worker_needs() -> None:
    assert provider_env_keys(
        [
            'model_providers.demo.env_key="CODEX_BRIDGE_DEMO_KEY"',
            "model_providers.other.env_key=OTHER_KEY",
            'model="x"',
        ]
    ) == {"CODEX_BRIDGE_DEMO_KEY", "OTHER_KEY"}


def test_self_check_refuses_plain_for_any_tool_but_the_clients_and_tolerated_ones() -> None:
    offered = offered_tools(
        {
            "tools": [
                {"type": "function", "name": PROBE_TOOL.name},
                {"type": "function", "name": "update_plan"},
                {"type": "function", "name": "shell_command"},
                {"type": "web_search"},
            ]
        }
    )
    assert forbidden_tools(offered, LEGACY, profile="plain") == ["shell_command", "web_search"]
    assert forbidden_tools(offered, CURRENT, profile="plain") == [
        "shell_command",
        "update_plan",
        "web_search",
    ]
    assert forbidden_tools(offered, CURRENT, profile="agent") == ["web_search"]
    assert forbidden_tools(offered, CURRENT, profile="agent", agent_web_search=True) == []


def test_plain_threads_ask_for_approval_so_the_bridge_can_decline() -> None:
    plain = ThreadSettings(profile="plain", cwd="/srv/codex-bridge/worker-0", rpc_timeout_s=1.0)
    request = TurnRequest(input="hi")
    assert v2.thread_start_params(request, plain)["approvalPolicy"] == "untrusted"
    conversation = v1.conversation_params(request, plain)
    assert conversation["approvalPolicy"] == "untrusted"
    # 0.77 always tells the model its cwd: in plain that says nothing about the host.
    assert conversation["cwd"] == "/"
