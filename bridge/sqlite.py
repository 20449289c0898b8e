"""One SQLite connection owned by one thread: every call runs there, in order.

asyncio.to_thread on a shared connection is unsafe: cancelling the awaiting
task does not stop the thread, so a later close() can free the connection
under a statement still running (a segfault, seen in the test suite). Here
the connection is opened, used and closed on a single worker thread, so a
cancelled caller's statement simply finishes before anything after it.
The file and its -wal/-shm are 0600 whatever the umask (`ops/statedir.py`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from bridge.ops.statedir import PRIVATE_DIR_MODE, private_sqlite_files

T = TypeVar("T")


class SqliteThread:
    def __init__(self, path: Path, schema: str) -> None:
        # Created private; an existing directory (perhaps the operator's, for store.path) is
        # left as it is: the state directory itself is tightened by ops/statedir.py.
        path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        private_sqlite_files(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db = self._executor.submit(self._open, path, schema).result()

    @staticmethod
    def _open(path: Path, schema: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # WAL's recommended level: no fsync per commit (one per checkpoint), still
        # never corrupt; a power cut may lose the last commits (usage rows, stored
        # responses), not the file. An fsync per request was the bridge's largest
        # single cost after socket writes in the c=1 profile.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
        return db

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, work, self._db)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=True)
