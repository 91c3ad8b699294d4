"""The A/B read-out's statistics (ray_app/abtest.py) against textbook values, and the offline
IPS estimate's two anchors: the logged order estimates what was logged, a better order more."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency

from ray_app.abtest import ips_estimate, logged_impressions, power, read_out, sample_ratio, two_proportions, units_needed, wilson

pytestmark = pytest.mark.unit


def test_wilson_and_the_two_proportion_test_match_the_textbook():
    low, high = wilson(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    t = two_proportions(100, 1000, 130, 1000)
    chi2, p, _, _ = chi2_contingency([[100, 900], [130, 870]], correction=False)
    assert t["p_value"] == pytest.approx(p) and t["difference"] == pytest.approx(0.03) and t["lift"] == pytest.approx(0.3)
    assert t["low"] < 0.03 < t["high"]


def test_power_and_the_units_it_needs_agree():
    n = units_needed(0.10, 0.2)  # 10% -> 12%: about 3,840 per arm for 80% power at alpha 0.05
    assert 3800 <= n <= 3900
    assert power(0.10, n, n, 0.2) == pytest.approx(0.8, abs=0.005)
    assert power(0.10, n // 4, n // 4, 0.2) < 0.35


def test_sample_ratio_flags_a_broken_split():
    assert sample_ratio({"a": 500, "b": 505}, {"a": 0.5, "b": 0.5})["mismatch"] is False
    assert sample_ratio({"a": 600, "b": 400}, {"a": 0.5, "b": 0.5})["mismatch"] is True
    assert sample_ratio({"a": 900, "b": 100}, {"a": 0.9, "b": 0.1})["mismatch"] is False


def synthetic(rate: dict[str, float], users: int = 800, seed: int = 0) -> pd.DataFrame:
    rng, rows = np.random.default_rng(seed), []
    for arm, p in rate.items():
        for u in range(users):
            rid = f"{arm}-r{u}"
            for pos in range(1, 4):
                rows.append({"event_id": f"{rid}-i{pos}", "event_type": "impression", "user_id": f"{arm}-{u}", "arm": arm,
                             "request_id": rid, "product_id": f"p{pos}", "position": pos, "query_id": "q"})
            if rng.random() < p:
                rows.append({"event_id": f"{rid}-c", "event_type": "click", "user_id": f"{arm}-{u}", "arm": arm,
                             "request_id": rid, "product_id": "p3", "position": 3, "query_id": "q"})
                if rng.random() < 0.5:
                    rows.append({"event_id": f"{rid}-b", "event_type": "purchase", "user_id": f"{arm}-{u}", "arm": arm,
                                 "request_id": rid, "product_id": "p3", "position": None, "query_id": "q"})
    rows.append({"event_id": "no-arm", "event_type": "click", "user_id": "x", "arm": None, "request_id": None,
                 "product_id": "p1", "position": 1, "query_id": "q"})
    return pd.DataFrame(rows)


def test_read_out_per_unit_rates_differences_and_power():
    out = read_out(synthetic({"control": 0.10, "treatment": 0.20}), mde=0.2, resamples=200)
    c, t = out["arms"]["control"], out["arms"]["treatment"]
    assert c["units"] == t["units"] == 800 and c["impressions"] == 2400
    assert c["click_rate"]["low"] < c["click_rate"]["rate"] < c["click_rate"]["high"]
    assert abs(c["click_rate"]["rate"] - 0.10) < 0.03 and abs(t["click_rate"]["rate"] - 0.20) < 0.04
    assert c["ctr_per_impression"]["rate"] == pytest.approx(c["click_rate"]["rate"] / 3)
    vs = out["versus_control"]["treatment"]
    assert vs["click"]["significant"] and vs["click"]["difference"] > 0 and 0 < vs["click"]["power_at_mde"] < 1
    assert out["sample_ratio"]["checked"] and not out["sample_ratio"]["mismatch"]
    with pytest.raises(ValueError, match="control arm"):
        read_out(synthetic({"a": 0.1, "b": 0.1}), control="control")


def test_ips_estimates_the_logged_clicks_for_the_logged_order_and_more_for_a_better_one():
    logged = logged_impressions(synthetic({"control": 0.3}))
    assert set(logged.columns) >= {"request_id", "product_id", "position", "clicked"} and logged["clicked"].sum() > 0
    same = {(r, p): int(p[1:]) for r, p in zip(logged["request_id"], logged["product_id"])}
    out = ips_estimate(logged, same, resamples=200)
    assert out["estimated_clicks_per_request"] == pytest.approx(out["logged_clicks_per_request"]) and out["ratio"] == pytest.approx(1)
    clicked_first = {(r, p): {"p3": 1, "p1": 2, "p2": 3}[p] for r, p in same}  # what was clicked moves to the top
    better = ips_estimate(logged, clicked_first, eta=1.0, resamples=200)
    assert better["ratio"] == pytest.approx(3.0) and better["difference_interval"][0] > 0
    assert "estimate" in better["kind"]
