"""The per-request search steps as plain code, so the Serve deployments and a single-process
server (benchmarks/serve.py's baseline) run exactly the same thing: the catalogue one replica
searches, the first stage (filters and understanding -> dense + BM25 -> fusion -> candidates) and
the re-ranked order as `jobs.evaluate` scores it."""
from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

from ray_app.eval_data import TEXT_COLUMNS, _texts
from ray_app.index import VECTOR_COLUMNS, fts_columns_indexed, rrf
from ray_app.search.candidates import BM25, Dense
from ray_app.search.filters import CatalogueColumns, filter_sql, understanding_filters
from ray_app.search.fusion import fuse
from schemas.api import SearchFilters
from schemas.fusion import FusionSpec
from schemas.serving import ServeAppConfig

logger = logging.getLogger("ray.serve")
SERVE_COLUMNS = TEXT_COLUMNS + ["price", "currency", "stock", "image_url", "locale"]
FIELDS = ("title", "brand", "category_path", "price", "currency", "stock", "image_url", "attributes")
QUERY_VECTOR_DECIMALS = 4  # batched encoding differs in the last bits by batch shape; rounding makes it repeatable
SCORE_DECIMALS = 4  # pairs padded with other requests' pairs differ in the last bits; rounding keeps orders repeatable


class LiveCatalogue:
    """One version of the products table, ready to search: texts, vectors, filter columns, BM25."""

    def __init__(self, tbl, encoder, config: ServeAppConfig):
        self.version = tbl.version
        names = tbl.schema.names
        cols = [c for c in SERVE_COLUMNS + list(VECTOR_COLUMNS) if c in names]
        rows = tbl.search().select(cols).limit(None).to_arrow().sort_by("product_id")  # same row order on every replica
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

    def lookup(self, product_ids: list[str]) -> list[dict[str, Any]]:
        """Catalogue rows of these products (for pinned products the first stage did not find)."""
        return [self.candidate(p, 0.0) for p in product_ids if p in self.fields]


def round_vectors(vectors: np.ndarray) -> list[np.ndarray]:
    """Query vectors as the first stage uses them (rounded, so batch composition cannot reorder)."""
    return list(np.round(vectors, QUERY_VECTOR_DECIMALS).astype(np.float32))


def _stage(ranked: list[tuple[str, float]]) -> dict[str, dict[str, Any]]:
    return {pid: {"rank": i + 1, "score": round(float(s), 6)} for i, (pid, s) in enumerate(ranked)}


def first_stage(cat: LiveCatalogue, spec: FusionSpec, config: ServeAppConfig, request: dict[str, Any],
                understanding: Optional[dict[str, Any]], vector: np.ndarray) -> dict[str, Any]:
    """The request's first-stage candidates (schemas.api.Candidates as a dict), each with its
    rank and score in every list (bm25, dense, first_stage)."""
    query = request["query"]
    filters = SearchFilters(**(request.get("filters") or {}))
    entities = (understanding or {}).get("entities") or []
    filters, boosts, applied = understanding_filters(entities, filters, cat.columns, config.brand_policy, config.price_policy)
    mask = where = None
    if not filters.is_empty():
        mask, where = cat.columns.mask(filters), filter_sql(filters)  # the same selection (tested equal)
    depth = config.retrieve_depth
    dense = cat.dense.search(vector, depth, mask=mask, where=where)
    lexical = cat.bm25.search(query, depth, where=where) if cat.bm25 else []
    # BM25 and ANN search the live table, which can be a version ahead of this catalogue for up to
    # one refresh: products it does not know yet are left out until the refresh brings them in.
    lexical = [(p, s) for p, s in lexical if p in cat.fields]
    dense = [(p, s) for p, s in dense if p in cat.fields]
    fused = fuse({"bm25": lexical, "dense": dense}, spec, limit=depth)
    stages = {"bm25": _stage(lexical), "dense": _stage(dense), "first_stage": _stage(fused)}
    candidates = []
    for pid, score in fused:
        row = cat.candidate(pid, round(float(score), 6))
        row["stages"] = {name: s[pid] for name, s in stages.items() if pid in s}
        candidates.append(row)
    return {"query": query, "candidates": candidates,
            "filters_applied": {"filters": filters.model_dump(exclude_none=True), "derived": applied},
            "boosts": boosts, "catalogue_version": cat.version,
            "degraded": [] if cat.bm25 else ["bm25: no full-text index"]}


def rerank_order(head: list[str], scores: list[float], tail: list[str], fusion_k: Optional[int]) -> list[tuple[str, float]]:
    """The final order: `head` re-ordered by `scores` (stable: ties keep the first-stage order), fused
    with the first stage by RRF when `fusion_k` (jobs.evaluate's `rerank+rrf`), followed by `tail`."""
    order = np.argsort(-np.round(np.asarray(scores, dtype=np.float64), SCORE_DECIMALS), kind="stable")
    reranked = [head[i] for i in order]
    if fusion_k:  # RRF of the whole first-stage list with the re-ranked head: tail items get one term, so stay below
        return [(p, float(s)) for p, s in rrf([head + tail, reranked], fusion_k)]
    by = dict(zip(head, scores))
    low = min(scores) if scores else 0.0
    return [(p, float(by[p])) for p in reranked] + [(p, low - 1.0 - i * 1e-6) for i, p in enumerate(tail)]


def ranked_result(first: dict[str, Any], depth: int, scores: list[float], fusion_k: Optional[int],
                  version: str, arm: str) -> dict[str, Any]:
    """What the ranking stage answers for one request, from the ranker's scores of the top `depth`."""
    candidates = first["candidates"]
    ids = [c["product_id"] for c in candidates[:depth]]
    order = rerank_order(ids, scores, [c["product_id"] for c in candidates[depth:]], fusion_k)
    ranker_stage = {p: {"rank": i + 1, "score": round(float(s), 6)}
                    for i, (p, s) in enumerate(sorted(zip(ids, scores), key=lambda x: -round(x[1], SCORE_DECIMALS)))}
    return {"order": [(p, round(s, 6)) for p, s in order], "ranker": ranker_stage, "version": version, "arm": arm}
