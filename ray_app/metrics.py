"""Evaluation metrics shared by training, tuning and offline evaluation (pure numpy, no Ray).

Conventions, chosen once so every job reports comparable numbers:
- NDCG uses exponential gain (2^g - 1) with log2 discounts; ties in score keep input order.
  A query whose judged items are all gain 0 has no ideal ranking: `ndcg_at_k` returns NaN and
  the mean metrics skip it (rather than counting it as 0 or 1).
- Recall@k is over the query's relevant items; MRR uses the first relevant item (0 if none ranked).
- Span F1 is micro-averaged exact match on (start, end, type); macro-F1 averages per-class F1
  over the classes seen in truth or prediction (scikit-learn's default).
"""
from __future__ import annotations

import math
from typing import Hashable, Iterable, Optional, Sequence

import numpy as np


def _rank(scores: Sequence[float]) -> np.ndarray:
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def dcg_at_k(gains_in_rank_order: Sequence[float], k: int = 10, exponential: bool = True) -> float:
    """Discounted cumulative gain of the first k gains, already in ranked order."""
    g = np.asarray(gains_in_rank_order, dtype=np.float64)[:k]
    if exponential:
        g = np.power(2.0, g) - 1.0
    return float(np.sum(g / np.log2(np.arange(2, g.size + 2))))


def ndcg_at_k(scores: Sequence[float], gains: Sequence[float], k: int = 10, exponential: bool = True) -> float:
    """NDCG@k of one query's items ranked by `scores`; NaN when no item has positive gain."""
    gains = np.asarray(gains, dtype=np.float64)
    ideal = dcg_at_k(np.sort(gains)[::-1], k, exponential)
    if ideal <= 0:
        return float("nan")
    return dcg_at_k(gains[_rank(scores)], k, exponential) / ideal


def mean_ndcg_at_k(per_query: Iterable[tuple[Sequence[float], Sequence[float]]], k: int = 10) -> float:
    """Mean NDCG@k over (scores, gains) pairs, skipping queries without a relevant item."""
    values = [ndcg_at_k(s, g, k) for s, g in per_query]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else 0.0


def reciprocal_rank(scores: Sequence[float], relevant: Sequence[bool]) -> float:
    """1 / rank of the first relevant item when ranked by score; 0 when none is relevant."""
    rel = np.asarray(relevant, dtype=bool)[_rank(scores)]
    hits = np.flatnonzero(rel)
    return float(1.0 / (hits[0] + 1)) if hits.size else 0.0


def recall_at_k(ranked_ids: Sequence[Hashable], relevant_ids: Iterable[Hashable], k: int = 10) -> float:
    """Share of the relevant ids found in the first k ranked ids; NaN when nothing is relevant."""
    relevant = set(relevant_ids)
    if not relevant:
        return float("nan")
    return len(relevant.intersection(list(ranked_ids)[:k])) / len(relevant)


def mrr(ranked_ids_per_query: Sequence[Sequence[Hashable]], relevant_per_query: Sequence[Iterable[Hashable]]) -> float:
    """Mean reciprocal rank over queries given ranked ids and relevant id sets."""
    values = []
    for ranked, rel in zip(ranked_ids_per_query, relevant_per_query):
        rel = set(rel)
        rr = next((1.0 / (i + 1) for i, x in enumerate(ranked) if x in rel), 0.0)
        values.append(rr)
    return float(np.mean(values)) if values else 0.0


def retrieval_metrics(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """MRR and recall@k from a (queries x candidates) score matrix and boolean relevance matrix.

    Queries with no relevant candidate are skipped. Used for the bi-encoder's in-batch /
    in-validation-set evaluation.
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    keep = relevant.any(axis=1)
    out = {"mrr": 0.0, **{f"recall@{k}": 0.0 for k in ks}, "queries": int(keep.sum())}
    if not keep.any():
        return out
    order = np.argsort(-scores[keep], axis=1, kind="stable")
    ranked_rel = np.take_along_axis(relevant[keep], order, axis=1)
    first = ranked_rel.argmax(axis=1)
    out["mrr"] = float(np.mean(1.0 / (first + 1)))
    n_rel = ranked_rel.sum(axis=1)
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(ranked_rel[:, :k].sum(axis=1) / n_rel))
    return out


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    if len(y_true) == 0:
        return 0.0
    return float(np.mean([t == p for t, p in zip(y_true, y_pred)]))


def macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Optional[Sequence[Hashable]] = None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: classes in truth or prediction)."""
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred), key=str)
    if not labels:
        return 0.0
    f1s = []
    for c in labels:
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s))


def span_counts(gold: Sequence[Iterable[tuple]], pred: Sequence[Iterable[tuple]]) -> tuple[int, int, int]:
    """(tp, fp, fn) of exact (start, end, type) span matches summed over examples."""
    tp = fp = fn = 0
    for g, p in zip(gold, pred):
        g, p = {tuple(x) for x in g}, {tuple(x) for x in p}
        tp += len(g & p)
        fp += len(p - g)
        fn += len(g - p)
    return tp, fp, fn


def prf_from_counts(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Precision, recall, F1 from counts (0 where undefined; F1 = 1 when nothing to find or found)."""
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def span_f1(gold: Sequence[Iterable[tuple]], pred: Sequence[Iterable[tuple]]) -> dict[str, float]:
    """Micro precision/recall/F1 of exact-match entity spans."""
    return prf_from_counts(*span_counts(gold, pred))


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half); NaN if one class is absent."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = np.empty_like(s)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
