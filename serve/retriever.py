"""Retriever: the first stage. The query's embedding (`@serve.batch` across requests), dense
search and LanceDB BM25 over the catalogue, fused as fitted (`jobs.fuse`), filtered by the
request's structured filters and by what understanding found (a price range becomes a price
filter, a brand a boost or a filter).

The catalogue is read once per replica (sorted by product id, so every replica breaks ties the
same way) and re-read in the background when the products table moves: the table handle is
opened with `read_consistency_interval = refresh_s`, so rows and vectors written by `jobs.ingest`
and `jobs.embed` are served within about `2 * refresh_s` (plus the time to encode products that
have no vector of this encoder yet). BM25 covers appended rows once `jobs.embed` has re-built or
optimised the full-text index.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any, Optional

import numpy as np
from ray import serve

from ray_app.index import load_text_encoder
from ray_app.search.pipeline import LiveCatalogue, first_stage, round_vectors
from schemas.fusion import FusionSpec
from schemas.serving import ServeAppConfig
from serve.models import Watcher, batch_settings, set_torch_threads

logger = logging.getLogger("ray.serve")
@serve.deployment(
    name="Retriever",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=32,
    max_queued_requests=64,
    backpressure_config={"status_code": 503, "retry_after_s": 1},  # a full queue: 503 + Retry-After
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    user_config={"max_batch_size": 16, "batch_wait_timeout_s": 0.005},
)
class Retriever:
    def __init__(self, config: dict[str, Any]):
        import lancedb

        self.config = ServeAppConfig(**config)
        set_torch_threads(self.config.torch_threads)
        self.encoder = load_text_encoder(self.config.encoder, self.config.models_dir)
        self.spec, self.fusion_version = FusionSpec(), "rrf (default)"
        if self.config.fusion:
            from ray_app.registry import Registry

            self.spec, version = Registry(self.config.models_dir).load_fusion(self.config.fusion)
            self.fusion_version = version.name
        self.db = lancedb.connect(self.config.db, read_consistency_interval=timedelta(seconds=self.config.refresh_s))
        self.tbl = self.db.open_table("products")
        self.cat = LiveCatalogue(self.tbl, self.encoder, self.config)
        self.watcher = Watcher(self.config.refresh_s, self.refresh, "catalogue-refresh")
        self.replica = serve.get_replica_context().replica_id.unique_id

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batch_settings(self._embed, user_config)

    def refresh(self) -> bool:
        """Re-read the catalogue when the products table has a new version; True when it did."""
        if self.tbl.version == self.cat.version:
            return False
        started = time.perf_counter()
        self.cat = LiveCatalogue(self.tbl, self.encoder, self.config)  # built aside, swapped in one assignment
        logger.info("catalogue v%s (%d products) in %.1fs", self.cat.version, self.cat.size, time.perf_counter() - started)
        return True

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _embed(self, texts: list[str]) -> list[np.ndarray]:
        return round_vectors(await asyncio.to_thread(self.encoder.encode, texts))

    async def retrieve(self, request: dict[str, Any], understanding: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The request's first-stage candidates (schemas.api.Candidates as a dict)."""
        vector = await self._embed(request["query"])
        out = first_stage(self.cat, self.spec, self.config, request, understanding, vector)
        return {**out, "version": f"{self.encoder.key}+{self.fusion_version}", "replica": self.replica}

    def lookup(self, product_ids: list[str]) -> list[dict[str, Any]]:
        """Catalogue rows of these products (for pinned products the first stage did not find)."""
        return self.cat.lookup(product_ids)

    def health(self) -> dict[str, Any]:
        bm25 = "bm25 over " + ", ".join(self.cat.bm25.columns) if self.cat.bm25 else "no FTS index"
        return {"ready": True, "version": f"{self.encoder.key}+{self.fusion_version}",
                "detail": f"catalogue v{self.cat.version}, {self.cat.size} products, {bm25}, fusion {self.spec.model_dump()}"}
