"""Re-ranking: a cross-encoder scores the first stage's top candidates (scores cached per
(query text, product), so fused and plain re-ranking share one pass of the model)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


class Rerank:
    """A cross-encoder re-ranking the top `depth` of a first-stage system; the rest keeps its order."""

    def __init__(self, ranker, base, texts: dict[str, str], depth: int, base_name: str):
        self.ranker, self.base, self.texts, self.depth = ranker, base, texts, depth
        self.about = f"cross-encoder {ranker.version.name} re-ranking the top {depth} of {base_name}"
        self._cache: dict[tuple[str, str], float] = {}  # (query text, product id) -> score, shared with RerankFusion

    def prepare(self, queries: list[dict]) -> None:
        self.base.prepare(queries)

    def scores(self, q: dict, pids: Sequence[str]) -> list[float]:
        todo = [p for p in dict.fromkeys(pids) if (q["text"], p) not in self._cache]
        if todo:
            fresh = self.ranker.score(q["text"], [self.texts[p] for p in todo])
            self._cache.update({(q["text"], p): float(s) for p, s in zip(todo, fresh)})
        return [self._cache[(q["text"], p)] for p in pids]

    def judged(self, q: dict, pids: list[str]) -> dict[str, Optional[float]]:
        return dict(zip(pids, self.scores(q, pids)))

    def candidates(self, q: dict, depth: int) -> tuple[list[str], list[str], list[str]]:
        """The base system's top `self.depth` in its order and in the ranker's, and what follows
        them (kept in the base order)."""
        found = self.base.retrieve(q, max(depth, self.depth))
        head = found[:self.depth]
        order = np.argsort(-np.asarray(self.scores(q, head)), kind="stable")
        return head, [head[i] for i in order], found[self.depth:]

    def retrieve(self, q: dict, depth: int) -> list[str]:
        _, reranked, tail = self.candidates(q, depth)
        return (reranked + tail)[:depth]


def score_pairs(ranker, queries: Sequence[str], docs: Sequence[str], batch_size: int = 64) -> list[float]:
    """Cross-encoder scores of (query, product text) pairs that may belong to several requests: one
    forward pass per `batch_size` pairs however many queries they hold (Serve's cross-request
    batching). `ranker` is a registry `LoadedModel` of task ranker (its product cache is used);
    the same scores as `ranker.score`."""
    from ray_app.models.scoring import score_pairs as model_scores

    return model_scores(ranker.model, ranker.tokenizer, queries, docs, ranker.max_length, batch_size,
                        getattr(ranker, "product_cache", None))
