"""Suggest: completions as the shopper types, from the `suggestions` table that `jobs.suggest`
builds (query popularity from events, the catalogue's brands, categories and product lines, each
user's affinities). Loaded once per replica; re-loaded when `jobs.suggest` writes a new version.
"""
from __future__ import annotations

from typing import Any, Optional

from ray import serve

from ray_app.search.suggest import SuggestIndex
from ray_app.store import Store
from schemas.serving import ServeAppConfig
from serve.models import Watcher


@serve.deployment(
    name="Suggest",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
    max_queued_requests=128,
    backpressure_config={"status_code": 503, "retry_after_s": 1},  # a full queue: 503 + Retry-After
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
)
class Suggest:
    def __init__(self, config: dict[str, Any]):
        self.config = ServeAppConfig(**config)
        self.store = Store(self.config.db)  # open_table reads the latest version, so each refresh sees new builds
        self.version, self.index = self._load()
        self.watcher = Watcher(self.config.refresh_s, self.refresh, "suggest-refresh")

    def _version(self) -> str:
        return str(self.store.db.open_table("suggestions").version)

    def _load(self) -> tuple[str, Any]:
        return self._version(), SuggestIndex.from_store(self.store)

    def refresh(self) -> bool:
        if self._version() == self.version:
            return False
        self.version, self.index = self._load()
        return True

    def suggest(self, prefix: str, user_id: Optional[str] = None, k: int = 10) -> dict[str, Any]:
        """Completions of `prefix` (user_id is already the keyed pseudonym)."""
        return {"suggestions": self.index.complete(prefix, user_id, k), "version": f"suggestions v{self.version}"}

    def affinity(self, user_id: str) -> dict[tuple[str, str], float]:
        """The user's brand and category weights and price level (user_id is the keyed pseudonym),
        with the catalogue's median price per leaf category; {} for a user without history."""
        from ray_app.search.suggest_build import CATALOGUE_USER

        mine = self.index.affinity.get(user_id)
        return {**self.index.affinity.get(CATALOGUE_USER, {}), **mine} if mine else {}

    def health(self) -> dict[str, Any]:
        return {"ready": True, "version": f"suggestions v{self.version}", "detail": ""}
