"""This instance's place on disk: private modes, a one-time import, and the instance lock.

Where things go is resolved in `bridge/config.py` (`resolve_state_dir` and
friends); this module makes it so. Directories the bridge owns are 0700 and
its database files 0600 whatever the umask (an existing looser directory of
ours is tightened). A SQLite file that an earlier version kept beside an
explicit Codex home is copied into the state directory once. `InstanceLock`
holds an exclusive `flock` on a lock file inside the state directory and one
inside the Codex home for the life of the process, so a second instance on
either stops at startup with the holder's PID instead of wiping the first
one's worker directories. Knows files and locks; nothing of HTTP or Codex.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import structlog

from bridge.config import (
    ConfigError,
    Settings,
    resolve_accounts,
    resolve_codex_home,
    resolve_legacy_store_path,
    resolve_state_dir,
    resolve_store_path,
    resolve_workroot,
)

log = structlog.get_logger("bridge.statedir")

PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_FILE_MODE: Final = 0o600
STATE_LOCK_NAME: Final = "codex-bridge.lock"
# Hidden: the Codex home is Codex's directory, the bridge only borrows a name in it.
HOME_LOCK_NAME: Final = ".codex-bridge.lock"
SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")


class InstanceLocked(ConfigError):
    """Another process holds the state directory or the Codex home."""


@dataclass(frozen=True, slots=True)
class StateLayout:
    state_dir: Path
    codex_home: Path
    workroot: Path
    store_path: Path
    # The SQLite file of a pre-state-dir install, to import once; None when the layout is unchanged.
    legacy_store_path: Path | None
    # Each account's Codex home (`codex.accounts`); just `codex_home` without a pool.
    account_homes: tuple[Path, ...] = ()

    @property
    def homes(self) -> tuple[Path, ...]:
        """Every Codex home this instance's workers use, each once."""
        return tuple(dict.fromkeys(self.account_homes or (self.codex_home,)))

    @classmethod
    def resolve(cls, settings: Settings, env: Mapping[str, str] | None = None) -> StateLayout:
        return cls(
            state_dir=resolve_state_dir(settings, env),
            codex_home=resolve_codex_home(settings, env),
            workroot=resolve_workroot(settings, env),
            store_path=resolve_store_path(settings, env),
            legacy_store_path=resolve_legacy_store_path(settings, env),
            account_homes=tuple(home for _, home in resolve_accounts(settings, env)),
        )

    @property
    def codex_home_is_ours(self) -> bool:
        """The default Codex home, inside the state directory; an operator's keeps its mode."""
        return self.codex_home.is_relative_to(self.state_dir)


def private_dir(path: Path) -> Path:
    """Creates `path` 0700 (parents as the umask says); tightens it if it exists, is ours
    and lets group or others in. Someone else's directory is left as it is."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    _tighten(path, PRIVATE_DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Creates `path` empty and 0600 if missing, else tightens it like `private_dir`."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    _tighten(path, PRIVATE_FILE_MODE)
    return path


def private_sqlite_files(path: Path) -> None:
    """The database 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
    main file's mode, so they follow. Side files left by an earlier run are tightened too."""
    private_file(path)
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            _tighten(side, PRIVATE_FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    info = path.stat()
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != mode:
        path.chmod(mode)


def prepare_state(layout: StateLayout) -> None:
    """Creates the private directories and imports a legacy SQLite file; idempotent."""
    private_dir(layout.state_dir)
    if layout.codex_home_is_ours:
        private_dir(layout.codex_home)
    else:
        layout.codex_home.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    private_dir(layout.workroot)
    if layout.legacy_store_path is not None:
        import_legacy_store(layout.legacy_store_path, layout.store_path)


def import_legacy_store(legacy: Path, target: Path) -> bool:
    """Copies an earlier version's SQLite file into the state directory, once.

    A copy (SQLite's backup API), not a move: nothing outside the state
    directory is written, and an older instance still using the file keeps
    it. Skipped while the file has a -wal beside it (some process has it open
    or did not close it cleanly): the log says how to move it by hand.
    """
    if target.exists() or not legacy.is_file():
        return False
    if legacy.with_name(legacy.name + "-wal").exists():
        log.warning(
            "not importing an earlier version's database: it is in use or was not closed "
            "cleanly; stop every codex-bridge using it, then move it (with its -wal) by hand",
            legacy=str(legacy),
            target=str(target),
        )
        return False
    private_dir(target.parent)
    partial = private_file(target.with_name(target.name + ".importing"))
    # immutable=1: read without creating -shm/-wal files beside the legacy file.
    source = sqlite3.connect(f"file:{legacy}?immutable=1", uri=True)
    try:
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()
    os.replace(partial, target)
    log.warning(
        "imported the stored responses and usage ledger of an earlier version into the "
        "state directory; the old file is no longer used and can be deleted",
        legacy=str(legacy),
        target=str(target),
    )
    return True


class InstanceLock:
    """Exclusive flocks on the state directory and the Codex home, held until `release`.

    flock conflicts between open file descriptions, so a second lock in the
    same process is refused too. The descriptors are not inherited by the
    workers (Python opens them close-on-exec), so the lock dies with the
    bridge process, never held by an orphaned worker.
    """

    def __init__(self, layout: StateLayout) -> None:
        self._layout = layout
        self._fds: list[int] = []

    def acquire(self) -> None:
        for directory in (self._layout.state_dir, *self._layout.homes):
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
            except OSError as exc:
                raise ConfigError(f"cannot create {directory}: {exc.strerror}") from None
        _tighten(self._layout.state_dir, PRIVATE_DIR_MODE)
        try:
            self._fds.append(
                _lock(
                    self._layout.state_dir / STATE_LOCK_NAME,
                    f"state directory {self._layout.state_dir}",
                    "give each instance its own server.state_dir (--state-dir, BRIDGE_STATE_DIR)",
                )
            )
            for home in self._layout.homes:
                self._fds.append(
                    _lock(
                        home / HOME_LOCK_NAME,
                        f"Codex home {home}",
                        "give each instance its own codex.home (--codex-home, "
                        "BRIDGE_CODEX_HOME) and codex.accounts homes",
                    )
                )
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        while self._fds:
            os.close(self._fds.pop())  # closing the descriptor drops its flock

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _lock(path: Path, what: str, fix: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
        raise InstanceLocked(
            f"{what} is in use by another codex-bridge (PID {holder}, lock file {path}); {fix}"
        ) from None
    _tighten(path, PRIVATE_FILE_MODE)
    # The PID is written after the lock is ours, so a reader never sees a stale holder's.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def holder_pid(path: Path) -> str | None:
    """The PID of the process holding the lock file `path`, or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(fd)
    finally:
        os.close(fd)  # also drops the shared lock, if it was taken
    return None


def _read_pid(fd: int) -> str:
    """The holder's PID as written in the lock file; "unknown" in the instant before it is."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"
