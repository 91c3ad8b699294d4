"""Personalised search: the shopper's brand and category affinity as a ranking signal.

Affinity is what `jobs.suggest` keeps per pseudonymised user (`suggest_affinity`: brand and
category weights from clicks, carts and purchases, each kind scaled to its peak = 1, and their
price level: the engagement-weighted mean of log(price / the leaf category's median price)). The
personal signal of a product, in [0, 1], mixes taste - the mean of the user's weight for its brand
and their best weight among its category levels - and price fit - exp(-|log(price / median) -
level|) - by `price_share`. The final order's scores are min-max scaled over the candidate list:

    score' = (1 - w) * scaled_score + w * signal             (w = personal_weight, 0 = off)

so the weight means the same whatever the ranker's scale; ties keep the unpersonalised order. A
shopper without history (or w = 0) gets exactly the unpersonalised list. Measured on the synthetic
shop, whose shoppers buy by latent brand and category taste: benchmarks/personal_search.py.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from ray_app.search.suggest_build import MEDIAN_KIND, PRICE_KIND, normalize_suggestion

Affinity = Mapping[tuple[str, str], float]  # (kind, normalised value) -> weight in [0, 1]; price level; medians
DEFAULT_PRICE_SHARE = 0.5


def product_affinity(affinity: Affinity, hit: Mapping[str, Any]) -> float:
    """The mean of the user's weight for the hit's brand and their best weight among its category
    levels (0 for what they never engaged with). Both count: a query's candidates mostly share a
    category, so within one result list the brand is what tells them apart."""
    brand = affinity.get(("brand", normalize_suggestion(hit.get("brand") or "")), 0.0) if hit.get("brand") else 0.0
    category = max((affinity.get(("category", normalize_suggestion(c)), 0.0) for c in hit.get("category_path") or []),
                   default=0.0)
    return float(brand + category) / 2


def price_fit(affinity: Affinity, hit: Mapping[str, Any]) -> float:
    """How well the hit's price suits the user's price level: exp(-|log(price / leaf median) - level|)
    (1 = exactly the level they usually engage at); 0 when the user, the price or the median is unknown."""
    level = affinity.get((PRICE_KIND, "log_ratio"))
    leaf = normalize_suggestion((hit.get("category_path") or [""])[-1])
    median, price = affinity.get((MEDIAN_KIND, leaf)), hit.get("price")
    if level is None or not median or not price or price <= 0:
        return 0.0
    return float(math.exp(-abs(math.log(float(price) / median) - level)))


def signal(affinity: Affinity, hit: Mapping[str, Any], price_share: float) -> float:
    """The personal signal in [0, 1]: taste (brand/category) and price fit, mixed by `price_share`."""
    return (1 - price_share) * product_affinity(affinity, hit) + price_share * price_fit(affinity, hit)


def personalise(hits: list[dict[str, Any]], affinity: Optional[Affinity], weight: float,
                price_share: float = DEFAULT_PRICE_SHARE) -> tuple[list[dict[str, Any]], bool]:
    """(hits re-ordered by the blend above, whether anything was personalised); copies, input untouched."""
    if not affinity or weight <= 0 or not hits:
        return hits, False
    scores = [float(h["score"]) for h in hits]
    lo, hi = min(scores), max(scores)
    blended = []
    for i, (hit, score) in enumerate(zip(hits, scores)):
        a = signal(affinity, hit, price_share)
        scaled = (score - lo) / (hi - lo) if hi > lo else 1.0
        new = dict(hit, score=round((1 - weight) * scaled + weight * a, 6))
        new["stages"] = {**hit.get("stages", {}), "personal": {"score": round(a, 6)}}
        blended.append((-new["score"], i, new))
    blended.sort(key=lambda t: (t[0], t[1]))
    out = [h for _, _, h in blended]
    for rank, h in enumerate(out, start=1):
        h["stages"]["personal"]["rank"] = rank
    return out, True
