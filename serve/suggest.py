"""Suggest: completions as the shopper types, from the `suggestions` table that `jobs.suggest`
builds (query popularity from events, the catalogue's brands, categories and product lines, each
user's affinities). Loaded once per replica; re-loaded when `jobs.suggest` writes a new version.

Between two `jobs.suggest` runs, a shopper's new events still count: when the events table moves
(checked every `refresh_s`), the users with events in the last LIVE_WINDOW_H hours get their
affinity (brand/category taste, price level) recomputed from their whole history, the same way
the job does. So feedback posted to `POST /v1/events` personalises that shopper's suggestions and
searches within about `refresh_s`; query popularity follows at the next `jobs.suggest` run.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from ray import serve

from ray_app.search.suggest import SuggestIndex
from ray_app.store import Store
from schemas.serving import ServeAppConfig
from serve.models import Watcher

logger = logging.getLogger("ray.serve")
LIVE_WINDOW_H = 24
AFFINITY_TOP = 5  # as jobs.suggest's default --affinity-top


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
        self.events_v, self.live_users = self._events_version(), 0
        self._catalogue: tuple[int, list[dict[str, Any]]] = (-1, [])
        self.watcher = Watcher(self.config.refresh_s, self.refresh, "suggest-refresh")

    def _version(self) -> str:
        return str(self.store.db.open_table("suggestions").version)

    def _load(self) -> tuple[str, Any]:
        return self._version(), SuggestIndex.from_store(self.store)

    def _events_version(self) -> int:
        return self.store.version("events") if self.store.exists("events") else 0

    def refresh(self) -> bool:
        changed = False
        if self._version() != self.version:
            self.version, self.index = self._load()
            changed = True
        if self._events_version() != self.events_v:
            changed |= self.refresh_affinity()
        return changed

    def _products(self) -> list[dict[str, Any]]:
        """The catalogue's brand, categories and price, read again only when the products table moved."""
        version = self.store.version("products")
        if self._catalogue[0] != version:
            rows = self.store.read("products", columns=["product_id", "brand", "category_path", "price"]).to_pylist()
            self._catalogue = (version, rows)
        return self._catalogue[1]

    def refresh_affinity(self) -> bool:
        """Recompute the affinity of users with recent events (see the module docstring)."""
        from ray_app.search.suggest import affinity_weights
        from ray_app.search.suggest_build import CATALOGUE_USER, ENGAGEMENT, user_affinity

        started, version = time.perf_counter(), self._events_version()
        since = (datetime.now(timezone.utc) - timedelta(hours=LIVE_WINDOW_H)).strftime("%Y-%m-%d %H:%M:%S")
        kinds = ", ".join(f"'{k}'" for k in ENGAGEMENT)
        recent = self.store.read("events", columns=["user_id"],
                                 where=f"timestamp >= timestamp '{since}' AND event_type IN ({kinds})")
        users = sorted(set(recent.column("user_id").to_pylist()))
        self.events_v = version
        if not users:
            return False
        quoted = ", ".join("'" + u.replace("'", "''") + "'" for u in users)
        events = self.store.read("events", columns=["user_id", "event_type", "product_id"],
                                 where=f"user_id IN ({quoted})").to_pylist()
        table = user_affinity(events, self._products(), AFFINITY_TOP)
        weights = affinity_weights(table.to_pylist())
        weights.pop(CATALOGUE_USER, None)  # the catalogue's medians stay as jobs.suggest computed them
        self.index.update_affinity(weights)
        self.live_users = len(weights)
        logger.info("suggest: affinity of %d recently active users recomputed in %.2fs", len(weights),
                    time.perf_counter() - started)
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
        return {"ready": True, "version": f"suggestions v{self.version}",
                "detail": f"events v{self.events_v}; {self.live_users} users' affinity updated from their latest events"}
