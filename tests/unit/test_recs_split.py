"""Recommendation splits on hand-made purchase frames: leakage, slices, determinism."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from ray_app.recs.split import per_user_split, purchases, time_split

pytestmark = pytest.mark.unit

COLUMNS = ["user_id", "product_id", "timestamp", "locale", "session_id", "event_type"]


def _day(d: int) -> datetime:
    return datetime(2011, 1, d)


def _events() -> pd.DataFrame:
    rows = [("u1", "p1", _day(1), "gb", "s1", "purchase"), ("u1", "p2", _day(1), "gb", "s1", "purchase"),
            ("u1", "p3", _day(5), "gb", "s5", "purchase"), ("u1", "p1", _day(6), "de", "s6", "purchase"),
            ("u1", "p2", _day(6), "gb", "s6", "return"), ("u1", "p9", _day(2), "gb", "s2", "impression"),
            ("u2", "p2", _day(2), "fr", "s2", "purchase"), ("u2", "p4", _day(7), "fr", "s7", "purchase"),
            ("u3", "p5", _day(8), "de", "s8", "purchase"),
            ("anon-1", "p1", _day(2), "gb", "sA", "purchase"), ("anon-1", "p3", _day(9), "gb", "sB", "purchase")]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_purchases_keeps_purchase_rows_and_names_missing_columns():
    p = purchases(_events())
    assert set(p["event_type"]) == {"purchase"} and len(p) == 9
    with pytest.raises(ValueError, match="session_id"):
        purchases(_events().drop(columns=["session_id"]))


def test_time_split_hand_checked():
    s = time_split(_events(), cut=_day(4))
    assert set(map(tuple, s.train[["user_id", "product_id"]].to_numpy())) == {
        ("u1", "p1"), ("u1", "p2"), ("u2", "p2"), ("anon-1", "p1")}
    # u1 re-bought p1 after the cut: removed from test, excluded from recommendations
    assert s.test == {"u1": {"p3"}, "u2": {"p4"}, "u3": {"p5"}}
    assert s.exclude == {"u1": {"p1", "p2"}, "u2": {"p2"}}
    assert s.new_items == {"p3", "p4", "p5"}
    assert s.new_users == {"u3"}
    assert s.heavy_users == {"u1"}  # train rows u1 2, u2 1; anonymous users are not counted
    assert s.user_locale["u1"] == "gb" and s.user_locale["u3"] == "de"
    assert s.protocol["name"] == "time" and s.protocol["test_users"] == 3 and s.protocol["new_items"] == 3
    assert (s.train["timestamp"] < pd.Timestamp(_day(4))).all()


def test_time_split_without_exclusion_keeps_repurchases():
    s = time_split(_events(), cut=_day(4), exclude_seen=False)
    assert s.test["u1"] == {"p1", "p3"}
    assert s.exclude == {}


def test_time_split_default_cut_leaves_test_share():
    n = 100
    frame = pd.DataFrame({"user_id": [f"u{i % 7}" for i in range(n)], "product_id": [f"p{i % 13}" for i in range(n)],
                          "timestamp": pd.date_range("2011-01-01", periods=n, freq="h"), "locale": "gb",
                          "session_id": [f"s{i // 3}" for i in range(n)], "event_type": "purchase"})
    s = time_split(frame, test_share=0.2)
    assert len(s.train) == 80
    with pytest.raises(ValueError, match="both must be non-empty"):
        time_split(frame, cut=datetime(2012, 1, 1))


def _random_events(seed: int = 7, users: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for p in rng.choice(40, size=int(rng.integers(2, 12)), replace=False):
            for repeat in range(int(rng.integers(1, 3))):  # some products bought in two baskets
                rows.append((f"u{u}", f"p{p}", datetime(2011, 1, 1 + repeat), "gb", f"s{u}-{repeat}", "purchase"))
    rows += [("anon-9", f"p{p}", datetime(2011, 1, 3), "gb", "sX", "purchase") for p in range(8)]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_per_user_split_no_leakage_and_sizes():
    events = _random_events()
    s = per_user_split(events, test_share=0.25, seed=0, min_items=4)
    distinct = events.groupby("user_id")["product_id"].nunique()
    eligible = {u for u, n in distinct.items() if n >= 4 and not u.startswith("anon-")}
    assert set(s.test) == eligible
    train_pairs = set(map(tuple, s.train[["user_id", "product_id"]].to_numpy()))
    for user, held in s.test.items():
        assert len(held) == max(1, int(np.floor(0.25 * distinct[user] + 0.5)))
        assert not any((user, p) in train_pairs for p in held)  # every row of a held pair left train
        assert s.exclude[user] == {p for u, p in train_pairs if u == user}
        assert not held & s.exclude[user]
    held_rows = sum(events[(events.user_id == u) & events.product_id.isin(h)].shape[0] for u, h in s.test.items())
    assert len(s.train) + held_rows == len(events)
    assert s.new_items == set() and s.new_users == set()
    assert ("anon-9", "p0") in train_pairs


def test_per_user_split_deterministic_by_seed():
    events = _random_events()
    a, b = per_user_split(events, seed=1), per_user_split(events, seed=1)
    assert a.test == b.test and a.train.equals(b.train)
    assert per_user_split(events, seed=2).test != a.test
