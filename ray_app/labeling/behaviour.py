"""Relevance grades (ESCI) of query-product pairs from behaviour events, debiased for position.

Shoppers click what is shown high more often whatever its relevance, so raw CTR rewards
the old ranker. Each click is weighted by the inverse of the examination propensity
p(pos) = (1/pos)^eta (docs/labelling.md), clipped so one click deep in the list cannot
dominate. Aggregation runs with pyarrow's group_by on the driver: the four columns it reads
are small even for tens of millions of events, and it is exact and deterministic (no shuffle).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from ray_app.ids import label_id, pair_id

BEHAVIOUR_LABELLER = "behaviour"  # key part of behaviour label ids: one per pair
MAX_IPW_WEIGHT = 20.0  # propensity floor 0.05: clipped IPW keeps the variance bounded
HIGH_CTR = 0.3  # smoothed debiased CTR at or above this grades a clicked pair S rather than C
PRIOR_CTR = 0.1  # what a pair's CTR is taken to be before it has been shown (smoothing prior)
GRADE_BASE_CONFIDENCE = {"E": 0.95, "S": 0.8, "C": 0.7, "I": 0.8}
EVENT_COLUMNS = ["event_type", "query_id", "product_id", "position"]


def propensity(position: Optional[float], eta: float) -> float:
    """Examination probability of rank `position` (1-based): (1/pos)^eta; unknown rank -> 1."""
    if position is None or position < 1:
        return 1.0
    return (1.0 / float(position)) ** eta


def ipw_weight(position: Optional[float], eta: float, max_weight: float = MAX_IPW_WEIGHT) -> float:
    """Inverse-propensity weight of one click, clipped at `max_weight`."""
    return min(1.0 / propensity(position, eta), max_weight)


def debiased_ctr(click_positions: Iterable[Optional[float]], impressions: int, eta: float,
                 max_weight: float = MAX_IPW_WEIGHT) -> float:
    """IPW click-through rate: sum of clipped 1/p(pos) over clicks / impressions, capped at 1."""
    clicks = list(click_positions)
    shown = max(impressions, len(clicks))
    if shown == 0:
        return 0.0
    return min(1.0, sum(ipw_weight(p, eta, max_weight) for p in clicks) / shown)


def smoothed_ctr(ipw_clicks: float, shown: int, strength: float, prior: float = PRIOR_CTR) -> float:
    """Debiased CTR shrunk toward `prior` by `strength` pseudo-impressions, so one lucky click on a
    pair shown twice is not read as a strong preference; capped at 1."""
    return min(1.0, (ipw_clicks + prior * strength) / (shown + strength)) if shown + strength > 0 else prior


def aggregate_events(events: pa.Table, eta: float, max_weight: float = MAX_IPW_WEIGHT) -> pa.Table:
    """Per (query_id, product_id): impressions, clicks, carts, purchases, mean shown rank, IPW CTR.

    A click without a logged rank takes the pair's mean impression rank (or 1 when never seen).
    """
    if events.num_rows:
        events = events.filter(pc.and_(pc.is_valid(events["query_id"]), pc.not_equal(events["query_id"], "")))
    if events.num_rows == 0:
        return pa.table({"query_id": pa.array([], pa.string()), "product_id": pa.array([], pa.string()),
                         **{c: pa.array([], pa.int64()) for c in ("impressions", "clicks", "add_to_carts", "purchases")},
                         "mean_position": pa.array([], pa.float64()), "ipw_clicks": pa.array([], pa.float64()),
                         "debiased_ctr": pa.array([], pa.float64())})
    etype = events["event_type"]
    pos = pc.cast(events["position"], pa.float64())
    pos_ok = pc.and_(pc.is_valid(pos), pc.greater_equal(pc.fill_null(pos, 0.0), 1.0))
    is_imp, is_click = pc.equal(etype, "impression"), pc.equal(etype, "click")
    weight = pc.min_element_wise(pc.power(pos, eta), pa.scalar(float(max_weight)))
    work = pa.table({
        "query_id": events["query_id"], "product_id": events["product_id"],
        "imp": pc.cast(is_imp, pa.int64()), "click": pc.cast(is_click, pa.int64()),
        "cart": pc.cast(pc.equal(etype, "add_to_cart"), pa.int64()),
        "buy": pc.cast(pc.equal(etype, "purchase"), pa.int64()),
        "imp_pos": pc.if_else(pc.and_(is_imp, pos_ok), pos, pa.scalar(None, pa.float64())),
        "click_w": pc.if_else(pc.and_(is_click, pos_ok), weight, pa.scalar(0.0)),
        "click_nopos": pc.cast(pc.and_(is_click, pc.invert(pos_ok)), pa.int64()),
    })
    agg = work.group_by(["query_id", "product_id"]).aggregate(
        [("imp", "sum"), ("click", "sum"), ("cart", "sum"), ("buy", "sum"), ("imp_pos", "mean"),
         ("click_w", "sum"), ("click_nopos", "sum")])
    df = agg.to_pandas()
    df = df.sort_values(["query_id", "product_id"], kind="stable").reset_index(drop=True)
    mean_pos = df["imp_pos_mean"].astype(float)
    fallback_w = mean_pos.fillna(1.0).clip(lower=1.0).pow(eta).clip(upper=max_weight)
    ipw = df["click_w_sum"].astype(float) + df["click_nopos_sum"] * fallback_w
    shown = df[["imp_sum", "click_sum"]].max(axis=1)
    ctr = (ipw / shown.where(shown > 0)).fillna(0.0).clip(upper=1.0)
    return pa.table({
        "query_id": pa.array(df["query_id"].tolist(), pa.string()),
        "product_id": pa.array(df["product_id"].tolist(), pa.string()),
        "impressions": pa.array(df["imp_sum"].astype("int64").tolist(), pa.int64()),
        "clicks": pa.array(df["click_sum"].astype("int64").tolist(), pa.int64()),
        "add_to_carts": pa.array(df["cart_sum"].astype("int64").tolist(), pa.int64()),
        "purchases": pa.array(df["buy_sum"].astype("int64").tolist(), pa.int64()),
        "mean_position": pa.array([None if v != v else float(v) for v in mean_pos], pa.float64()),
        "ipw_clicks": pa.array(ipw.astype(float).tolist(), pa.float64()),
        "debiased_ctr": pa.array(ctr.astype(float).tolist(), pa.float64()),
    })


def grade_pair(impressions: int, clicks: int, add_to_carts: int, purchases: int, ipw_clicks: float,
               min_impressions: int, high_ctr: float = HIGH_CTR) -> Optional[tuple[str, float]]:
    """(ESCI grade, confidence) of one pair, or None when the evidence is too thin to say.

    E: purchased. S: added to cart, or clicked with a smoothed debiased CTR >= high_ctr.
    C: clicked, CTR below that. I: shown >= min_impressions times, never engaged.
    """
    shown = max(impressions, clicks)
    if purchases > 0:
        grade = "E"
    elif add_to_carts > 0 or (clicks > 0 and smoothed_ctr(ipw_clicks, shown, min_impressions) >= high_ctr):
        grade = "S"
    elif clicks > 0:
        grade = "C"
    elif impressions >= min_impressions:
        grade = "I"
    else:
        return None
    confidence = GRADE_BASE_CONFIDENCE[grade] * (shown + 1) / (shown + 1 + min_impressions)
    return grade, round(confidence, 4)


def behaviour_label_rows(stats: pa.Table, min_impressions: int, eta: float, created_at: datetime,
                         high_ctr: float = HIGH_CTR) -> list[dict[str, Any]]:
    """Relevance label rows (source behaviour) from `aggregate_events` output."""
    rows = []
    annotator = f"behaviour:ipw(eta={eta:g})"
    for s in stats.to_pylist():
        graded = grade_pair(s["impressions"], s["clicks"], s["add_to_carts"], s["purchases"],
                            s["ipw_clicks"], min_impressions, high_ctr)
        if graded is None:
            continue
        target = pair_id(s["query_id"], s["product_id"])
        rows.append(dict(label_id=label_id(target, "relevance", "behaviour", BEHAVIOUR_LABELLER),
                         target_type="query_product", target_id=target, task="relevance", value=graded[0],
                         spans=[], source="behaviour", confidence=graded[1], annotator=annotator,
                         created_at=created_at))
    return rows
