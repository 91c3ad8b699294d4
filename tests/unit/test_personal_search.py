"""Personalised search's blend (ray_app/search/personal.py): a shopper's brand and category
affinity moves their products up by the configured weight; no affinity or weight 0 changes nothing."""
from __future__ import annotations

import pytest

from ray_app.search.personal import personalise, price_fit, product_affinity

pytestmark = pytest.mark.unit

HITS = [{"product_id": "a", "score": 3.0, "brand": "Nike", "category_path": ["Shoes", "Running"]},
        {"product_id": "b", "score": 2.0, "brand": "Sony", "category_path": ["Audio"]},
        {"product_id": "c", "score": 1.0, "brand": "Bosch", "category_path": ["Tools", "Drills"], "stages": {"bm25": {"rank": 1}}}]


def test_affinity_is_the_mean_of_the_brand_and_the_best_category_level():
    affinity = {("brand", "bosch"): 0.4, ("category", "drills"): 0.9, ("category", "tools"): 0.5, ("category", "audio"): 0.2}
    assert [product_affinity(affinity, h) for h in HITS] == [0.0, 0.1, pytest.approx(0.65)]


def test_the_weight_trades_the_ranking_score_against_affinity():
    affinity = {("category", "tools"): 1.0, ("brand", "bosch"): 1.0}
    light, changed = personalise(HITS, affinity, 0.3, price_share=0)  # c: 0.7*0 + 0.3*1 = 0.3 < b: 0.7*0.5 = 0.35
    assert changed and [h["product_id"] for h in light] == ["a", "b", "c"]
    heavy, _ = personalise(HITS, affinity, 0.6, price_share=0)  # c: 0.6 > a: 0.4 > b: 0.2
    assert [h["product_id"] for h in heavy] == ["c", "a", "b"]
    assert heavy[0]["stages"] == {"bm25": {"rank": 1}, "personal": {"score": 1.0, "rank": 1}}
    assert HITS[2]["score"] == 1.0 and "personal" not in HITS[2]["stages"]  # the input is untouched


def test_nothing_changes_without_affinity_or_weight():
    assert personalise(HITS, {}, 0.5) == (HITS, False)
    assert personalise(HITS, {("brand", "sony"): 1.0}, 0.0) == (HITS, False)
    same, changed = personalise(HITS, {("brand", "unknown"): 1.0}, 0.5)
    assert changed and [h["product_id"] for h in same] == ["a", "b", "c"]


def test_price_fit_favours_what_costs_what_the_user_usually_pays():
    """A bargain hunter (level log 0.5: half the median) against a premium shopper (log 2)."""
    import math

    lamps = [{"product_id": p, "score": 1.0, "price": price, "category_path": ["Home", "Lamps"]}
             for p, price in (("cheap", 10.0), ("usual", 20.0), ("dear", 40.0))]
    bargain = {("price", "log_ratio"): math.log(0.5), ("median_price", "lamps"): 20.0}
    premium = {("price", "log_ratio"): math.log(2.0), ("median_price", "lamps"): 20.0}
    assert price_fit(bargain, lamps[0]) == pytest.approx(1.0) and price_fit(premium, lamps[2]) == pytest.approx(1.0)
    assert price_fit(bargain, lamps[2]) == pytest.approx(0.25) and price_fit({}, lamps[0]) == 0.0
    assert [h["product_id"] for h in personalise(lamps, bargain, 0.5, price_share=1)[0]] == ["cheap", "usual", "dear"]
    assert [h["product_id"] for h in personalise(lamps, premium, 0.5, price_share=1)[0]] == ["dear", "usual", "cheap"]
