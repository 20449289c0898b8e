"""The state directory on disk: private modes whatever the umask, the one-time import, the lock."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config import load_settings
from bridge.ops.statedir import (
    HOME_LOCK_NAME,
    STATE_LOCK_NAME,
    InstanceLock,
    InstanceLocked,
    StateLayout,
    prepare_state,
)
from bridge.sqlite import SqliteThread


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common default umask: without care, directories come out 0755 and files 0644."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def layout(tmp_path: Path, **overrides: str) -> StateLayout:
    values = {"server.state_dir": str(tmp_path / "state"), **overrides}
    return StateLayout.resolve(load_settings(config_path=None, env={}, overrides=values), {})


def layout_at(state_dir: Path, codex_home: Path) -> StateLayout:
    values = {"server.state_dir": str(state_dir), "codex.home": str(codex_home)}
    return StateLayout.resolve(load_settings(config_path=None, env={}, overrides=values), {})


@pytest.mark.usefixtures("loose_umask")
def test_state_directories_are_0700_when_the_umask_is_022(tmp_path: Path) -> None:
    state = layout(tmp_path)
    prepare_state(state)
    for directory in (state.state_dir, state.codex_home, state.workroot):
        assert mode(directory) == 0o700, directory


@pytest.mark.usefixtures("loose_umask")
def test_an_existing_0755_state_directory_of_ours_is_tightened_to_0700(tmp_path: Path) -> None:
    state = layout(tmp_path)
    (state.workroot).mkdir(parents=True)
    state.state_dir.chmod(0o755)
    state.workroot.chmod(0o755)
    prepare_state(state)
    assert mode(state.state_dir) == 0o700
    assert mode(state.workroot) == 0o700


@pytest.mark.usefixtures("loose_umask")
def test_an_operators_own_codex_home_keeps_its_mode(tmp_path: Path) -> None:
    home = tmp_path / "operator-home"
    home.mkdir(mode=0o750)
    home.chmod(0o750)
    prepare_state(layout(tmp_path, **{"codex.home": str(home)}))
    assert mode(home) == 0o750


@pytest.mark.usefixtures("loose_umask")
async def test_database_and_its_wal_and_shm_are_0600_when_the_umask_is_022(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "bridge.sqlite3"
    db = SqliteThread(path, "CREATE TABLE IF NOT EXISTS t (x INTEGER);")
    try:
        await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(path.parent) == 0o700
    finally:
        await db.close()


@pytest.mark.usefixtures("loose_umask")
async def test_an_existing_0644_database_from_an_earlier_version_is_tightened_to_0600(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bridge.sqlite3"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    wal = path.with_name(path.name + "-wal")
    wal.touch(mode=0o644)
    db = SqliteThread(path, "CREATE TABLE IF NOT EXISTS t (x INTEGER);")
    try:
        assert mode(path) == 0o600
        assert mode(wal) == 0o600
    finally:
        await db.close()


def test_a_second_lock_on_the_same_state_dir_is_refused_naming_the_holders_pid(
    tmp_path: Path,
) -> None:
    state = layout(tmp_path)
    with InstanceLock(state):
        assert (state.state_dir / STATE_LOCK_NAME).read_text().strip() == str(os.getpid())
        assert mode(state.state_dir / STATE_LOCK_NAME) == 0o600
        other = layout(tmp_path, **{"codex.home": str(tmp_path / "another-home")})
        with pytest.raises(InstanceLocked) as refused:
            InstanceLock(other).acquire()
        assert f"PID {os.getpid()}" in str(refused.value)
        assert "state directory" in str(refused.value)
    # Released with the context: a new instance may take it.
    with InstanceLock(state):
        pass


def test_a_second_lock_on_the_same_codex_home_is_refused_and_takes_nothing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "shared-home"
    with InstanceLock(layout_at(tmp_path / "state-a", home)):
        with pytest.raises(InstanceLocked, match=rf"Codex home .* \(PID {os.getpid()},"):
            InstanceLock(layout_at(tmp_path / "state-b", home)).acquire()
        # The refused instance let go of the state directory it had locked first.
        with InstanceLock(layout_at(tmp_path / "state-b", tmp_path / "home-b")):
            pass
    assert (home / HOME_LOCK_NAME).read_text().strip() == str(os.getpid())


def _legacy_install(tmp_path: Path) -> tuple[StateLayout, Path]:
    home = tmp_path / "srv" / "home-a"
    home.mkdir(parents=True)
    legacy = home.parent / "bridge.sqlite3"
    db = sqlite3.connect(legacy)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE responses (id TEXT)")
    db.execute("INSERT INTO responses VALUES ('resp_old')")
    db.commit()
    db.close()
    return layout(tmp_path, **{"codex.home": str(home)}), legacy


@pytest.mark.usefixtures("loose_umask")
def test_an_earlier_versions_database_beside_the_codex_home_is_imported_once(
    tmp_path: Path,
) -> None:
    state, legacy = _legacy_install(tmp_path)
    assert state.legacy_store_path == legacy
    before = sorted(p.name for p in legacy.parent.iterdir())
    prepare_state(state)
    copied = sqlite3.connect(state.store_path)
    assert copied.execute("SELECT id FROM responses").fetchall() == [("resp_old",)]
    copied.execute("DELETE FROM responses")
    copied.commit()
    copied.close()
    assert mode(state.store_path) == 0o600
    # Nothing written beside the legacy file, and a second start does not import again.
    assert sorted(p.name for p in legacy.parent.iterdir()) == before
    prepare_state(state)
    again = sqlite3.connect(state.store_path)
    assert again.execute("SELECT id FROM responses").fetchall() == []
    again.close()


def test_a_legacy_database_still_in_use_is_not_imported(tmp_path: Path) -> None:
    state, legacy = _legacy_install(tmp_path)
    holder = sqlite3.connect(legacy)  # an old instance still running: its -wal exists
    try:
        holder.execute("INSERT INTO responses VALUES ('resp_new')")
        holder.commit()
        assert legacy.with_name(legacy.name + "-wal").exists()
        prepare_state(state)
        assert not state.store_path.exists()
    finally:
        holder.close()
