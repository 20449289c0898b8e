"""Expired stored responses are purged, with their Codex threads, and the store's size is a metric."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from bridge.api.middleware import METRICS
from bridge.appkeys import STORE
from bridge.demo import DEMO_MODEL_ID
from tests.harness import bridge_test_settings, running_bridge, wait_until

TTL_S = 3.0
PURGE_WAIT_S = 30.0


async def test_expired_responses_and_their_codex_threads_are_purged(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = bridge_test_settings(
        home, **{"store.ttl_days": TTL_S / 86_400, "store.purge_interval_s": 0.2}
    )
    async with (
        running_bridge(settings) as bridge,
        openai.AsyncOpenAI(
            base_url=f"{bridge.base_url}/v1", api_key="unused", max_retries=0
        ) as sdk,
    ):
        registry = bridge.app[METRICS].registry
        response = await sdk.responses.create(model=DEMO_MODEL_ID, input="[[reply=short-lived]]")
        # A fresh Codex home: the stored response's thread is the only rollout in it.
        (rollout,) = home.glob("sessions/**/rollout-*.jsonl")
        assert registry.get_sample_value("codex_bridge_stored_responses") == 1

        await wait_until(lambda: not rollout.exists(), timeout=PURGE_WAIT_S)
        await wait_until(
            lambda: registry.get_sample_value("codex_bridge_stored_responses") == 0,
            timeout=PURGE_WAIT_S,
        )
        assert await bridge.app[STORE].count() == 0
        purged = registry.get_sample_value("codex_bridge_store_purged_total", {"what": "threads"})
        assert purged == 1
        with pytest.raises(openai.NotFoundError):
            await sdk.responses.retrieve(response.id)
