"""`GET /v1/models` and `GET /v1/models/{model}` in OpenAI's `model` / `list` shapes."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from bridge.appkeys import CATALOG
from bridge.catalog import CatalogEntry


def _model_object(entry: CatalogEntry) -> dict[str, Any]:
    return {"id": entry.id, "object": "model", "created": entry.created, "owned_by": entry.owned_by}


async def list_models(request: web.Request) -> web.Response:
    entries = request.app[CATALOG].entries()
    body = {"object": "list", "data": [_model_object(e) for e in entries]}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def get_model(request: web.Request) -> web.Response:
    entry = request.app[CATALOG].resolve(request.match_info["model"])
    return web.Response(body=orjson.dumps(_model_object(entry)), content_type="application/json")
