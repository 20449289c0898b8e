"""One state directory per instance: no shared worker directories or database, and a lock.

Before `server.state_dir`, the worker directories and `bridge.sqlite3` lived
in the parent of the Codex home: two bridges with sibling Codex homes shared
them, and starting the second wiped the first's worker cwd.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bridge.demo import DEMO_MODEL_ID
from tests.harness import bridge_test_settings, running_bridge
from tests.processes import clean_env, run_to_exit, serve_argv

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REFUSAL_TIMEOUT_S = 30.0
READY_POLL_S = 0.1


async def test_bridges_with_sibling_codex_homes_share_no_workdir_and_no_database(
    tmp_path: Path,
) -> None:
    shared_parent = tmp_path / "srv"
    home_a, home_b = shared_parent / "home-a", shared_parent / "home-b"
    settings_a = bridge_test_settings(home_a, **{"server.state_dir": str(tmp_path / "state-a")})
    settings_b = bridge_test_settings(home_b, **{"server.state_dir": str(tmp_path / "state-b")})
    async with running_bridge(settings_a) as a:
        (workdir_a,) = [w.config.workdir for w in a.pool.workers]
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{a.base_url}/v1/responses",
                json={"model": DEMO_MODEL_ID, "input": "[[reply=kept]]", "store": True},
            ) as r:
                assert r.status == 200, await r.text()
                stored = (await r.json())["id"]
            async with running_bridge(settings_b) as b:
                (workdir_b,) = [w.config.workdir for w in b.pool.workers]
                assert workdir_a != workdir_b
                assert workdir_a.is_relative_to(tmp_path / "state-a")
                assert workdir_b.is_relative_to(tmp_path / "state-b")
                # B's start did not wipe A's worker cwd, and A still answers.
                assert workdir_a.is_dir()
                async with http.post(
                    f"{a.base_url}/v1/chat/completions",
                    json={"model": DEMO_MODEL_ID, "messages": [{"role": "user", "content": "hi"}]},
                ) as r:
                    assert r.status == 200, await r.text()
                # A's stored response lives in A's database only.
                async with http.get(f"{b.base_url}/v1/responses/{stored}") as r:
                    assert r.status == 404
                async with http.get(f"{a.base_url}/v1/responses/{stored}") as r:
                    assert r.status == 200
    # Nothing was written beside the Codex homes.
    assert sorted(p.name for p in shared_parent.iterdir()) == ["home-a", "home-b"]
    assert (tmp_path / "state-a" / "bridge.sqlite3").is_file()
    assert (tmp_path / "state-b" / "bridge.sqlite3").is_file()


@asynccontextmanager
async def serving(state_dir: Path, codex_home: Path) -> AsyncIterator[tuple[int, str]]:
    """A real `codex-bridge serve` process, listening with a ready worker; yields (pid, url)."""
    proc = await asyncio.create_subprocess_exec(
        *serve_argv(state_dir, codex_home), stdout=asyncio.subprocess.PIPE, env=clean_env()
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                raw = await proc.stdout.readline()
                assert raw, "the first instance exited before it listened"
                line: dict[str, Any] = orjson.loads(raw)
                if line.get("msg") == "codex-bridge listening":
                    url = str(line["url"])
                    break
            async with aiohttp.ClientSession() as http:
                while True:
                    async with http.get(f"{url}/readyz") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(READY_POLL_S)
        yield proc.pid, url
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def refused(state_dir: Path, codex_home: Path) -> tuple[int, str]:
    code, _, err = await run_to_exit(
        serve_argv(state_dir, codex_home), env=clean_env(), timeout_s=REFUSAL_TIMEOUT_S
    )
    return code, err


async def test_a_second_serve_on_the_same_state_dir_or_codex_home_exits_2_naming_the_pid(
    tmp_path: Path,
) -> None:
    state, home = tmp_path / "state", tmp_path / "home"
    async with serving(state, home) as (pid, url):
        code, err = await refused(state, tmp_path / "other-home")
        assert code == 2, err
        assert err.startswith("codex-bridge: error: state directory")
        assert f"PID {pid}" in err
        assert "Traceback" not in err

        code, err = await refused(tmp_path / "other-state", home)
        assert code == 2, err
        assert err.startswith("codex-bridge: error: Codex home")
        assert f"PID {pid}" in err

        # The refused instances touched nothing of the first: it is still ready.
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as r:
            assert r.status == 200
        assert (state / "codex-bridge.lock").read_text().strip() == str(pid)
        assert (state / "workdirs" / "worker-0").is_dir()
