"""Per-user top-k metrics with binary relevance, catalogue coverage and sampled AUC (pure numpy).

Conventions (those of `ray_app.metrics`): a user with no relevant item has undefined metrics (NaN)
and is skipped by means; NDCG's ideal ranking puts min(|relevant|, k) hits first; MAP@k divides by
min(|relevant|, k) so a perfect top-k scores 1 even when more items are relevant; MRR counts the
first hit within k only. Duplicates in a ranked list count once (at their first position).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ray_app.metrics import dcg_at_k
from ray_app.metrics import recall_at_k as _recall_at_k

ScoreFn = Callable[[str, list[str]], np.ndarray]


def _hits(ranked: Sequence[str], relevant: set[str], k: int) -> np.ndarray:
    seen: set[str] = set()
    out = []
    for item in list(ranked)[:k]:
        out.append(item in relevant and item not in seen)
        seen.add(item)
    return np.asarray(out, dtype=bool)


def ndcg_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """Binary-gain NDCG@k of a ranked list against a relevant set; NaN when nothing is relevant."""
    rel = set(relevant)
    if not rel:
        return float("nan")
    ideal = dcg_at_k(np.ones(min(len(rel), k)), k, exponential=False)
    return dcg_at_k(_hits(ranked, rel, k).astype(np.float64), k, exponential=False) / ideal


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """Share of the relevant items in the top k; NaN when nothing is relevant."""
    return _recall_at_k(ranked, relevant, k)


def precision_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """Hits in the top k divided by k (a short list is not rewarded); NaN when nothing is relevant."""
    rel = set(relevant)
    return float(_hits(ranked, rel, k).sum() / k) if rel else float("nan")


def average_precision_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """AP@k: mean of precision at each hit within k, over min(|relevant|, k); NaN when nothing is relevant."""
    rel = set(relevant)
    if not rel:
        return float("nan")
    hits = _hits(ranked, rel, k)
    precisions = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(precisions[hits].sum() / min(len(rel), k))


def hit_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """1 when some relevant item is in the top k, else 0; NaN when nothing is relevant."""
    rel = set(relevant)
    return float(_hits(ranked, rel, k).any()) if rel else float("nan")


def reciprocal_rank(ranked: Sequence[str], relevant: Iterable[str], k: int = 10) -> float:
    """1 / position of the first relevant item within k, else 0; NaN when nothing is relevant."""
    rel = set(relevant)
    if not rel:
        return float("nan")
    first = np.flatnonzero(_hits(ranked, rel, k))
    return float(1.0 / (first[0] + 1)) if first.size else 0.0


def metric_names(k: int = 10) -> list[str]:
    """The keys `user_metrics` returns, in report order."""
    return [f"ndcg@{k}", f"recall@{k}", f"precision@{k}", f"map@{k}", f"hr@{k}", "mrr"]


def user_metrics(ranked: Sequence[str], relevant: Iterable[str], k: int = 10) -> dict[str, float]:
    """All per-user figures of one ranked list (MRR is cut at k too)."""
    rel = set(relevant)
    values = (ndcg_at_k(ranked, rel, k), recall_at_k(ranked, rel, k), precision_at_k(ranked, rel, k),
              average_precision_at_k(ranked, rel, k), hit_at_k(ranked, rel, k), reciprocal_rank(ranked, rel, k))
    return dict(zip(metric_names(k), values))


def catalogue_coverage(lists: Iterable[Sequence[str]], catalogue_size: int) -> float:
    """Share of the catalogue that appears in at least one recommendation list."""
    if catalogue_size <= 0:
        raise ValueError(f"catalogue_size must be positive, got {catalogue_size}")
    shown = set()
    for items in lists:
        shown.update(items)
    return len(shown) / catalogue_size


def pair_auc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Share of (positive, negative) pairs ordered right, ties counting half; NaN without pairs."""
    pos = np.asarray(positive_scores, dtype=np.float64)[:, None]
    neg = np.asarray(negative_scores, dtype=np.float64)[None, :]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    # == also holds for -inf == -inf: two items a system cannot score are a tie, not a win
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def per_user_auc(score_fn: ScoreFn, users: Sequence[str], positives: Mapping[str, Iterable[str]],
                 catalogue: Sequence[str], negatives: int = 100, seed: int = 0,
                 exclude: Optional[Mapping[str, Iterable[str]]] = None) -> list[float]:
    """Sampled AUC of each user in `users` order (NaN for a user without positives or negatives)."""
    items = np.asarray(sorted(set(catalogue)), dtype=object)
    pos_of = {item: n for n, item in enumerate(items)}
    rng = np.random.default_rng(seed)
    out = []
    for user in users:
        pos = sorted(set(positives.get(user, ())))
        # negatives are items the user has not bought at all, as far as the split knows
        banned = [pos_of[i] for i in (*pos, *(exclude or {}).get(user, ())) if i in pos_of]
        allowed = np.ones(items.size, dtype=bool)
        allowed[banned] = False
        pool = np.flatnonzero(allowed)
        if not pos or pool.size == 0:
            out.append(float("nan"))
            continue
        neg = list(items[rng.choice(pool, size=min(negatives, pool.size), replace=False)])
        scores = np.asarray(score_fn(user, pos + neg), dtype=np.float64)
        out.append(pair_auc(scores[: len(pos)], scores[len(pos):]))
    return out


def sampled_auc(score_fn: ScoreFn, users: Sequence[str], positives: Mapping[str, Iterable[str]],
                catalogue: Sequence[str], negatives: int = 100, seed: int = 0,
                exclude: Optional[Mapping[str, Iterable[str]]] = None) -> float:
    """Mean over users of the AUC of their held-out positives vs uniformly sampled non-positive items."""
    values = [v for v in per_user_auc(score_fn, users, positives, catalogue, negatives, seed, exclude)
              if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
