"""A single instance (SQLite store, no `store.url`) continues a stored response by forking its
thread straight away: no search of the Codex homes' session folders on the request path."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from bridge.appkeys import SETTINGS
from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge


def _no_glob(codex_home: Path, thread_id: str) -> bool:
    raise AssertionError(f"has_rollout searched {codex_home} on the request path")


async def test_previous_response_id_forks_without_searching_the_homes_when_store_url_is_empty(
    bridge: RunningBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not bridge.app[SETTINGS].store.url  # one instance, its own SQLite store
    monkeypatch.setattr("bridge.api.replay.has_rollout", _no_glob)
    url = f"{bridge.base_url}/v1/responses"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json={"model": DEMO_MODEL_ID, "input": "first [[reply=one]]"}
        ) as resp:
            first = await resp.json()
        assert resp.status == 200, first
        async with http.post(
            url,
            json={
                "model": DEMO_MODEL_ID,
                "input": "second [[echo_input]]",
                "previous_response_id": first["id"],
            },
        ) as resp:
            second = await resp.json()
        assert resp.status == 200, second
    seen = second["output"][0]["content"][0]["text"].splitlines()
    assert "user: first [[reply=one]]" in seen and "assistant: one" in seen
