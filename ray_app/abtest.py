"""The A/B read-out's statistics (jobs.abtest), without Ray.

**Online, per arm.** The randomisation unit is the user (the ingress assigns arms by a hash of the
pseudonymised user, or of the session), so rates are taken per unit: of the units with at least
one impression in an arm, the share that clicked, added to cart, purchased (Wilson intervals); the
treatment-minus-control difference with its Wald interval and the two-sided p-value of the pooled
two-proportion z-test; the test's power to detect a relative lift of `mde` at the observed sizes
and control rate, and the units per arm that 80% power would need. Click-through per impression
is also given, its interval from a bootstrap over units (impressions of one user are not
independent). A sample-ratio check (chi-square of units per arm against the declared shares)
flags a broken split before anyone reads the rates.

**Offline, for a candidate ranking.** From logged impressions and clicks with their positions, the
position-based inverse propensity estimate (Joachims et al., 2017): a click on a product logged at
rank k, which the candidate would show at rank k', counts p(k') / p(k) with the examination
propensity p(r) = (1/r)^eta, the weight clipped at `clip`. It estimates the clicks per request the
candidate would have had on the same requests, under the assumption that clicks follow examination
times relevance; it is an estimate, reported as one, with a bootstrap interval over requests.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd
from scipy import stats

OUTCOMES = ("click", "add_to_cart", "purchase")


def wilson(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n <= 0:
        return (float("nan"), float("nan"))
    z = stats.norm.ppf(1 - alpha / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportions(x1: int, n1: int, x2: int, n2: int, alpha: float = 0.05) -> dict[str, float]:
    """Arm 2 minus arm 1: difference, its Wald interval, relative lift and the pooled z-test's p-value."""
    if min(n1, n2) <= 0:
        return {"difference": float("nan"), "low": float("nan"), "high": float("nan"), "lift": float("nan"), "p_value": float("nan")}
    p1, p2 = x1 / n1, x2 / n2
    z = stats.norm.ppf(1 - alpha / 2)
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    pooled = (x1 + x2) / (n1 + n2)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_value = 2 * stats.norm.sf(abs(p2 - p1) / se0) if se0 > 0 else (0.0 if p1 != p2 else 1.0)
    return {"difference": p2 - p1, "low": p2 - p1 - z * se, "high": p2 - p1 + z * se,
            "lift": (p2 - p1) / p1 if p1 > 0 else float("nan"), "p_value": float(p_value)}


def power(p1: float, n1: int, n2: int, mde: float, alpha: float = 0.05) -> float:
    """Power of the two-sided two-proportion z-test to detect p2 = p1 * (1 + mde) with these sizes."""
    p2 = min(1.0, p1 * (1 + mde))
    if min(n1, n2) <= 0 or p1 <= 0 or p2 == p1:
        return float("nan")
    z = stats.norm.ppf(1 - alpha / 2)
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    shift = abs(p2 - p1) / se
    return float(stats.norm.sf(z - shift) + stats.norm.cdf(-z - shift))


def units_needed(p1: float, mde: float, alpha: float = 0.05, target: float = 0.8, ratio: float = 1.0) -> Optional[int]:
    """Units in the control arm (the other gets `ratio` times as many) for `target` power at lift `mde`."""
    p2 = min(1.0, p1 * (1 + mde))
    if p1 <= 0 or p2 == p1:
        return None
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(target)
    n = (z_a + z_b) ** 2 * (p1 * (1 - p1) + p2 * (1 - p2) / ratio) / (p2 - p1) ** 2
    return int(math.ceil(n))


def sample_ratio(units: Mapping[str, int], shares: Mapping[str, float]) -> dict[str, Any]:
    """Chi-square test of units per arm against the declared shares (a small p-value: a broken split)."""
    arms = [a for a in units if a in shares]
    total = sum(units[a] for a in arms)
    if len(arms) < 2 or total == 0:
        return {"checked": False}
    weight = sum(shares[a] for a in arms)
    expected = [total * shares[a] / weight for a in arms]
    chi2, p_value = stats.chisquare([units[a] for a in arms], expected)
    return {"checked": True, "chi2": float(chi2), "p_value": float(p_value), "mismatch": bool(p_value < 0.001),
            "expected": dict(zip(arms, [round(e, 1) for e in expected]))}


def per_unit(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, user): impressions and counts of each outcome."""
    rows = events[events["arm"].fillna("").astype(str) != ""]
    counts = rows.pivot_table(index=["arm", "user_id"], columns="event_type", values="event_id", aggfunc="count", fill_value=0)
    for col in ("impression",) + OUTCOMES:
        if col not in counts.columns:
            counts[col] = 0
    return counts[["impression", *OUTCOMES]].reset_index()


def _bootstrap_ratio(clicks: np.ndarray, impressions: np.ndarray, resamples: int, seed: int, alpha: float) -> tuple[float, float]:
    if clicks.size == 0 or impressions.sum() == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, clicks.size, size=(resamples, clicks.size))
    ratios = clicks[idx].sum(axis=1) / np.maximum(impressions[idx].sum(axis=1), 1)
    return (float(np.quantile(ratios, alpha / 2)), float(np.quantile(ratios, 1 - alpha / 2)))


def read_out(events: pd.DataFrame, control: Optional[str] = None, alpha: float = 0.05, mde: float = 0.1,
             shares: Optional[Mapping[str, float]] = None, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per arm: units, impressions, per-unit outcome rates with intervals, CTR per impression; each
    arm against `control` per outcome: difference, lift, p-value, power at `mde`, units needed."""
    units = per_unit(events)
    if units.empty:
        raise ValueError("no events carry an arm: feedback events need the `arm` of the response they followed")
    exposed = units[units["impression"] > 0]
    arms = sorted(exposed["arm"].unique())
    if not arms:
        raise ValueError("no arm has an impression: the read-out counts units with at least one impression")
    control = control or ("control" if "control" in arms else arms[0])
    if control not in arms:
        raise ValueError(f"control arm {control!r} has no impressions; arms seen: {arms}")
    out: dict[str, Any] = {"control": control, "alpha": alpha, "mde": mde, "arms": {}, "versus_control": {}}
    for arm in arms:
        g = exposed[exposed["arm"] == arm]
        n = int(len(g))
        arm_out: dict[str, Any] = {"units": n, "impressions": int(g["impression"].sum())}
        for outcome in OUTCOMES:
            x = int((g[outcome] > 0).sum())
            low, high = wilson(x, n, alpha)
            arm_out[f"{outcome}_rate"] = {"units": x, "rate": x / n if n else float("nan"), "low": low, "high": high}
        clicks, imps = g["click"].to_numpy(float), g["impression"].to_numpy(float)
        ctr_low, ctr_high = _bootstrap_ratio(clicks, imps, resamples, seed, alpha)
        arm_out["ctr_per_impression"] = {"rate": float(clicks.sum() / max(imps.sum(), 1)), "low": ctr_low, "high": ctr_high}
        out["arms"][arm] = arm_out
    base = out["arms"][control]
    for arm in arms:
        if arm == control:
            continue
        mine = out["arms"][arm]
        vs: dict[str, Any] = {}
        for outcome in OUTCOMES:
            c, t = base[f"{outcome}_rate"], mine[f"{outcome}_rate"]
            test = two_proportions(c["units"], base["units"], t["units"], mine["units"], alpha)
            test["power_at_mde"] = power(c["rate"], base["units"], mine["units"], mde, alpha)
            test["units_needed_for_80pct_power"] = units_needed(c["rate"], mde, alpha, 0.8, mine["units"] / max(base["units"], 1))
            test["significant"] = bool(test["p_value"] < alpha)
            vs[outcome] = test
        out["versus_control"][arm] = vs
    out["sample_ratio"] = sample_ratio({a: out["arms"][a]["units"] for a in arms},
                                       shares or {a: 1.0 / len(arms) for a in arms})
    return out


def ips_estimate(logged: pd.DataFrame, new_rank: Mapping[tuple[str, str], int], eta: float = 1.0, clip: float = 20.0,
                 resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Clicks per request the candidate would have had, from `logged` rows (request_id, product_id,
    position, clicked: one per impression), position-based IPS; the logging policy's own figure beside it."""
    rows = logged[logged["request_id"].notna() & logged["position"].notna()].copy()
    keys = list(zip(rows["request_id"].astype(str), rows["product_id"].astype(str)))
    rows["new"] = [new_rank.get(k) for k in keys]
    rows = rows[rows["new"].notna()]
    if rows.empty:
        raise ValueError("no logged impression with a request id and a position that the candidate ranked")
    old_p = np.power(1.0 / rows["position"].astype(float).to_numpy(), eta)
    new_p = np.power(1.0 / rows["new"].astype(float).to_numpy(), eta)
    clicked = rows["clicked"].astype(float).to_numpy()
    rows["w"] = clicked * np.minimum(new_p / old_p, clip)
    rows["c"] = clicked
    per_request = rows.groupby("request_id")[["w", "c"]].sum()
    w, c = per_request["w"].to_numpy(), per_request["c"].to_numpy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, w.size, size=(resamples, w.size))
    boot = w[idx].mean(axis=1)
    diff = (w - c)[idx].mean(axis=1)
    return {"kind": "offline estimate: position-based inverse propensity scoring on the logged impressions",
            "assumption": f"clicks = examination (1/rank)^{eta:g} x relevance; weights clipped at {clip:g}",
            "requests": int(w.size), "impressions": int(len(rows)),
            "logged_clicks_per_request": float(c.mean()), "estimated_clicks_per_request": float(w.mean()),
            "interval": [float(np.quantile(boot, alpha / 2)), float(np.quantile(boot, 1 - alpha / 2))],
            "difference_interval": [float(np.quantile(diff, alpha / 2)), float(np.quantile(diff, 1 - alpha / 2))],
            "ratio": float(w.mean() / c.mean()) if c.mean() > 0 else float("nan")}


def logged_impressions(events: pd.DataFrame, arm: Optional[str] = None) -> pd.DataFrame:
    """(request_id, query_id, product_id, position, clicked) per impression, a click joined to the
    impression of the same request and product."""
    rows = events if arm is None else events[events["arm"] == arm]
    imps = rows[rows["event_type"] == "impression"][["request_id", "query_id", "product_id", "position"]].dropna(subset=["request_id"])
    imps = imps.drop_duplicates(["request_id", "product_id"])
    clicks = rows[rows["event_type"] == "click"][["request_id", "product_id"]].dropna().drop_duplicates()
    clicks = clicks.assign(clicked=1)
    out = imps.merge(clicks, on=["request_id", "product_id"], how="left")
    out["clicked"] = out["clicked"].fillna(0).astype(int)
    return out


def markdown(result: Mapping[str, Any]) -> str:
    """The read-out as Markdown tables."""
    lines = ["| arm | units | impressions | click rate | add-to-cart rate | purchase rate | CTR / impression |",
             "|---|---|---|---|---|---|---|"]

    def cell(r: Mapping[str, float]) -> str:
        return f"{r['rate']:.4f} [{r['low']:.4f}, {r['high']:.4f}]"

    for arm, a in result["arms"].items():
        lines.append(f"| {arm} | {a['units']:,} | {a['impressions']:,} | {cell(a['click_rate'])} | {cell(a['add_to_cart_rate'])} "
                     f"| {cell(a['purchase_rate'])} | {cell(a['ctr_per_impression'])} |")
    lines += ["", f"against `{result['control']}` (alpha {result['alpha']}, power at a relative lift of {result['mde']:.0%}):", "",
              "| arm | outcome | difference [interval] | lift | p-value | power | units needed (80%) |", "|---|---|---|---|---|---|---|"]
    for arm, vs in result["versus_control"].items():
        for outcome, t in vs.items():
            lines.append(f"| {arm} | {outcome} | {t['difference']:+.4f} [{t['low']:+.4f}, {t['high']:+.4f}] | {t['lift']:+.1%} "
                         f"| {t['p_value']:.4f} | {t['power_at_mde']:.2f} | {t['units_needed_for_80pct_power'] or '-'} |")
    return "\n".join(lines) + "\n"
