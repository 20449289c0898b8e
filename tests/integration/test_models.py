"""`/v1/models` against the running bridge."""

from __future__ import annotations

import aiohttp

from bridge.demo import DEMO_MODEL_ID
from tests.harness import RunningBridge


async def test_models_list_serves_the_demo_model(bridge: RunningBridge) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.base_url}/v1/models") as r:
            assert r.status == 200
            body = await r.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert DEMO_MODEL_ID in ids
    for model in body["data"]:
        assert set(model) == {"id", "object", "created", "owned_by"}
        assert model["object"] == "model"
        assert isinstance(model["created"], int)


async def test_model_lookup_by_id_and_unknown_id(bridge: RunningBridge) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.base_url}/v1/models/{DEMO_MODEL_ID}") as r:
            assert r.status == 200
            assert (await r.json())["id"] == DEMO_MODEL_ID
        async with http.get(f"{bridge.base_url}/v1/models/org/none") as r:
            assert r.status == 404
            error = (await r.json())["error"]
    assert error["code"] == "model_not_found"
    assert error["param"] is None


async def test_an_alias_serves_the_demo_model_with_its_implied_effort(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.harness import bridge_test_settings, running_bridge

    settings = bridge_test_settings(tmp_path, **{"codex.models": ["demo-high=codex-demo@high"]})
    async with running_bridge(settings) as bridge, aiohttp.ClientSession() as http:
        async with http.get(f"{bridge.base_url}/v1/models/demo-high") as r:
            assert r.status == 200
        async with http.post(
            f"{bridge.base_url}/v1/chat/completions",
            json={"model": "demo-high", "messages": [{"role": "user", "content": "[[reply=hi]]"}]},
        ) as r:
            assert r.status == 200
            assert (await r.json())["model"] == "demo-high"
        assert bridge.demo.requests[-1]["reasoning"]["effort"] == "high"
