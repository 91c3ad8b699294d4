"""Recommendation metrics against values computed by hand on small lists."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ray_app.recs import metrics as R

pytestmark = pytest.mark.unit


def test_ranked_list_metrics_hand_computed():
    ranked, relevant = ["a", "b", "c", "d"], {"b", "d", "e"}
    # hits at ranks 2 and 4; ideal: 3 hits at ranks 1-3
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert R.ndcg_at_k(ranked, relevant, k=4) == pytest.approx(dcg / idcg)
    assert R.ndcg_at_k(ranked, relevant, k=4) == pytest.approx(0.49819, abs=1e-5)
    assert R.recall_at_k(ranked, relevant, k=4) == pytest.approx(2 / 3)
    assert R.precision_at_k(ranked, relevant, k=4) == pytest.approx(0.5)
    assert R.average_precision_at_k(ranked, relevant, k=4) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert R.hit_at_k(ranked, relevant, k=4) == 1.0
    assert R.reciprocal_rank(ranked, relevant, k=4) == pytest.approx(0.5)
    # nothing in the top 1
    assert [R.ndcg_at_k(ranked, relevant, 1), R.precision_at_k(ranked, relevant, 1),
            R.hit_at_k(ranked, relevant, 1), R.reciprocal_rank(ranked, relevant, 1)] == [0.0, 0.0, 0.0, 0.0]


def test_cut_at_k_normalises_by_min_relevant_k():
    # three relevant, k=2, both slots hit: AP and NDCG are perfect, recall is not
    assert R.average_precision_at_k(["a", "b", "x"], {"a", "b", "c"}, k=2) == pytest.approx(1.0)
    assert R.ndcg_at_k(["a", "b", "x"], {"a", "b", "c"}, k=2) == pytest.approx(1.0)
    assert R.recall_at_k(["a", "b", "x"], {"a", "b", "c"}, k=2) == pytest.approx(2 / 3)
    # a short list is not rewarded by precision: 1 hit over k=5
    assert R.precision_at_k(["a"], {"a"}, k=5) == pytest.approx(0.2)


def test_duplicates_count_once_and_empty_relevance_is_nan():
    assert R.precision_at_k(["a", "a", "b"], {"a"}, k=3) == pytest.approx(1 / 3)
    assert R.ndcg_at_k(["a", "a"], {"a", "b"}, k=2) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    for fn in (R.ndcg_at_k, R.recall_at_k, R.precision_at_k, R.average_precision_at_k, R.hit_at_k, R.reciprocal_rank):
        assert math.isnan(fn(["a"], set(), 10))


def test_user_metrics_keys_and_values():
    got = R.user_metrics(["x", "a"], {"a"}, k=10)
    assert list(got) == R.metric_names(10) == ["ndcg@10", "recall@10", "precision@10", "map@10", "hr@10", "mrr"]
    assert got["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert got["map@10"] == pytest.approx(0.5)
    assert got["precision@10"] == pytest.approx(0.1)
    assert got["mrr"] == pytest.approx(0.5)


def test_catalogue_coverage():
    assert R.catalogue_coverage([["a", "b"], ["b", "c"], []], 10) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="catalogue_size"):
        R.catalogue_coverage([["a"]], 0)


def test_pair_auc_ties_count_half():
    # 3 beats all 3 negatives; 1 loses to 2, ties 1, beats 0 -> (3 + 1 + 0.5) / 6
    assert R.pair_auc(np.array([3.0, 1.0]), np.array([2.0, 1.0, 0.0])) == pytest.approx(0.75)
    assert R.pair_auc(np.array([-np.inf]), np.array([-np.inf, 0.0])) == pytest.approx(0.25)
    assert math.isnan(R.pair_auc(np.array([]), np.array([1.0])))


def test_sampled_auc_order_and_sampling():
    catalogue = [f"i{n}" for n in range(30)]
    positives = {"u1": {"i0", "i1"}, "u2": {"i5"}}
    exclude = {"u1": {"i2", "i3"}}
    asked: list[tuple[str, list[str]]] = []

    def perfect(user: str, items: list[str]) -> np.ndarray:
        asked.append((user, list(items)))
        return np.array([1.0 if i in positives[user] else 0.0 for i in items])

    assert R.sampled_auc(perfect, ["u1", "u2"], positives, catalogue, negatives=10, seed=3, exclude=exclude) == 1.0
    for user, items in asked:
        negs = items[len(positives[user]):]
        assert len(negs) == len(set(negs)) == 10
        assert not set(negs) & (positives[user] | exclude.get(user, set()))
    first = [items for _, items in asked]
    asked.clear()
    R.sampled_auc(perfect, ["u1", "u2"], positives, catalogue, negatives=10, seed=3, exclude=exclude)
    assert [items for _, items in asked] == first  # same seed, same negatives

    def reverse(user: str, items: list[str]) -> np.ndarray:
        return -perfect(user, items)

    assert R.sampled_auc(reverse, ["u1", "u2"], positives, catalogue, negatives=10) == 0.0
    assert R.sampled_auc(lambda u, i: np.zeros(len(i)), ["u1"], positives, catalogue) == 0.5
    # more negatives asked than exist: all 26 non-positive, non-excluded items are used
    asked.clear()
    R.sampled_auc(perfect, ["u1"], positives, catalogue, negatives=500, exclude=exclude)
    assert len(asked[0][1]) == 2 + 26
    # a user without positives is skipped, not scored 0
    got = R.per_user_auc(perfect, ["u2", "u3"], positives, catalogue)
    assert got[0] == 1.0 and math.isnan(got[1])
    assert R.sampled_auc(perfect, ["u2", "u3"], positives, catalogue) == 1.0
