"""Training examples of the `recommender` task: (history, locale) -> what the user bought next.

The snapshot's purchases are split exactly as the offline evaluation splits them
(ray_app.recs.split: by time or per user, parameters stored with the model), and only the train
part becomes examples, so the evaluation's test never reaches training. Within train, a user's
baskets (sessions) in time order give one example per basket: the history is the user's last
`max_history` distinct items before it (with how many days before the basket each was bought),
the targets up to `targets_per_basket` of the basket's items not already in the history.
Validation: the last train basket of a hashed share of users (their earlier baskets still train).
Each row carries its texts, so workers need nothing but the row (stages talk through storage).
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pandas as pd

from ray_app.recs.split import ANON_PREFIX, RecsSplit, per_user_split, time_split


def split_events(events: pd.DataFrame, options: dict[str, Any]) -> RecsSplit:
    """The evaluation split the options name: {"recs_split": "time"|"per_user", "recs_cut", "recs_test_share", "seed"}."""
    if options.get("recs_split", "time") == "per_user":
        return per_user_split(events, test_share=float(options.get("recs_test_share") or 0.25), seed=int(options.get("seed", 0)))
    return time_split(events, cut=options.get("recs_cut"), test_share=float(options.get("recs_test_share") or 0.2))


def _unit(key: str, seed: int) -> float:
    return int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64


def baskets(train: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, session): its time (first line) and distinct items in line order; known users
    only. Events without a session are grouped by day."""
    known = train[~train["user_id"].astype(str).str.startswith(ANON_PREFIX)]
    known = known.sort_values(["timestamp"], kind="stable").copy()
    # a log without sessions (ratings, say): a user's events of one day are one basket
    day = "@" + pd.to_datetime(known["timestamp"]).dt.strftime("%Y-%m-%d")
    known["session_id"] = known["session_id"].astype(str).where(known["session_id"].astype(str) != "", day)
    grouped = known.groupby(["user_id", "session_id"], sort=False)
    out = grouped.agg(time=("timestamp", "min"), locale=("locale", "first"),
                      items=("product_id", lambda s: list(dict.fromkeys(map(str, s))))).reset_index()
    return out.sort_values(["user_id", "time", "session_id"], ignore_index=True)


def validation_users(b: pd.DataFrame, fraction: float, seed: int) -> set[str]:
    """The `fraction` (at least one) of users with an earlier basket and something new in their
    last one whose hash is lowest: a small shop still gets a validation set, the same one every run."""
    eligible = []
    for user, group in b.groupby("user_id", sort=False):
        if len(group) < 2:
            continue
        before = {i for items in group["items"].iloc[:-1] for i in items}
        if set(group["items"].iloc[-1]) - before:
            eligible.append(str(user))
    eligible.sort(key=lambda u: _unit(u, seed))
    return set(eligible[:max(1, math.ceil(fraction * len(eligible)))]) if eligible else set()


def popularity_logq(train: pd.DataFrame) -> dict[str, float]:
    """log of each item's share of train purchases (add-one smoothed): the logQ correction."""
    counts = train.groupby("product_id").size()
    total = float(counts.sum() + len(counts))
    return {str(k): math.log((v + 1) / total) for k, v in counts.items()}


def recommender_rows(split: RecsSplit, texts: dict[str, str], max_history: int = 20, targets_per_basket: int = 3,
                     negatives: int = 4, validation_fraction: float = 0.1, seed: int = 13,
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[str]]]:
    """(train rows, validation rows, label spaces {"locales", "items"}) from a split's train purchases."""
    b = baskets(split.train)
    logq = popularity_logq(split.train)
    floor = min(logq.values(), default=0.0)
    catalogue = sorted(texts)
    rng = np.random.default_rng(seed)
    train_rows: list[dict[str, Any]] = []
    val_rows: list[dict[str, Any]] = []
    held = validation_users(b, validation_fraction, seed)
    for user, group in b.groupby("user_id", sort=False):
        held_out = user in held
        last_bought: dict[str, pd.Timestamp] = {}
        rows = list(group.itertuples(index=False))
        for n, basket in enumerate(rows):
            history = list(last_bought)[-max_history:]
            ages = [max(0.0, (basket.time - last_bought[i]).total_seconds() / 86400) for i in history]
            fresh = [i for i in basket.items if i not in last_bought]
            base = {"user_id": str(user), "locale": str(basket.locale), "history_ids": json.dumps(history),
                    "history_texts": json.dumps([texts.get(i, i) for i in history]), "history_ages": json.dumps(ages),
                    "basket": json.dumps(basket.items)}
            if held_out and n == len(rows) - 1:
                if fresh:
                    val_rows.append({**base, "target_id": fresh[0], "target_text": texts.get(fresh[0], fresh[0]),
                                     "target_logq": logq.get(fresh[0], floor), "relevant": json.dumps(fresh),
                                     "negatives_ids": "[]", "negatives_texts": "[]", "negatives_logq": "[]"})
            elif fresh:
                picks = fresh if len(fresh) <= targets_per_basket else [fresh[k] for k in sorted(
                    rng.choice(len(fresh), targets_per_basket, replace=False))]
                for target in picks:
                    neg = [catalogue[k] for k in rng.integers(0, len(catalogue), negatives)] if catalogue and negatives else []
                    train_rows.append({**base, "target_id": target, "target_text": texts.get(target, target),
                                       "target_logq": logq.get(target, floor), "relevant": json.dumps(fresh),
                                       "negatives_ids": json.dumps(neg), "negatives_texts": json.dumps([texts[i] for i in neg]),
                                       "negatives_logq": json.dumps([logq.get(i, floor) for i in neg])})
            for i in basket.items:
                last_bought.pop(i, None)
                last_bought[i] = basket.time  # most recent last
    locales = sorted({r["locale"] for r in train_rows})
    items = sorted(set(split.train["product_id"].astype(str)) & set(texts))  # the ID embeddings' vocabulary
    # a seeded global shuffle: rows come grouped by user, and the workers' shuffle buffer is small
    order = np.random.default_rng(seed).permutation(len(train_rows))
    return [train_rows[i] for i in order], val_rows, {"locales": locales, "items": items}
