"""Typed application state keys, shared by the app factory and the handlers."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from bridge.catalog import ModelCatalog
from bridge.codex.turn import TurnLimits
from bridge.config import Settings
from bridge.ops.statedir import StateLayout
from bridge.store import ResponseStore
from bridge.worker.pool import WorkerPool

SETTINGS: Final = web.AppKey("settings", Settings)
CATALOG: Final = web.AppKey("catalog", ModelCatalog)
POOL: Final = web.AppKey("pool", WorkerPool)
LIMITS: Final = web.AppKey("limits", TurnLimits)
STORE: Final = web.AppKey("store", ResponseStore)
STATE: Final = web.AppKey("state", StateLayout)
