"""Settings: layering, validation with clear messages, and the README table kept true."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config import (
    FIELDS,
    ConfigError,
    Settings,
    config_table_markdown,
    load_settings,
    resolve_codex_home,
    resolve_legacy_store_path,
    resolve_state_dir,
    resolve_store_path,
    resolve_workroot,
    worker_count,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_listen_on_loopback_8140_with_the_plain_profile() -> None:
    settings = load_settings(config_path=None, env={}, overrides={})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8140)
    assert settings.codex.profile == "plain"
    assert settings.codex.workers == 0  # one per CPU, at most 8 (worker_count)


def test_file_then_env_then_flags_each_win_over_the_previous(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('[server]\nport = 9001\nhost = "127.0.0.2"\n[codex]\nworkers = 3\n')
    env = {"BRIDGE_PORT": "9002", "BRIDGE_WORKERS": "2"}
    settings = load_settings(config_path=str(config), env=env, overrides={"server.port": 9003})
    assert settings.server.host == "127.0.0.2"  # file only
    assert settings.codex.workers == 2  # env over file
    assert settings.server.port == 9003  # flag over env


def test_config_path_can_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("[codex]\nworkers = 4\n")
    settings = load_settings(config_path=None, env={"BRIDGE_CONFIG": str(config)}, overrides={})
    assert settings.codex.workers == 4


def test_env_lists_are_split_and_model_aliases_parsed() -> None:
    env = {
        "BRIDGE_MODELS": "gpt-x, fast=gpt-6-mini",
        "BRIDGE_CODEX_CONFIG": 'model="m"\nmodel_provider="p"',
    }
    settings = load_settings(config_path=None, env=env, overrides={})
    assert [(m.id, m.codex_model) for m in settings.codex.models] == [
        ("gpt-x", None),
        ("fast", "gpt-6-mini"),
    ]
    assert settings.codex.config_overrides == ('model="m"', 'model_provider="p"')


@pytest.mark.parametrize(
    ("env", "overrides", "toml", "needle"),
    [
        ({"BRIDGE_PORT": "eighty"}, {}, None, "server.port (BRIDGE_PORT)"),
        ({}, {"server.port": 70000}, None, "server.port"),
        ({}, {"codex.profile": "root"}, None, "codex.profile"),
        ({}, {"codex.config_overrides": ["novalue"]}, None, "is not KEY=VALUE"),
        ({}, {}, "[server]\nbogus = 1\n", "unknown setting server.bogus"),
        ({}, {}, "not = [valid", "not valid TOML"),
    ],
)
def test_invalid_configuration_is_a_clear_config_error(
    tmp_path: Path, env: dict[str, str], overrides: dict[str, object], toml: str | None, needle: str
) -> None:
    path = None
    if toml is not None:
        path = tmp_path / "bad.toml"
        path.write_text(toml)
    with pytest.raises(ConfigError) as error:
        load_settings(config_path=str(path) if path else None, env=env, overrides=overrides)
    assert needle in str(error.value)


def test_missing_config_file_is_named() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_path="/nonexistent/bridge.toml", env={}, overrides={})


def test_cli_exits_2_with_a_message_on_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codex-bridge: error: invalid server.port")
    assert "Traceback" not in err


def test_cli_exits_2_on_unknown_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--no-such-flag"])
    assert exit_info.value.code == 2
    assert "codex-bridge: error:" in capsys.readouterr().err


def test_cli_flags_reach_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr("bridge.server.serve", lambda settings: seen.append(settings) or 0)
    code = main(
        [
            "serve",
            "--demo",
            "--port",
            "9100",
            "--codex-config",
            'a="b"',
            "--model",
            "x=y",
            "--profile",
            "agent",
            "--state-dir",
            str(tmp_path / "state"),
        ]
    )
    assert code == 0
    (settings,) = seen
    assert settings.demo.enabled
    assert settings.server.port == 9100
    assert settings.codex.config_overrides == ('a="b"',)
    assert settings.codex.models[0].codex_model == "y"
    assert settings.codex.profile == "agent"
    assert settings.server.state_dir == str(tmp_path / "state")


def test_codex_home_prefers_setting_then_systemd_state_directory_then_xdg() -> None:
    base = load_settings(config_path=None, env={}, overrides={})
    explicit = load_settings(config_path=None, env={}, overrides={"codex.home": "/srv/ch"})
    assert resolve_codex_home(explicit, {}) == Path("/srv/ch")
    assert resolve_codex_home(base, {"STATE_DIRECTORY": "/var/lib/cb:/x"}) == Path(
        "/var/lib/cb/codex-home"
    )
    assert resolve_codex_home(base, {"XDG_STATE_HOME": "/st"}) == Path(
        "/st/codex-bridge/codex-home"
    )


def test_every_setting_is_documented_once_and_nothing_else() -> None:
    fields = {
        f"{section}.{key}"
        for section, model in Settings.model_fields.items()
        for key in model.annotation.model_fields  # type: ignore[union-attr]
    }
    documented = [doc.dotted for doc in FIELDS]
    assert len(documented) == len(set(documented))
    assert set(documented) == fields
    assert len({doc.env for doc in FIELDS}) == len(FIELDS)


def test_readme_configuration_table_matches_the_code() -> None:
    readme = README.read_text()
    start = readme.index("<!-- config-table:start -->") + len("<!-- config-table:start -->")
    end = readme.index("<!-- config-table:end -->")
    assert readme[start:end].strip() == config_table_markdown(), (
        "README table is stale: regenerate it with scripts/sync-readme"
    )


def test_model_alias_can_imply_a_reasoning_effort() -> None:
    settings = load_settings(
        config_path=None, env={"BRIDGE_MODELS": "deep=gpt-6@high,plain"}, overrides={}
    )
    deep, plain = settings.codex.models
    assert (deep.id, deep.codex_model, deep.effort) == ("deep", "gpt-6", "high")
    assert (plain.codex_model, plain.effort) == (None, None)
    with pytest.raises(ConfigError, match="EFFORT"):
        load_settings(config_path=None, env={"BRIDGE_MODELS": "x=y@extreme"}, overrides={})


def test_relative_codex_bin_is_made_absolute_and_a_missing_one_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.config import resolve_codex_bin

    binary = tmp_path / "bin" / "codex"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(config_path=None, env={}, overrides={"codex.bin": "bin/codex"})
    assert resolve_codex_bin(settings) == str(binary)
    missing = load_settings(config_path=None, env={}, overrides={"codex.bin": "bin/nope"})
    with pytest.raises(ConfigError, match="not an executable"):
        resolve_codex_bin(missing)
    assert main(["serve", "--codex-bin", "bin/nope"]) == 2
    assert "codex.bin" in capsys.readouterr().err


def test_state_dir_prefers_setting_then_systemd_state_directory_then_xdg_then_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    base = load_settings(config_path=None, env={}, overrides={})
    explicit = load_settings(config_path=None, env={"BRIDGE_STATE_DIR": "/srv/s"}, overrides={})
    assert resolve_state_dir(explicit, {"STATE_DIRECTORY": "/var/lib/cb"}) == Path("/srv/s")
    assert resolve_state_dir(base, {"STATE_DIRECTORY": "/var/lib/cb:/x"}) == Path("/var/lib/cb")
    assert resolve_state_dir(base, {"XDG_STATE_HOME": "/st"}) == Path("/st/codex-bridge")
    # A relative XDG_STATE_HOME is invalid by the XDG spec and ignored.
    assert resolve_state_dir(base, {"XDG_STATE_HOME": "rel"}) == (
        tmp_path / ".local" / "state" / "codex-bridge"
    )


def test_codex_home_workdirs_and_database_default_into_the_state_dir_not_beside_the_home() -> None:
    """Two instances with sibling Codex homes used to share `<parent>/workdirs` and
    `<parent>/bridge.sqlite3`: now both follow the state directory."""
    a = load_settings(
        config_path=None,
        env={},
        overrides={"codex.home": "/srv/x/home-a", "server.state_dir": "/srv/state-a"},
    )
    assert resolve_codex_home(a, {}) == Path("/srv/x/home-a")
    assert resolve_workroot(a, {}) == Path("/srv/state-a/workdirs")
    assert resolve_store_path(a, {}) == Path("/srv/state-a/bridge.sqlite3")
    assert resolve_legacy_store_path(a, {}) == Path("/srv/x/bridge.sqlite3")
    only_state = load_settings(config_path=None, env={}, overrides={"server.state_dir": "/s"})
    assert resolve_codex_home(only_state, {}) == Path("/s/codex-home")
    assert resolve_legacy_store_path(only_state, {}) is None


def test_the_systemd_layout_is_unchanged_so_there_is_nothing_to_migrate() -> None:
    unit = load_settings(
        config_path=None,
        env={"BRIDGE_CODEX_HOME": "/var/lib/codex-bridge/codex-home"},
        overrides={},
    )
    env = {"STATE_DIRECTORY": "/var/lib/codex-bridge"}
    assert resolve_store_path(unit, env) == Path("/var/lib/codex-bridge/bridge.sqlite3")
    assert resolve_workroot(unit, env) == Path("/var/lib/codex-bridge/workdirs")
    assert resolve_legacy_store_path(unit, env) is None


def test_worker_count_follows_the_cpu_count_when_workers_is_zero() -> None:
    auto = load_settings(config_path=None, env={}, overrides={})
    assert auto.codex.workers == 0
    assert [worker_count(auto, cpus) for cpus in (1, 2, 3, 8, 64)] == [1, 2, 3, 8, 8]
    fixed = load_settings(config_path=None, env={"BRIDGE_WORKERS": "3"}, overrides={})
    assert worker_count(fixed, 2) == 3


@pytest.mark.parametrize("command", [["login", "--with-api-key"], ["logout"], ["account"]])
def test_account_commands_exit_2_naming_the_accounts_when_a_pool_is_configured_without_account(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(
        "BRIDGE_CODEX_ACCOUNTS", f"work={tmp_path / 'work'},home={tmp_path / 'home'}"
    )
    reached: list[str] = []
    monkeypatch.setattr("bridge.signin.run", lambda name, *_: reached.append(name) or 0)
    assert main([*command, "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    assert "--account" in err and "work, home" in err
    assert not reached  # codex.home, which no worker of the pool uses, is left alone
