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
