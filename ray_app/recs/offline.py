"""Offline evaluation of fitted recommenders on one split: per-user top-k metrics, slices, coverage, AUC, bootstrap.

Every system is asked once for the top-k of every test user (with the split's exclusions); the
slices reuse those lists. In the new-item slice relevance is restricted to the user's new items,
so it measures whether a system can surface products it never saw sold. Systems are compared
per user (paired bootstrap, same users in the same order) against a reference system.
"""
from __future__ import annotations

import math
import time
from typing import Any, Mapping, Optional

import numpy as np

from ray_app.evaluation import markdown_table as _table
from ray_app.evaluation import paired_bootstrap
from ray_app.recs.baselines import Recommender
from ray_app.recs.metrics import catalogue_coverage, metric_names, per_user_auc, user_metrics
from ray_app.recs.split import RecsSplit

SLICES = ("new_items", "new_users", "heavy_users")


def _check_lists(name: str, recs: Mapping[str, list[str]], users: list[str], k: int,
                 exclude: Mapping[str, set[str]]) -> int:
    """Raise on a list that breaks the interface; return how many lists are shorter than k."""
    short = 0
    for user in users:
        items = recs.get(user)
        if items is None:
            raise ValueError(f"system {name!r} returned no list for test user {user!r}")
        if len(items) > k or len(set(items)) != len(items):
            raise ValueError(f"system {name!r}: list for {user!r} has {len(items)} items, "
                             f"{len(set(items))} distinct; expected at most k={k} distinct")
        bad = set(items) & exclude.get(user, set())
        if bad:
            raise ValueError(f"system {name!r} recommended excluded items {sorted(bad)[:3]} to {user!r}")
        short += len(items) < k
    return short


def _mean(rows: list[dict[str, float]], keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        out[key] = round(float(np.mean(values)), 4) if values else float("nan")
    out["users"] = len(rows)
    return out


def _slice_users(split: RecsSplit, users: list[str]) -> dict[str, list[str]]:
    return {"overall": users,
            "new_items": [u for u in users if split.test[u] & split.new_items],
            "new_users": [u for u in users if u in split.new_users],
            "heavy_users": [u for u in users if u in split.heavy_users]}


def _default_reference(systems: Mapping[str, Recommender], figures: dict[str, dict[str, Any]], k: int) -> str:
    # the best baseline, so a new model is judged against the strongest thing it has to beat
    pool = [n for n, s in systems.items() if getattr(s, "baseline", False)] or list(systems)
    ndcg = {n: figures[n]["overall"][f"ndcg@{k}"] for n in pool}
    return max(pool, key=lambda n: -math.inf if math.isnan(ndcg[n]) else ndcg[n])


def _clean(value: Any) -> Any:
    """NaN -> None (strict JSON), numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate_systems(split: RecsSplit, systems: Mapping[str, Recommender], k: int = 10,
                     reference: Optional[str] = None, resamples: int = 1000, seed: int = 0,
                     auc_negatives: int = 100) -> dict[str, Any]:
    """Figures of every (already fitted) system on `split`, overall and per slice, and each vs the reference."""
    if not systems:
        raise ValueError("evaluate_systems needs at least one system")
    if not split.test:
        raise ValueError(f"split {split.name!r} has no test users")
    if reference is not None and reference not in systems:
        raise ValueError(f"reference {reference!r} is not among the systems {sorted(systems)}")
    users = sorted(split.test)
    catalogue = sorted(set(split.train["product_id"].astype(str)).union(*split.test.values()))
    keys = metric_names(k)
    groups = _slice_users(split, users)
    figures: dict[str, dict[str, Any]] = {}
    per_user: dict[str, dict[str, Any]] = {}
    at = {u: n for n, u in enumerate(users)}
    for name, system in systems.items():
        started = time.perf_counter()
        recs = system.recommend(users, k, split.exclude, split.user_locale)
        seconds = time.perf_counter() - started
        short = _check_lists(name, recs, users, k, split.exclude)
        rows = {"overall": [user_metrics(recs[u], split.test[u], k) for u in users]}
        rows["new_items"] = [user_metrics(recs[u], split.test[u] & split.new_items, k) for u in groups["new_items"]]
        for group in ("new_users", "heavy_users"):
            rows[group] = [rows["overall"][at[u]] for u in groups[group]]
        auc = per_user_auc(system.score, users, split.test, catalogue, auc_negatives, seed, split.exclude)
        auc_defined = [a for a in auc if not math.isnan(a)]
        figures[name] = {"overall": _mean(rows["overall"], keys),
                         "slices": {g: _mean(rows[g], keys) for g in SLICES},
                         "coverage": round(catalogue_coverage(recs.values(), len(catalogue)), 4),
                         "auc": round(float(np.mean(auc_defined)), 4) if auc_defined else float("nan"),
                         "short_lists": short, "recommend_s": round(seconds, 3)}
        per_user[name] = {**rows, "auc": auc}
    ref = reference or _default_reference(systems, figures, k)
    versus: dict[str, Any] = {}
    for name in systems:
        if name == ref:
            continue
        mine, theirs = per_user[name], per_user[ref]
        overall = {m: paired_bootstrap([r[m] for r in mine["overall"]], [r[m] for r in theirs["overall"]], resamples, seed)
                   for m in keys}
        overall["auc"] = paired_bootstrap(mine["auc"], theirs["auc"], resamples, seed)
        ndcg = f"ndcg@{k}"
        versus[name] = {"overall": overall,
                        **{g: {ndcg: paired_bootstrap([r[ndcg] for r in mine[g]], [r[ndcg] for r in theirs[g]],
                                                      resamples, seed)} for g in SLICES}}
    return _clean({"split": split.protocol, "k": k, "catalogue": len(catalogue), "users": len(users),
                   "slice_users": {g: len(u) for g, u in groups.items()}, "systems": figures,
                   "vs_reference": {"reference": ref, "resamples": resamples, "systems": versus}})


def markdown_table(result: Mapping[str, Any]) -> str:
    """One Markdown row per system: top-k metrics, AUC, coverage and the new-item NDCG."""
    k = result["k"]
    rows = {}
    for name, fig in result["systems"].items():
        rows[name] = {**fig["overall"], "auc": fig["auc"], "coverage": fig["coverage"],
                      "new_ndcg": fig["slices"]["new_items"][f"ndcg@{k}"]}
    columns = [(f"ndcg@{k}", f"NDCG@{k}"), (f"recall@{k}", f"Recall@{k}"), (f"precision@{k}", f"P@{k}"),
               (f"map@{k}", f"MAP@{k}"), (f"hr@{k}", f"HR@{k}"), ("mrr", "MRR"), ("auc", "AUC"),
               ("coverage", "coverage"), ("new_ndcg", f"new-item NDCG@{k}")]
    return _table(rows, columns)
