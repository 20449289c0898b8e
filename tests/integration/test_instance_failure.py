"""An instance killed mid-request: the other keeps serving, and the dead one's slots come back.

Instance A is a real `codex-bridge serve --demo` process (so it can die by
SIGKILL, without releasing anything); instance B runs in the test. Both share
one real redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from bridge.demo import DEMO_MODEL_ID
from bridge.ops.leases import LEASE_S
from tests.harness import bridge_test_settings, running_bridge
from tests.redis_server import RedisServer

START_TIMEOUT_S: Final = 60.0
KILL_TIMEOUT_S: Final = 10.0
QUEUE_TIMEOUT_S: Final = 1.0
# A dead instance's lease runs out after LEASE_S; a busy box gets a margin on top.
LEASE_RETURN_TIMEOUT_S: Final = LEASE_S * 3
KEY: Final = "sk-dave-instance-failure"
# Another key of no cap: what A stored for it is continued on B while dave's slot is still leased.
OTHER_KEY: Final = "sk-erin-instance-failure"


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def test_an_instance_killed_mid_request_leaves_the_other_serving_and_its_slots_return(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    name = f"dave-{tmp_path.name}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        {
            "BRIDGE_STORE_URL": redis_server.url,
            "BRIDGE_API_KEYS": f"{name}:{KEY}:1,erin:{OTHER_KEY}",
            "BRIDGE_QUEUE_TIMEOUT_S": str(QUEUE_TIMEOUT_S),
        }
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        "--demo",
        "--port",
        "0",
        "--codex-home",
        str(tmp_path / "home-a"),
        "--state-dir",
        str(tmp_path / "state-a"),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    worker_pids: list[int] = []
    settings_b = bridge_test_settings(
        tmp_path / "home-b",
        **{
            "store.url": redis_server.url,
            "auth.api_keys": (f"{name}:{KEY}:1", f"erin:{OTHER_KEY}"),
            "codex.queue_timeout_s": QUEUE_TIMEOUT_S,
        },
    )
    try:
        assert proc.stdout is not None
        url = ""
        async with asyncio.timeout(START_TIMEOUT_S):
            while not (url and worker_pids):
                line = orjson.loads(await proc.stdout.readline())
                if line.get("msg") == "codex-bridge listening":
                    url = line["url"]
                elif line.get("msg") == "worker ready" and line.get("worker") != -1:
                    # -1 is the start-up self-check, which A stops itself.
                    worker_pids.append(int(line["pid"]))
        async with (
            running_bridge(settings_b) as b,
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as http,
        ):
            erin = {"Authorization": f"Bearer {OTHER_KEY}"}
            async with http.post(
                f"{url}/v1/responses",
                json={"model": DEMO_MODEL_ID, "input": "[[reply=on a]]"},
                headers=erin,
            ) as resp:
                assert resp.status == 200
                kept = await resp.json()
            # A runs the key's one allowed turn and never finishes it.
            hang = {"model": DEMO_MODEL_ID, "input": "[[hang_after=0]]", "store": False}
            hanging = asyncio.create_task(_post(http, f"{url}/v1/responses", hang))
            plain = {"model": DEMO_MODEL_ID, "input": "[[reply=b]]", "store": False}
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:  # bounded: until A's turn holds the key's slot
                    if hanging.done():
                        # B's requests below held the slot at each of A's polls until A's
                        # queue wait ended in 429 (polling across instances is not FIFO).
                        assert hanging.result()[0] == 429, hanging.result()
                        hanging = asyncio.create_task(_post(http, f"{url}/v1/responses", hang))
                    status, refused = await _post(http, f"{b.base_url}/v1/responses", plain)
                    if status == 429:
                        break
                    assert status == 200, refused
            proc.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(proc.wait(), KILL_TIMEOUT_S) == -signal.SIGKILL
            with contextlib.suppress(aiohttp.ClientError):
                await hanging

            # B serves A's stored response (replayed: A's Codex home is gone with A)...
            async with http.post(
                f"{b.base_url}/v1/responses",
                json={
                    "model": DEMO_MODEL_ID,
                    "input": "[[echo_input]]",
                    "previous_response_id": kept["id"],
                    "store": False,
                },
                headers=erin,
            ) as resp:
                assert resp.status == 200
                continued = await resp.json()
            said = continued["output"][0]["content"][0]["text"].splitlines()
            assert "assistant: on a" in said
            # ... and, once A's lease has run out, the key's slot: nobody released it.
            async with asyncio.timeout(LEASE_RETURN_TIMEOUT_S):
                while True:  # each refused try waits QUEUE_TIMEOUT_S for the slot
                    status, served = await _post(http, f"{b.base_url}/v1/responses", plain)
                    if status == 200:
                        break
                    assert status == 429, served
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in worker_pids:
            # A's Codex workers run in their own sessions; A cannot stop them any more.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
