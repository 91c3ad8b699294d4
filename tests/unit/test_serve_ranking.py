"""Pure parts of serving: the A/B split, the re-ranked order as evaluated, pages and explain."""
from __future__ import annotations

import pytest

from schemas.api import SearchRequest
from schemas.serving import Experiment

pytestmark = pytest.mark.unit


def test_ab_split_is_within_two_points_of_its_share_over_10000_users():
    from serve.ranking import assign_arm

    exp = Experiment(name="rank-ab", arms={"control": {"model": "ranker@production", "share": 0.9},
                                           "treatment": {"model": "ranker@candidate", "share": 0.1}})
    arms = [assign_arm(f"u_{i:05d}", exp) for i in range(10_000)]
    share = arms.count("treatment") / len(arms)
    assert abs(share - 0.1) <= 0.02, share
    assert arms == [assign_arm(f"u_{i:05d}", exp) for i in range(10_000)]  # stable
    other = Experiment(name="another-test", arms=exp.arms)
    moved = sum(a != assign_arm(f"u_{i:05d}", other) for i, a in enumerate(arms))
    assert moved > 500  # a new experiment name reshuffles


def test_experiment_shares_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        Experiment(arms={"a": {"model": "x", "share": 0.5}, "b": {"model": "y", "share": 0.4}})


def test_rerank_order_matches_the_evaluated_rerank_fusion():
    from ray_app.index import rrf
    from ray_app.search.pipeline import rerank_order

    head, tail = ["a", "b", "c", "d"], ["e", "f"]
    scores = [0.1, 0.9, 0.5, 0.5]
    fused = rerank_order(head, scores, tail, 60)
    reranked = ["b", "c", "d", "a"]  # stable on the tie c/d
    expected = [p for p, _ in rrf([head, reranked], 60)] + tail  # jobs.evaluate's RerankFusion
    assert [p for p, _ in fused] == expected
    s = [x for _, x in fused]
    assert s == sorted(s, reverse=True)
    plain = rerank_order(head, scores, tail, None)
    assert [p for p, _ in plain] == reranked + tail and plain[3][1] > plain[4][1] > plain[5][1]


def test_rerank_order_ignores_last_bit_noise():
    from ray_app.search.pipeline import rerank_order

    a = rerank_order(["x", "y"], [0.5, 0.5 + 1e-9], [], None)
    b = rerank_order(["x", "y"], [0.5 + 1e-9, 0.5], [], None)
    assert [p for p, _ in a] == [p for p, _ in b] == ["x", "y"]


def test_page_and_explain():
    from serve.ranking import ordered_hits, page_of

    first = {"candidates": [{"product_id": f"p{i}", "score": 1.0 - i / 10, "title": f"t{i}", "text": "x",
                             "stages": {"first_stage": {"rank": i + 1, "score": 1.0 - i / 10}}} for i in range(7)]}
    ranked = {"order": [("p3", 0.9), ("p0", 0.8)] + [(f"p{i}", 0.5 - i / 100) for i in (1, 2, 4, 5, 6)],
              "ranker": {"p3": {"rank": 1, "score": 2.0}, "p0": {"rank": 2, "score": 1.0}}}
    hits = ordered_hits(first, ranked)
    assert [h["product_id"] for h in hits][:2] == ["p3", "p0"] and hits[0]["stages"]["ranker"]["rank"] == 1
    page = page_of(SearchRequest(query="q", page=2, size=3, explain=True), hits)
    assert [h["product_id"] for h in page] == ["p2", "p4", "p5"]
    assert page[0]["explain"]["final"] == {"rank": 4, "score": 0.48} and "text" not in page[0]
    assert ordered_hits(first, None)[0]["product_id"] == "p0"  # degraded: the first stage's order
