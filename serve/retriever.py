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

from ray_app.eval_data import TEXT_COLUMNS, _texts
from ray_app.index import VECTOR_COLUMNS, fts_columns_indexed, load_text_encoder
from ray_app.search.candidates import BM25, Dense
from ray_app.search.filters import CatalogueColumns, filter_sql, understanding_filters
from ray_app.search.fusion import fuse
from schemas.api import SearchFilters
from schemas.fusion import FusionSpec
from schemas.serving import ServeAppConfig
from serve.models import Watcher, batch_settings, set_torch_threads

logger = logging.getLogger("ray.serve")
SERVE_COLUMNS = TEXT_COLUMNS + ["price", "currency", "stock", "image_url", "locale"]
FIELDS = ("title", "brand", "category_path", "price", "currency", "stock", "image_url", "attributes")
QUERY_VECTOR_DECIMALS = 4  # batched encoding differs in the last bits by batch shape; rounding makes it repeatable


class LiveCatalogue:
    """One version of the products table, ready to search: texts, vectors, filter columns, BM25."""

    def __init__(self, tbl, encoder, config: ServeAppConfig):
        self.version = tbl.version
        names = tbl.schema.names
        cols = [c for c in SERVE_COLUMNS + list(VECTOR_COLUMNS) if c in names]
        rows = tbl.search().select(cols).limit(None).to_arrow().sort_by("product_id")
        self.size = rows.num_rows
        self.texts = _texts(rows.select([c for c in TEXT_COLUMNS if c in cols]))
        self.dense = Dense(encoder, rows, self.texts, tbl, config.ann, lambda msg: logger.info(msg))
        fts_cols = [c for c in config.fts_columns if c in fts_columns_indexed(tbl)]
        self.bm25: Optional[BM25] = BM25(tbl, fts_cols) if fts_cols else None
        self.columns = CatalogueColumns.from_table(rows)
        fields = [f for f in FIELDS if f in cols]
        self.fields = {r["product_id"]: r for r in rows.select(["product_id"] + fields).to_pylist()}

    def candidate(self, pid: str, score: float) -> dict[str, Any]:
        row = self.fields[pid]
        return {**{k: v for k, v in row.items() if v is not None}, "product_id": pid, "score": score,
                "text": self.texts[pid]}


def _stage(ranked: list[tuple[str, float]]) -> dict[str, dict[str, Any]]:
    return {pid: {"rank": i + 1, "score": round(float(s), 6)} for i, (pid, s) in enumerate(ranked)}


@serve.deployment(
    name="Retriever",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=32,
    max_queued_requests=64,
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
        vectors = await asyncio.to_thread(self.encoder.encode, texts)
        return list(np.round(vectors, QUERY_VECTOR_DECIMALS).astype(np.float32))

    async def retrieve(self, request: dict[str, Any], understanding: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The request's first-stage candidates (schemas.api.Candidates as a dict)."""
        cat, cfg, query = self.cat, self.config, request["query"]
        filters = SearchFilters(**(request.get("filters") or {}))
        entities = (understanding or {}).get("entities") or []
        filters, boosts, applied = understanding_filters(entities, filters, cat.columns, cfg.brand_policy, cfg.price_policy)
        vector = await self._embed(query)
        mask = where = None
        if not filters.is_empty():
            mask, where = cat.columns.mask(filters), filter_sql(filters)
        depth = cfg.retrieve_depth
        dense = cat.dense.search(vector, depth, mask=mask, where=where)
        lexical = cat.bm25.search(query, depth, where=where) if cat.bm25 else []
        if mask is not None and lexical:  # the SQL filter may select a superset (see filters.filter_sql)
            keep = cat.columns.allowed_ids(filters)
            lexical = [(p, s) for p, s in lexical if p in keep]
        fused = fuse({"bm25": lexical, "dense": dense}, self.spec, limit=depth)
        stages = {"bm25": _stage(lexical), "dense": _stage(dense), "first_stage": _stage(fused)}
        candidates = []
        for pid, score in fused:
            row = cat.candidate(pid, round(float(score), 6))
            row["stages"] = {name: s[pid] for name, s in stages.items() if pid in s}
            candidates.append(row)
        return {"query": query, "candidates": candidates, "filters_applied": {
                    "filters": filters.model_dump(exclude_none=True), "derived": applied},
                "boosts": boosts, "version": f"{self.encoder.key}+{self.fusion_version}",
                "catalogue_version": cat.version, "degraded": [] if cat.bm25 else ["bm25: no full-text index"],
                "replica": self.replica}

    def lookup(self, product_ids: list[str]) -> list[dict[str, Any]]:
        """Catalogue rows of these products (for pinned products the first stage did not find)."""
        cat = self.cat
        return [cat.candidate(p, 0.0) for p in product_ids if p in cat.fields]

    def health(self) -> dict[str, Any]:
        bm25 = "bm25 over " + ", ".join(self.cat.bm25.columns) if self.cat.bm25 else "no FTS index"
        return {"ready": True, "version": f"{self.encoder.key}+{self.fusion_version}",
                "detail": f"catalogue v{self.cat.version}, {self.cat.size} products, {bm25}, fusion {self.spec.model_dump()}"}
