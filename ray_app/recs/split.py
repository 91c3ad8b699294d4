"""Train/test splits of purchase events for offline recommendation evaluation.

Two protocols, both over purchase rows only:
- `time_split`: train on everything bought before a cut, test on what each known customer buys
  after it. Realistic (no future leaks into train) and the only one with new items and new users.
- `per_user_split`: hide a random share of each customer's distinct products. Comparable with the
  literature's leave-some-out protocol, but train holds the future, so it flatters every system.
Anonymous users (ids starting with "anon-") stay in train (their baskets are co-purchase signal)
but are never test users: there is nobody to recommend to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

import numpy as np
import pandas as pd

from schemas.records import ANONYMOUS_USER_PREFIX

REQUIRED = ("user_id", "product_id", "timestamp", "locale", "session_id", "event_type")
ANON_PREFIX = ANONYMOUS_USER_PREFIX
HEAVY_QUANTILE = 0.9  # heavy users: train purchase count at or above the 90th percentile


@dataclass
class RecsSplit:
    """One evaluation split: train purchases, held-out products per test user and the slices."""

    train: pd.DataFrame
    test: dict[str, set[str]]
    exclude: dict[str, set[str]]
    new_items: set[str]
    new_users: set[str]
    heavy_users: set[str]
    user_locale: dict[str, str]
    name: str
    protocol: dict[str, Any] = field(default_factory=dict)


def purchases(events: pd.DataFrame) -> pd.DataFrame:
    """Purchase rows only, ids as strings; returns are dropped, not netted against earlier purchases."""
    missing = [c for c in REQUIRED if c not in events.columns]
    if missing:
        raise ValueError(f"events frame lacks columns {missing}; it has {list(events.columns)}")
    rows = events[events["event_type"] == "purchase"].copy()
    for col in ("user_id", "product_id", "session_id", "locale"):
        rows[col] = rows[col].astype(str)
    rows["timestamp"] = pd.to_datetime(rows["timestamp"])
    return rows.reset_index(drop=True)


def _known(users: pd.Series) -> pd.Series:
    return ~users.str.startswith(ANON_PREFIX)


def _items_by_user(rows: pd.DataFrame) -> dict[str, set[str]]:
    return {u: set(g) for u, g in rows.groupby("user_id", sort=True)["product_id"]}


def user_locales(rows: pd.DataFrame) -> dict[str, str]:
    """Each user's most frequent locale over their purchase rows (ties: alphabetically first)."""
    # the user's most frequent country over all purchases: known at request time, so not a leak;
    # ties go to the alphabetically first locale so the map is deterministic
    counts = rows.groupby(["user_id", "locale"]).size().rename("n").reset_index()
    counts = counts.sort_values(["user_id", "n", "locale"], ascending=[True, False, True])
    return dict(counts.drop_duplicates("user_id")[["user_id", "locale"]].itertuples(index=False, name=None))


def _heavy(train: pd.DataFrame, test_users: set[str]) -> tuple[set[str], float]:
    counts = train[_known(train["user_id"])].groupby("user_id").size()
    if counts.empty:
        return set(), float("nan")
    threshold = float(np.quantile(counts.to_numpy(), HEAVY_QUANTILE))
    return {u for u, n in counts.items() if n >= threshold and u in test_users}, threshold


def _finish(p: pd.DataFrame, train: pd.DataFrame, test: dict[str, set[str]], exclude: dict[str, set[str]],
            new_items: set[str], name: str, protocol: dict[str, Any]) -> RecsSplit:
    test = {u: s for u, s in test.items() if s}
    exclude = {u: s for u, s in exclude.items() if u in test and s}
    train_users = set(train["user_id"])
    new_users = {u for u in test if u not in train_users}
    heavy, threshold = _heavy(train, set(test))
    locale = user_locales(p)
    protocol = {**protocol, "name": name, "train_rows": int(len(train)), "train_users": len(train_users),
                "train_items": int(train["product_id"].nunique()), "test_users": len(test),
                "test_pairs": sum(len(s) for s in test.values()), "new_items": len(new_items),
                "new_users": len(new_users), "heavy_users": len(heavy), "heavy_min_train_rows": threshold,
                "anonymous_users": "train only, never tested"}
    return RecsSplit(train.reset_index(drop=True), test, exclude, new_items, new_users, heavy,
                     {u: locale[u] for u in test} | {u: locale[u] for u in train_users if u in locale},
                     name, protocol)


def time_split(events: pd.DataFrame, cut: Optional[datetime] = None, test_share: float = 0.2,
               exclude_seen: bool = True) -> RecsSplit:
    """Train = purchases before `cut`; test = each known user's distinct products bought at or after it."""
    p = purchases(events)
    if p.empty:
        raise ValueError("time_split needs purchase events; the frame has none")
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must be in (0, 1), got {test_share}")
    cut_ts = pd.Timestamp(cut) if cut is not None else p["timestamp"].quantile(1.0 - test_share)
    before = p["timestamp"] < cut_ts
    train, after = p[before], p[~before]
    if train.empty or after.empty:
        raise ValueError(f"cut {cut_ts} leaves train {len(train)} rows and test {len(after)} rows; both must be non-empty")
    test = _items_by_user(after[_known(after["user_id"])])
    exclude: dict[str, set[str]] = {}
    if exclude_seen:
        # the "new purchases only" protocol: re-buying is easy to predict and not what recs are for
        seen = _items_by_user(train[train["user_id"].isin(test.keys())])
        exclude = {u: seen.get(u, set()) for u in test}
        test = {u: s - exclude[u] for u, s in test.items()}
    new_items = set(after["product_id"]) - set(train["product_id"])
    protocol = {"cut": cut_ts.isoformat(), "test_share": round(float((~before).mean()), 4), "exclude_seen": exclude_seen,
                "relevance": "distinct products a known user bought after the cut"
                + (", minus those bought before" if exclude_seen else "")}
    return _finish(p, train, test, exclude, new_items, "time", protocol)


def per_user_split(events: pd.DataFrame, test_share: float = 0.25, seed: int = 0, min_items: int = 4) -> RecsSplit:
    """Hold out a random `test_share` (at least one) of each known user's distinct products; all their rows leave train."""
    p = purchases(events)
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must be in (0, 1), got {test_share}")
    pairs = p[["user_id", "product_id"]].drop_duplicates().sort_values(["user_id", "product_id"], ignore_index=True)
    size = pairs.groupby("user_id")["product_id"].transform("size")
    pairs = pairs[_known(pairs["user_id"]) & (size >= min_items)].reset_index(drop=True)
    # one random key per (user, product) pair in sorted order: the same data and seed give the same split
    pairs["key"] = np.random.default_rng(seed).random(len(pairs))
    pairs["rank"] = pairs.groupby("user_id")["key"].rank(method="first") - 1
    n = pairs.groupby("user_id")["product_id"].transform("size").to_numpy()
    held = pairs[pairs["rank"].to_numpy() < np.maximum(1, np.floor(test_share * n + 0.5))]
    marked = p.merge(held[["user_id", "product_id"]].assign(_held=True), on=["user_id", "product_id"], how="left")
    train = p[marked["_held"].isna().to_numpy()]
    test = _items_by_user(held)
    # the user's own remaining products are excluded: recommending them back scores nothing here
    seen = _items_by_user(train[train["user_id"].isin(test.keys())])
    exclude = {u: seen.get(u, set()) for u in test}
    protocol = {"seed": seed, "test_share": test_share, "min_items": min_items,
                "relevance": "a random share of each known user's distinct products; train includes later purchases"}
    return _finish(p, train, test, exclude, set(), "per_user", protocol)

