"""SQLite read-only or full: requests are still answered, the failure is logged and counted.

Tests run as root, so file modes cannot make a database read-only; faults
are injected through the open connection instead: `PRAGMA query_only=ON`
(every write fails with SQLITE_READONLY) and `PRAGMA max_page_count` at the
current size (a write that needs a new page fails with SQLITE_FULL). The
store and the ledger each own their connection; the pragma applies to it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bridge.api.middleware import METRICS
from bridge.api.stored_responses import STORE
from bridge.demo import DEMO_MODEL_ID
from bridge.ops.access import AccessRecord
from bridge.ops.usage import USAGE, UsageLedger, UsageRow, row_for
from bridge.sqlite import SqliteThread
from tests.harness import RunningBridge, bridge_test_settings, running_bridge, wait_until

WAIT_S = 20.0
DAY_S = 86_400


def _row(key: str = "k", tokens: int = 1) -> UsageRow:
    return UsageRow(0.0, key, "m", "/v1/chat/completions", 200, tokens, 0, tokens, 0)


def _connection(owner: Any) -> SqliteThread:
    db = owner._db  # the store's / ledger's own connection: where a fault is injected
    assert isinstance(db, SqliteThread)
    return db


async def _pragma(owner: Any, sql: str) -> None:
    await _connection(owner).run(lambda db: db.execute(sql))


async def _fill(owner: Any) -> None:
    """No room for another page: the next write that needs one fails with SQLITE_FULL."""

    def work(db: sqlite3.Connection) -> None:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")

    await _connection(owner).run(work)


async def _rows(ledger: UsageLedger, start: int = 0) -> int:
    """Rows of the day that begins at `start` (unix seconds)."""
    await ledger.flush()
    buckets = await ledger.buckets(start, start + DAY_S, None)
    return sum(r["num_model_requests"] for b in buckets for r in b["results"])


async def test_the_ledger_writer_survives_and_counts_the_failure_when_the_database_is_read_only(
    tmp_path: Path,
) -> None:
    errors: list[str] = []
    ledger = UsageLedger(tmp_path / "bridge.sqlite3", on_error=errors.append)
    ledger.start()
    try:
        await _pragma(ledger, "PRAGMA query_only=ON")
        ledger.record(_row())
        await wait_until(lambda: errors == ["insert"], timeout=WAIT_S)
        await _pragma(ledger, "PRAGMA query_only=OFF")
        # The writer task lives on: the next row is written by it.
        ledger.record(_row())
        await wait_until(lambda: ledger._queue.empty(), timeout=WAIT_S)
        assert await _rows(ledger) == 1
        assert errors == ["insert"]
    finally:
        await ledger.close()


async def test_the_ledger_writer_survives_and_counts_the_failure_when_the_database_is_full(
    tmp_path: Path,
) -> None:
    errors: list[str] = []
    ledger = UsageLedger(tmp_path / "bridge.sqlite3", on_error=errors.append)
    ledger.start()
    try:
        await _fill(ledger)
        for i in range(64):  # long key names: the batch needs pages the file may not grow
            ledger.record(_row(key=f"{i}-" + "k" * 2000))
        await wait_until(lambda: "insert" in errors, timeout=WAIT_S)
        await _pragma(ledger, "PRAGMA max_page_count = 1073741823")
        ledger.record(_row(key="after"))
        await wait_until(lambda: ledger._queue.empty(), timeout=WAIT_S)
        assert await _rows(ledger) >= 1
    finally:
        await ledger.close()


async def test_closing_the_ledger_never_raises_when_its_database_is_already_gone(
    tmp_path: Path,
) -> None:
    ledger = UsageLedger(tmp_path / "bridge.sqlite3")
    ledger.start()
    ledger.record(_row())
    await _connection(ledger).close()  # the connection and its thread are gone under it
    ledger.record(_row())
    await ledger.close()


async def test_odd_token_counts_become_bindable_integers_when_a_row_is_made() -> None:
    record = AccessRecord(request_id="r", started=0.0, model="m", turns=1)
    record.prompt_tokens = 2**70
    record.completion_tokens = float("nan")  # type: ignore[assignment]
    record.cached_tokens = None  # type: ignore[assignment]
    record.reasoning_tokens = 3.7  # type: ignore[assignment]
    row = row_for(record, "/v1/chat/completions", 200)
    assert row is not None
    assert (row.input_tokens, row.output_tokens, row.cached_tokens, row.reasoning_tokens) == (
        2**63 - 1,
        0,
        0,
        3,
    )
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a INTEGER NOT NULL, b INTEGER NOT NULL, c INTEGER NOT NULL)")
    db.execute("INSERT INTO t VALUES (?, ?, ?)", (row.input_tokens, row.cached_tokens, row.status))


def _store_errors(bridge: RunningBridge, store: str, op: str) -> float:
    return sum(
        s.value
        for m in bridge.app[METRICS].store_errors.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels == {"store": store, "op": op}
    )


def _counted(bridge: RunningBridge, store: str, op: str) -> Callable[[], bool]:
    return lambda: _store_errors(bridge, store, op) >= 1


async def test_requests_are_answered_and_failures_counted_when_the_database_is_read_only(
    tmp_path: Path,
) -> None:
    settings = bridge_test_settings(tmp_path / "home")
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        url = bridge.base_url
        body = {"model": DEMO_MODEL_ID, "input": "[[reply=kept]]", "store": True}
        async with http.post(f"{url}/v1/responses", json=body) as r:
            assert r.status == 200
            kept = (await r.json())["id"]
        await _pragma(bridge.app[STORE], "PRAGMA query_only=ON")
        await _pragma(bridge.app[USAGE], "PRAGMA query_only=ON")

        # A response that cannot be stored is still answered.
        async with http.post(f"{url}/v1/responses", json={**body, "input": "[[reply=lost]]"}) as r:
            assert r.status == 200
            answered = await r.json()
        assert answered["output"][0]["content"][0]["text"] == "lost"
        assert _store_errors(bridge, "responses", "put") == 1
        # Reads still work; a delete the store cannot make is a 503, not a 500.
        async with http.get(f"{url}/v1/responses/{kept}") as r:
            assert r.status == 200
        async with http.delete(f"{url}/v1/responses/{kept}") as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "store_unavailable"
            assert "Retry-After" in r.headers
        # Chat is answered while its usage row cannot be written; the writer lives on.
        chat = {"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": "[[reply=hi]]"}]}
        async with http.post(f"{url}/v1/chat/completions", json=chat) as r:
            assert r.status == 200
        await wait_until(_counted(bridge, "usage", "insert"), timeout=WAIT_S)

        await _pragma(bridge.app[STORE], "PRAGMA query_only=OFF")
        await _pragma(bridge.app[USAGE], "PRAGMA query_only=OFF")
        async with http.delete(f"{url}/v1/responses/{kept}") as r:
            assert r.status == 200
        now = int(time.time())
        today = now - now % DAY_S
        before = await _rows(bridge.app[USAGE], today)
        async with http.post(f"{url}/v1/chat/completions", json=chat) as r:
            assert r.status == 200
        await wait_until(lambda: bridge.app[USAGE]._queue.empty(), timeout=WAIT_S)
        assert await _rows(bridge.app[USAGE], today) > before


async def test_a_response_is_answered_and_the_failure_counted_when_the_store_is_full(
    tmp_path: Path,
) -> None:
    settings = bridge_test_settings(tmp_path / "home")
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        await _fill(bridge.app[STORE])
        # A long reply: its stored body needs pages the file may not grow.
        body = {"model": DEMO_MODEL_ID, "input": "[[words=3000]]", "store": True}
        async with http.post(f"{bridge.base_url}/v1/responses", json=body) as r:
            assert r.status == 200
            rid = (await r.json())["id"]
        assert _store_errors(bridge, "responses", "put") == 1
        async with http.get(f"{bridge.base_url}/v1/responses/{rid}") as r:
            assert r.status == 404
