"""Evaluation protocols against hand-computed figures, RRF fusion, exact search and the index rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ray_app.evaluation import (catalogue_metrics, compare_systems, entity_type_metrics, judged_list_metrics,
                                markdown_table, mean_metrics, paired_bootstrap, query_understanding_metrics, render_report)
from ray_app.index import default_sub_vectors, exact_search, index_plan, plan_embedding, rrf, text_hash

pytestmark = pytest.mark.unit


def test_judged_list_ndcg_esci_gains_hand_computed():
    # ranked by score: b (S), c (I), a (E), then d (C) which the system could not score
    grades = {"a": "E", "b": "S", "c": "I", "d": "C"}
    scores = {"a": 0.1, "b": 0.9, "c": 0.5, "d": None}
    got = judged_list_metrics(grades, scores, k=10)
    # linear ESCI gains: DCG = 0.1/1 + 0/log2(3) + 1.0/log2(4) + 0.01/log2(5) = 0.6043068
    #                    IDCG = 1.0/1 + 0.1/log2(3) + 0.01/log2(4) + 0 = 1.0680930
    assert got["ndcg_esci"] == pytest.approx(0.6043068 / 1.0680930, abs=1e-6)
    assert got["ndcg_esci"] == pytest.approx(0.565781, abs=1e-6)
    # 3/2/1/0, exponential: DCG = 3 + 0 + 7/2 + 1/log2(5); IDCG = 7 + 3/log2(3) + 1/2
    assert got["ndcg@10"] == pytest.approx(0.737872, abs=1e-6)


def test_judged_list_ties_do_not_leak_the_stored_order():
    e_first = {"a": "E", "b": "E", "c": "S", "d": "I", "e": "I"}
    i_first = dict(reversed(list(e_first.items())))
    flat = {p: 1.0 for p in e_first}
    assert judged_list_metrics(e_first, flat) == judged_list_metrics(i_first, flat)
    unscored = {p: None for p in e_first}
    assert judged_list_metrics(e_first, unscored) == judged_list_metrics(i_first, flat)
    perfect = judged_list_metrics(e_first, {"a": 5, "b": 4, "c": 3, "d": 2, "e": 1})
    assert perfect["ndcg_esci"] == pytest.approx(1.0) and perfect["ndcg@10"] == pytest.approx(1.0)


def test_judged_list_all_irrelevant_is_undefined():
    got = judged_list_metrics({"a": "I", "b": "I"}, {"a": 1.0, "b": 0.0})
    assert math.isnan(got["ndcg_esci"]) and math.isnan(got["ndcg@10"])


def test_full_catalogue_unjudged_count_as_irrelevant():
    grades = {"a": "E", "b": "S", "c": "E", "d": "I"}  # c is never retrieved
    ranked = ["x", "a", "y", "b", "d"]  # x, y unjudged
    got = catalogue_metrics(ranked, grades, k=10, recall_k=3)
    # DCG = 7/log2(3) + 3/log2(5); IDCG over the judged gains [3, 3, 2, 0] = 7 + 7/log2(3) + 3/2
    assert got["ndcg@10"] == pytest.approx(0.441957, abs=1e-6)
    assert got["recall@3"] == pytest.approx(1 / 3)  # only a of {a, b, c} in the first 3
    assert got["mrr"] == pytest.approx(0.5)
    assert catalogue_metrics(ranked, grades, k=10, recall_k=100)["recall@100"] == pytest.approx(2 / 3)
    none_relevant = catalogue_metrics(["x"], {"d": "I", "e": "C"}, recall_k=100)
    assert math.isnan(none_relevant["recall@100"]) and math.isnan(none_relevant["mrr"])
    assert none_relevant["ndcg@10"] == 0.0  # a C judgment gives an ideal ranking, nothing retrieved


def test_mean_metrics_skips_undefined():
    got = mean_metrics([{"m": 1.0, "n": float("nan")}, {"m": 0.5, "n": float("nan")}])
    assert got["m"] == 0.75 and math.isnan(got["n"]) and got["queries"] == 2


def test_rrf_order_and_ties():
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]], k=60)
    assert [d for d, _ in fused] == ["a", "c", "b", "d"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62) and fused[1][1] == pytest.approx(1 / 63 + 1 / 61)
    assert [d for d, _ in rrf([["a", "b"], ["b", "a"]])] == ["a", "b"]  # tie: same best rank -> first seen
    assert [d for d, _ in rrf([["x"], ["y", "z"]], limit=2)] == ["x", "y"]
    assert rrf([]) == []


def test_exact_search_matches_argsort():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    idx, scores = exact_search(matrix, queries, 10, chunk=3)
    full = queries @ matrix.T
    assert (idx == np.argsort(-full, axis=1)[:, :10]).all()
    assert np.allclose(scores, np.take_along_axis(full, idx, axis=1))
    assert exact_search(matrix[:4], queries[:1], 10)[0].shape == (1, 4)


def test_index_rule():
    assert index_plan(5_000, 384)["type"] == "none"
    big = index_plan(100_000, 384)
    assert big["type"] == "IVF_PQ" and big["params"]["num_partitions"] == 316 and big["params"]["num_sub_vectors"] == 48
    assert big["params"]["refine_factor"] == 10
    huge = index_plan(1_000_000, 384)["params"]  # benchmarks/index.py: refine 10 keeps 0.74 of the top-10 at 1M, 50 keeps 0.979
    assert (huge["num_partitions"], huge["refine_factor"]) == (1000, 50)
    assert index_plan(100, 384, index="ivf_pq")["type"] == "none"  # too few rows to train PQ
    assert index_plan(50_000, 384, index="ivf_hnsw_sq")["type"] == "IVF_HNSW_SQ"
    assert (default_sub_vectors(384), default_sub_vectors(32), default_sub_vectors(100)) == (48, 4, 10)


def test_plan_embedding_only_changed_rows():
    text = lambda r: r["title"]  # noqa: E731
    rows = [{"product_id": "fresh", "title": "t1", "vector": True, "vector_model": "m", "vector_text_hash": text_hash("t1")},
            {"product_id": "edited", "title": "t2 new", "vector": True, "vector_model": "m", "vector_text_hash": text_hash("t2")},
            {"product_id": "other-model", "title": "t3", "vector": True, "vector_model": "old", "vector_text_hash": text_hash("t3")},
            {"product_id": "new", "title": "t4", "vector": None, "vector_model": None, "vector_text_hash": None}]
    todo, skipped = plan_embedding(rows, text, "m")
    assert skipped == 1 and [r["product_id"] for r in todo] == ["edited", "other-model", "new"]
    assert todo[0]["text_hash"] == text_hash("t2 new")
    assert len(plan_embedding(rows, text, "m", force=True)[0]) == 4


def test_query_understanding_metrics():
    gold = [{"intent": "brand_query", "spans": [{"start": 0, "end": 4, "type": "brand"}]},
            {"intent": "product_search", "spans": [{"start": 0, "end": 3, "type": "colour"}, {"start": 4, "end": 9, "type": "category"}]},
            {"intent": "", "spans": []}]
    pred = [{"intent": "brand_query", "entities": [{"start": 0, "end": 4, "type": "brand", "text": "sony"}]},
            {"intent": "brand_query", "entities": [{"start": 0, "end": 3, "type": "colour"}]},
            {"intent": "order_support", "entities": []}]
    got = query_understanding_metrics(gold, pred)
    assert got["intent_accuracy"] == 0.5 and got["intent_queries"] == 2
    assert got["intent_macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2, abs=1e-4)  # brand_query 2/3, product_search 0
    assert got["entity_precision"] == 1.0 and got["entity_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert got["exact_match"] == 0.5
    by_type = entity_type_metrics(gold, pred)
    assert list(by_type) == ["brand", "category", "colour"]  # most gold spans first, then by name
    assert by_type["category"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "gold": 1, "predicted": 0}
    assert by_type["brand"]["f1"] == 1.0 and by_type["colour"]["gold"] == by_type["colour"]["predicted"] == 1
    text = render_report({"created_at": "now", "db": "x", "products": 0, "products_version": 1,
                          "split": "test", "queries": 0, "k": 10, "recall_k": 100,
                          "query_understanding": got, "entity_types": by_type,
                          "intent_model": {"version": "intent_entity-v4", "requested": "intent_entity@latest",
                                           "base_model": "minilm", "snapshot": "snips", "created_at": "2026-12-01"}})
    assert "| entity type | F1 |" in text
    assert "Model `intent_entity-v4` (asked for `intent_entity@latest`), base `minilm`, trained on snapshot `snips`" in text


def test_report_renders_tables():
    assert markdown_table({"bm25": {"m": 0.5, "q": 3}}, [("m", "M"), ("q", "Q")]).splitlines()[2] == "| bm25 | 0.5000 | 3 |"
    payload = {"created_at": "now", "db": "x", "products": 10, "products_version": 3, "split": "test", "queries": 2,
               "k": 10, "recall_k": 100, "judged_list": {"bm25": {"ndcg_esci": 0.9, "ndcg@10": None, "queries": 2}},
               "full_catalogue": {"bm25": {"ndcg@10": 0.3, "recall@100": 0.5, "mrr": 0.4, "queries": 2}},
               "skipped": {"ranker": "not given"}}
    text = render_report(payload)
    assert "| bm25 | 0.9000 | – | 2 |" in text and "Recall@100" in text and "ranker: not given" in text


def test_paired_bootstrap_constant_shift_and_identity():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0.2, 0.9, size=50)  # very different queries: a paired test sees only the shift
    shifted = paired_bootstrap(ref + 0.02, ref)
    assert shifted["diff"] == pytest.approx(0.02) and shifted["ci_low"] == pytest.approx(0.02)
    assert shifted["ci_high"] == pytest.approx(0.02) and shifted["p_better"] == 1.0 and shifted["queries"] == 50
    same = paired_bootstrap(ref, ref)
    assert same["diff"] == 0.0 and same["p_better"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.0


def test_paired_bootstrap_interval_covers_noise_and_is_seeded():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 1, size=65)
    noisy = ref + rng.normal(0.0, 0.05, size=65)  # no real difference
    got = paired_bootstrap(noisy, ref, seed=3)
    assert got["ci_low"] < 0 < got["ci_high"] and 0.05 < got["p_better"] < 0.95
    assert got == paired_bootstrap(noisy, ref, seed=3)
    # the interval is the spread of the mean: about 1.96 * sd / sqrt(n) each side
    half = (got["ci_high"] - got["ci_low"]) / 2
    assert half == pytest.approx(1.96 * np.std(noisy - ref) / np.sqrt(65), rel=0.2)


def test_paired_bootstrap_drops_undefined_pairs():
    got = paired_bootstrap([0.5, float("nan"), 0.7, 0.4], [0.4, 0.9, float("nan"), 0.3])
    assert got["queries"] == 2 and got["diff"] == pytest.approx(0.1)
    empty = paired_bootstrap([float("nan")], [0.3])
    assert empty["queries"] == 0 and math.isnan(empty["diff"])
    with pytest.raises(ValueError, match="one figure per query"):
        paired_bootstrap([0.1, 0.2], [0.1])


def test_compare_systems_against_reference_and_report():
    per_query = {"bm25": [{"ndcg_esci": 0.5}, {"ndcg_esci": 0.6}], "ranker": [{"ndcg_esci": 0.7}, {"ndcg_esci": 0.8}]}
    table = compare_systems(per_query, "bm25", ["ndcg_esci"])
    assert set(table) == {"ranker"} and table["ranker"]["ndcg_esci"]["diff"] == pytest.approx(0.2)
    assert compare_systems(per_query, "hybrid", ["ndcg_esci"]) == {}
    payload = {"created_at": "now", "db": "x", "products": 10, "products_version": 3, "split": "test", "queries": 2,
               "k": 10, "recall_k": 100, "judged_list": {"bm25": {"ndcg_esci": 0.55, "queries": 2}},
               "comparisons": {"reference": "bm25", "resamples": 2000, "judged_list": table}}
    text = render_report(payload)
    assert "Against bm25, judged list" in text and "| ranker | +0.2000 [+0.2000, +0.2000] | 1.00 |" in text


class _FixedRanker:
    """A stand-in for a loaded ranker with known scores (the fusion arithmetic is what is tested)."""

    class version:  # noqa: N801
        name = "ranker-v9"

    def __init__(self, scores: dict[str, float]):
        self.by_text, self.calls = scores, 0

    def score(self, query: str, docs: list[str]) -> list[float]:
        self.calls += 1
        return [self.by_text[d] for d in docs]


class _FixedBase:
    def __init__(self, order: list[str]):
        self.order = order

    def prepare(self, queries):
        pass

    def judged(self, q, pids):
        return {p: -float(self.order.index(p)) for p in pids}

    def retrieve(self, q, depth):
        return self.order[:depth]


def test_rerank_reorders_the_head_and_fusion_blends_orders_without_rescoring():
    from ray_app.search import Rerank, RerankFusion
    from ray_app.index import rrf

    base = _FixedBase(["a", "b", "c", "d", "e"])
    ranker = _FixedRanker({"A": 0.1, "B": 0.2, "C": 0.9, "D": 5.0, "E": 9.0})
    texts = {p: p.upper() for p in "abcde"}
    plain = Rerank(ranker, base, texts, depth=3, base_name="base")
    fused = RerankFusion(plain, k=60)
    q = {"query_id": "q1", "text": "query"}
    # only the top 3 are re-ranked; d and e keep their places behind them
    assert plain.retrieve(q, 5) == ["c", "b", "a", "d", "e"]
    # fusion of base order (a, b, c) and ranker order (c, b, a): 1/61 + 1/63 > 2/62, so a and c
    # (tied, a first: it appears first) go before b
    assert fused.retrieve(q, 5) == [p for p, _ in rrf([["a", "b", "c"], ["c", "b", "a"]], 60)] + ["d", "e"]
    assert fused.retrieve(q, 5) == ["a", "c", "b", "d", "e"]
    calls = ranker.calls
    fused.judged(q, ["a", "b", "c"]), plain.judged(q, ["a", "c"])
    assert ranker.calls == calls  # the scores are cached per (query, product): no second pass
    assert plain.judged(q, ["e", "a"]) == {"e": 9.0, "a": 0.1}


def test_protocol_figure_draws_values_and_differences(tmp_path):
    from ray_app.plots import protocol_figure

    figures = {"bm25": {"ndcg_esci": 0.848, "queries": 65}, "ranker": {"ndcg_esci": 0.86, "queries": 65},
               "broken": {"ndcg_esci": None}}
    cmp = {"ranker": {"ndcg_esci": {"diff": 0.012, "ci_low": -0.002, "ci_high": 0.027, "p_better": 0.94, "queries": 65}}}
    path = protocol_figure(tmp_path / "f" / "judged.png", "Judged lists", figures, "ndcg_esci", "NDCG", cmp, "bm25")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000
    alone = protocol_figure(tmp_path / "alone.png", "no reference", figures, "ndcg_esci", "NDCG")
    assert alone.is_file()
    with pytest.raises(ValueError, match="no system"):
        protocol_figure(tmp_path / "x.png", "t", {"a": {"other": 1.0}}, "ndcg_esci", "NDCG")
