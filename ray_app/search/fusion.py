"""Fusion of rankings: the hybrid first stage (BM25's and the encoder's lists fused by a
`FusionSpec`: weighted reciprocal ranks, or weighted min-max / z-score normalised scores), and a
re-ranker's order fused with the first stage's.

`fuse` is a pure function of the lists and the spec, so serving applies exactly what
`jobs.fuse` fitted and `jobs.evaluate` scored, without the evaluation classes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ray_app.index import rrf
from ray_app.search.candidates import BM25, Dense
from ray_app.search.rerank import Rerank
from schemas.fusion import FUSION_LISTS, FusionSpec

DEFAULT_SPEC = FusionSpec()


def _normalised(scores: Sequence[float], method: str) -> np.ndarray:
    """One list's scores min-max scaled to [0, 1] or standardised; all zeros when they do not spread
    (a single hit, or all equal: the scores then say nothing about order)."""
    values = np.asarray(scores, dtype=np.float64)
    spread = values.max() - values.min() if method == "minmax" else values.std()
    if not spread > 0:
        return np.zeros_like(values)
    return (values - (values.min() if method == "minmax" else values.mean())) / spread


def fuse(lists: dict[str, list[tuple[str, float]]], spec: FusionSpec = DEFAULT_SPEC,
         limit: Optional[int] = None) -> list[tuple[str, float]]:
    """Fuse each stage's (product_id, score) list, best first, into one (product_id, fused score) list.

    rrf: sum over lists of weight / (rrf_k + rank), rank 1-based (scores unused). minmax / zscore:
    sum over lists of weight x the list's normalised score; a product absent from a list gets that
    list's minimum normalised score (it ranked below everything the list returned). A list of weight
    0 is left out entirely, so weights 1 / 0 give the other list's order. A product listed twice in
    one list counts at its first (best) place. Ties, as `ray_app.index.rrf` breaks them (so plain RRF
    with equal weights gives its exact order): fused score desc, then best rank in any list, then
    first appearance reading the lists in FUSION_LISTS order (bm25, then dense), whatever the
    dict's order.
    """
    unknown = sorted(set(lists) - set(FUSION_LISTS))
    if unknown:
        raise ValueError(f"fuse: unknown list(s) {', '.join(unknown)}; expected {', '.join(FUSION_LISTS)}")
    scores: dict[str, float] = {}
    best: dict[str, int] = {}
    first: dict[str, int] = {}
    weighted = [(lists.get(name) or [], spec.weights[name]) for name in FUSION_LISTS]
    weighted = [(ranked, w) for ranked, w in weighted if w > 0 and ranked]
    for ranked, _ in weighted:
        for rank, (pid, _) in enumerate(ranked, start=1):
            best[pid] = min(best.get(pid, rank), rank)
            first.setdefault(pid, len(first))
    for ranked, weight in weighted:
        places: dict[str, int] = {}
        for i, (pid, _) in enumerate(ranked):
            places.setdefault(pid, i)
        if spec.method == "rrf":
            for pid, i in places.items():
                scores[pid] = scores.get(pid, 0.0) + weight / (spec.rrf_k + i + 1)
            continue
        norm = _normalised([s for _, s in ranked], spec.method)
        floor = weight * float(norm.min())
        for pid in first:
            scores[pid] = scores.get(pid, 0.0) + (weight * float(norm[places[pid]]) if pid in places else floor)
    fused = sorted(scores, key=lambda p: (-scores[p], best[p], first[p]))
    return [(p, scores[p]) for p in fused[:limit]]


class Hybrid:
    """BM25's and a bi-encoder's lists fused by a FusionSpec (default: RRF, k = 60, equal weights)."""

    def __init__(self, lexical: BM25, dense: Dense, spec: FusionSpec = DEFAULT_SPEC):
        self.lexical, self.dense, self.spec = lexical, dense, spec
        plain = spec.method == "rrf" and spec.weights["bm25"] == spec.weights["dense"]  # described as it always was
        self.about = (f"reciprocal-rank fusion (k={spec.rrf_k}) of BM25 and {dense.encoder.key}" if plain
                      else f"{spec.describe()}: fusion of BM25 and {dense.encoder.key}")

    def prepare(self, queries: list[dict]) -> None:
        self.dense.prepare(queries)

    def judged(self, q: dict, pids: list[str]) -> dict[str, Optional[float]]:
        lists = {}
        for name, part in (("bm25", self.lexical.judged(q, pids)), ("dense", self.dense.judged(q, pids))):
            ranked = sorted((p for p, s in part.items() if s is not None), key=lambda p: -part[p])
            lists[name] = [(p, float(part[p])) for p in ranked]
        return dict(fuse(lists, self.spec))

    def retrieve(self, q: dict, depth: int) -> list[str]:
        lists = {"bm25": self.lexical.search(q["text"], depth),
                 "dense": self.dense.search(self.dense.qvec[q["query_id"]], depth)}
        return [p for p, _ in fuse(lists, self.spec, depth)]


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
