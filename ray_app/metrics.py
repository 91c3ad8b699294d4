"""Evaluation metrics shared by training, tuning and offline evaluation (pure numpy, no Ray).

Conventions, chosen once so every job reports comparable numbers:
- NDCG uses exponential gain (2^g - 1) with log2 discounts; ties in score keep input order.
  A query whose judged items are all gain 0 has no ideal ranking: `ndcg_at_k` returns NaN and
  the mean metrics skip it (rather than counting it as 0 or 1).
- Recall@k is over the query's relevant items; MRR uses the first relevant item (0 if none ranked).
- Span F1 is micro-averaged exact match on (start, end, type); macro-F1 averages per-class F1
  over the classes seen in truth or prediction (scikit-learn's default).
Accuracy, macro-F1, ROC AUC and Cohen's kappa are scikit-learn's; the wrappers here fix the
conventions above (empty input, a class that is never predicted, labels of any hashable type).
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


def _sklearn_metrics():
    # imported on first use: sklearn.metrics takes ~2 s to import and most callers (ranking
    # metrics in training and tuning workers) never need it
    from sklearn import metrics

    return metrics


def _encode(*columns: Sequence[Hashable], labels: Optional[Sequence[Hashable]] = None) -> tuple[list[np.ndarray], list[int]]:
    """Labels of any hashable type (None, mixed str/int) as integer codes, for scikit-learn."""
    codes: dict[Hashable, int] = {}
    for c in labels or []:
        codes.setdefault(c, len(codes))
    encoded = [np.asarray([codes.setdefault(v, len(codes)) for v in col], dtype=np.int64) for col in columns]
    return encoded, [codes[c] for c in labels] if labels is not None else sorted(codes.values())


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Share of exact matches; 0 without items."""
    if len(y_true) == 0:
        return 0.0
    (t, p), _ = _encode(y_true, y_pred)
    return float(_sklearn_metrics().accuracy_score(t, p))


def macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Optional[Sequence[Hashable]] = None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: classes in truth or prediction)."""
    (t, p), codes = _encode(y_true, y_pred, labels=list(labels) if labels is not None else None)
    if not codes:
        return 0.0
    # zero_division=0: a class never predicted nor present scores 0, as in the hand-computed tests
    return float(_sklearn_metrics().f1_score(t, p, labels=codes, average="macro", zero_division=0.0))


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> Optional[float]:
    """Cohen's kappa of two raters over the same items, rounded to 4 places (None without items)."""
    if len(a) == 0:
        return None
    (x, y), codes = _encode(a, b)
    if len(codes) == 1:  # one class used by both raters: chance agreement is 1, kappa undefined
        return 1.0
    return round(float(_sklearn_metrics().cohen_kappa_score(x, y)), 4)


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
    """Area under the ROC curve (ties count half); NaN if one class is absent."""
    y = np.asarray(labels).astype(bool)
    if y.size == 0 or y.all() or not y.any():
        return float("nan")
    return float(_sklearn_metrics().roc_auc_score(y, np.asarray(scores, dtype=np.float64)))
