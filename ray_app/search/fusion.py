"""Fusion of rankings: reciprocal-rank fusion of BM25 and the encoder (the hybrid first stage),
and of a re-ranker's order with the first stage's."""
from __future__ import annotations

from typing import Optional

from ray_app.index import rrf
from ray_app.search.candidates import BM25, Dense
from ray_app.search.rerank import Rerank


class Hybrid:
    """Reciprocal-rank fusion (constant k) of BM25's and a bi-encoder's rankings."""

    def __init__(self, lexical: BM25, dense: Dense, k: int):
        self.lexical, self.dense, self.k = lexical, dense, k
        self.about = f"reciprocal-rank fusion (k={k}) of BM25 and {dense.encoder.key}"

    def prepare(self, queries: list[dict]) -> None:
        self.dense.prepare(queries)

    def judged(self, q: dict, pids: list[str]) -> dict[str, Optional[float]]:
        rankings = [sorted((p for p, s in part.items() if s is not None), key=lambda p: -part[p])
                    for part in (self.lexical.judged(q, pids), self.dense.judged(q, pids))]
        return dict(rrf(rankings, self.k))

    def retrieve(self, q: dict, depth: int) -> list[str]:
        return [p for p, _ in rrf([self.lexical.retrieve(q, depth), self.dense.retrieve(q, depth)], self.k, depth)]


class RerankFusion:
    """The re-ranking stage as many engines ship it: the cross-encoder's order fused with the
    first stage's order (reciprocal-rank fusion) instead of replacing it. Shares the ranker's
    scores with the plain `Rerank` it wraps, so the report shows what fusion adds on its own."""

    def __init__(self, rerank: Rerank, k: int):
        self.rerank, self.k = rerank, k
        self.about = (f"reciprocal-rank fusion (k={k}) of {rerank.ranker.version.name}'s order and the first stage's, "
                      f"over the same top {rerank.depth}")

    def prepare(self, queries: list[dict]) -> None:
        self.rerank.prepare(queries)

    def judged(self, q: dict, pids: list[str]) -> dict[str, Optional[float]]:
        base = self.rerank.base.judged(q, pids)
        first = sorted((p for p in pids if base.get(p) is not None), key=lambda p: -base[p])
        mine = self.rerank.judged(q, pids)
        return dict(rrf([first, sorted(pids, key=lambda p: -mine[p])], self.k))

    def retrieve(self, q: dict, depth: int) -> list[str]:
        head, reranked, tail = self.rerank.candidates(q, depth)
        return ([p for p, _ in rrf([head, reranked], self.k)] + tail)[:depth]
