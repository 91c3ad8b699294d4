"""Metrics against values computed by hand or by brute force, never against the code under test."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ray_app import metrics as M

pytestmark = pytest.mark.unit


def test_ndcg_hand_computed():
    # ranked gains 0, 3, 2: DCG = 0 + (2^3-1)/log2(3) + (2^2-1)/log2(4); ideal 3, 2, 0
    dcg = 7 / math.log2(3) + 3 / 2
    idcg = 7 + 3 / math.log2(3)
    assert M.ndcg_at_k([0.9, 0.8, 0.7], [0, 3, 2], k=10) == pytest.approx(dcg / idcg)
    assert M.ndcg_at_k([0.9, 0.8, 0.7], [0, 3, 2], k=10) == pytest.approx(0.66532, abs=1e-5)
    assert M.ndcg_at_k([0.9, 0.8, 0.7], [0, 3, 2], k=1) == 0.0
    assert M.ndcg_at_k([3, 2, 1], [3, 2, 0]) == pytest.approx(1.0)
    # linear gains: (3/log2(3) + 2/2) / (3 + 2/log2(3))
    assert M.ndcg_at_k([0.9, 0.8, 0.7], [0, 3, 2], exponential=False) == pytest.approx(
        (3 / math.log2(3) + 1) / (3 + 2 / math.log2(3)))


def test_ndcg_ties_keep_input_order_and_no_relevant_is_nan():
    assert M.ndcg_at_k([1, 1], [0, 3], k=1) == 0.0  # tie: first item ranked first
    assert math.isnan(M.ndcg_at_k([1, 2], [0, 0]))
    assert M.mean_ndcg_at_k([([1, 2], [0, 0]), ([2, 1], [3, 0])]) == pytest.approx(1.0)
    assert M.mean_ndcg_at_k([]) == 0.0


def test_mrr_recall_and_reciprocal_rank():
    assert M.mrr([["a", "b", "c"], ["x", "y"]], [{"b"}, {"z"}]) == pytest.approx(0.25)
    assert M.reciprocal_rank([0.1, 0.9, 0.5], [True, False, False]) == pytest.approx(1 / 3)
    assert M.reciprocal_rank([0.1, 0.9], [False, False]) == 0.0
    assert M.recall_at_k(["a", "b", "c", "d"], {"a", "d", "e"}, k=2) == pytest.approx(1 / 3)
    assert M.recall_at_k(["a", "b", "c", "d"], {"a", "d", "e"}, k=4) == pytest.approx(2 / 3)
    assert math.isnan(M.recall_at_k(["a"], set(), k=1))


def test_retrieval_metrics_matrix():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.5, 0.5, 0.5]])
    relevant = np.array([[False, False, True], [True, False, False], [False, False, False]])
    out = M.retrieval_metrics(scores, relevant, ks=(1, 2))
    assert out["queries"] == 2  # the third query has nothing relevant: skipped
    assert out["mrr"] == pytest.approx(0.5)
    assert out["recall@1"] == 0.0
    assert out["recall@2"] == pytest.approx(1.0)


def test_span_f1_exact_match():
    gold = [[(0, 4, "brand"), (5, 10, "category")]]
    pred = [[(0, 4, "brand"), (5, 9, "category"), (11, 13, "colour")]]
    assert M.span_counts(gold, pred) == (1, 2, 1)
    out = M.span_f1(gold, pred)
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["f1"] == pytest.approx(0.4)
    assert M.span_f1([[]], [[]])["f1"] == 1.0


def test_macro_f1_and_accuracy():
    y_true, y_pred = ["a", "a", "b", "c"], ["a", "b", "b", "a"]
    # a: tp1 fp1 fn1 -> 1/2; b: tp1 fp1 fn0 -> 2/3; c: tp0 fn1 -> 0
    assert M.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert M.accuracy(y_true, y_pred) == pytest.approx(0.5)
    # a declared class that nobody used counts as F1 0; one left out of `labels` is not averaged
    assert M.macro_f1(["a", "b"], ["a", "b"], labels=["a", "b", "c"]) == pytest.approx(2 / 3)
    assert M.macro_f1(y_true, y_pred, labels=["a", "b"]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert M.accuracy([], []) == 0.0 and M.macro_f1([], []) == 0.0


def test_labels_of_any_hashable_type():
    # None and 1 vs "1" are distinct classes: a, None -> F1 1; 1 -> 0 (missed); "1" -> 0 (false positive)
    y_true, y_pred = ["a", None, 1], ["a", None, "1"]
    assert M.accuracy(y_true, y_pred) == pytest.approx(2 / 3)
    assert M.macro_f1(y_true, y_pred) == pytest.approx(0.5)


def test_cohen_kappa_hand_computed():
    # po = 4/5; marginals a 2|1, b 2|3, c 1|1 -> pe = (2 + 6 + 1) / 25; kappa = (0.8 - 0.36) / 0.64
    assert M.cohen_kappa(list("aabbc"), list("abbbc")) == 0.6875
    assert M.cohen_kappa(list("aabb"), list("abab")) == 0.0  # agreement exactly at chance
    assert M.cohen_kappa(list("aabb"), list("bbaa")) == -1.0
    assert M.cohen_kappa(list("aaa"), list("aaa")) == 1.0  # one class: chance agreement 1, counted as 1
    assert M.cohen_kappa([], []) is None
    # po 5/6, pe (2 + 20) / 36: kappa 8/14, rounded to 4 places
    assert M.cohen_kappa(list("aabbbb"), list("abbbbb")) == 0.5714


def brute_force_auc(y, s) -> float:
    """Share of (positive, negative) pairs ranked the right way round, ties half."""
    pos = [v for v, t in zip(s, y) if t]
    neg = [v for v, t in zip(s, y) if not t]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


def test_roc_auc_hand_computed_and_ties():
    assert M.roc_auc([1, 0, 1, 0], [0.8, 0.4, 0.35, 0.1]) == pytest.approx(0.75)
    assert M.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.roc_auc([0, 1], [0.9, 0.1]) == 0.0
    assert math.isnan(M.roc_auc([1, 1], [0.1, 0.2])) and math.isnan(M.roc_auc([], []))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # many ties
    assert M.roc_auc(y, s) == pytest.approx(brute_force_auc(y, s))
