"""Typed application state keys, shared by the app factory and the handlers."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from bridge.catalog import ModelCatalog
from bridge.codex.account import AccountState
from bridge.codex.affinity import ConversationIndex
from bridge.codex.turn import TurnLimits
from bridge.config import Settings
from bridge.ops.statedir import StateLayout
from bridge.store import ResponseStore
from bridge.worker.pool import WorkerPool

SETTINGS: Final = web.AppKey("settings", Settings)
CATALOG: Final = web.AppKey("catalog", ModelCatalog)
POOL: Final = web.AppKey("pool", WorkerPool)
ACCOUNT: Final = web.AppKey("account", AccountState)
ACCOUNTS: Final = web.AppKey("accounts", dict[str, AccountState])
"""Every account (Codex home) by name, in `codex.accounts` order; one "default" without it."""
LIMITS: Final = web.AppKey("limits", TurnLimits)
STORE: Final = web.AppKey("store", ResponseStore)
STATE: Final = web.AppKey("state", StateLayout)
AFFINITY: Final = web.AppKey("affinity", ConversationIndex)
"""Held conversation threads (`codex.affinity`); absent when it is off."""
