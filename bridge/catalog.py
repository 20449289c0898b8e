"""The model catalog: which model ids the bridge serves and what Codex model each means.

Ids come from the worker's `model/list` (Codex's built-in catalog), from
operator-configured aliases (`--model ID[=CODEX_MODEL]`), and from the demo
model when `--demo` is on. Knows ids and their Codex targets; knows no HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from bridge.errors import ModelNotFound


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    id: str
    codex_model: str | None
    """What `thread/start.model` gets; None lets the worker's configured model answer."""
    owned_by: str
    created: int
    effort: str | None = None
    """Reasoning effort the id implies, unless the request names one."""


class ModelCatalog:
    def __init__(self, static: Iterable[CatalogEntry]) -> None:
        self._static = {entry.id: entry for entry in static}
        self._discovered: dict[str, CatalogEntry] = {}

    def set_discovered(self, model_ids: Iterable[str]) -> None:
        now = int(time.time())
        self._discovered = {
            mid: CatalogEntry(id=mid, codex_model=mid, owned_by="openai-codex", created=now)
            for mid in model_ids
            if mid not in self._static
        }

    def entries(self) -> list[CatalogEntry]:
        return [*self._static.values(), *self._discovered.values()]

    def resolve(self, model_id: str) -> CatalogEntry:
        entry = self._static.get(model_id) or self._discovered.get(model_id)
        if entry is None:
            raise ModelNotFound(model_id)
        return entry
