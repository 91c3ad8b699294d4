"""Baseline recommenders and the offline evaluation on small planted purchase patterns."""
from __future__ import annotations

import json
import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from ray_app.recs.baselines import (ALSBaseline, BPRBaseline, ItemKNN, LocalePopularity, Popularity, Recommender)
from ray_app.recs.offline import evaluate_systems, markdown_table
from ray_app.recs.split import RecsSplit, time_split

pytestmark = pytest.mark.unit


def _frame(rows: list[tuple[str, str]], locale: str = "gb") -> pd.DataFrame:
    return pd.DataFrame({"user_id": [u for u, _ in rows], "product_id": [p for _, p in rows],
                         "session_id": [f"s-{u}" for u, _ in rows], "locale": locale})


def _blocks(seed: int = 0, users: int = 40, per_user: int = 6) -> pd.DataFrame:
    """Two planted communities: block-A users buy only a* items, block-B users only b* items."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        block = "a" if u < users // 2 else "b"
        rows += [(f"{block}-user{u}", f"{block}{i}") for i in rng.choice(10, size=per_user, replace=False)]
    return _frame(rows)


def _all_systems() -> list:
    return [Popularity(), LocalePopularity(min_buyers=1), ItemKNN(neighbours=5),
            ALSBaseline(factors=4, iterations=10), BPRBaseline(factors=4, iterations=50)]


def test_exclude_respected_exactly_k_no_duplicates():
    train = _blocks()
    catalogue = set(train["product_id"])
    exclude = {"a-user0": {"a0", "a1", "b3", "not-sold"}, "stranger": {"a2"}}
    for system in _all_systems():
        assert isinstance(system, Recommender)
        system.fit(train)
        users = ["a-user0", "b-user30", "stranger"]
        for k in (5, 19, 25):
            recs = system.recommend(users, k, exclude, {"stranger": "gb"})
            for user in users:
                banned = exclude.get(user, set()) & catalogue
                assert len(recs[user]) == min(k, len(catalogue) - len(banned)), (system.name, user, k)
                assert len(set(recs[user])) == len(recs[user])
                assert not set(recs[user]) & exclude.get(user, set())
                assert set(recs[user]) <= catalogue  # never an item unseen in train


def test_popularity_counts_distinct_buyers():
    rows = [("u1", "x"), ("u1", "x"), ("u1", "x"), ("u2", "y"), ("u3", "y"), ("u3", "z"), ("u4", "z"), ("u5", "z")]
    frame = _frame(rows)
    frame["session_id"] = [f"s{n}" for n in range(len(rows))]  # u1 bought x in three baskets: still one buyer
    model = Popularity().fit(frame)
    assert model.recommend(["anyone"], 3, {}, {}) == {"anyone": ["z", "y", "x"]}
    # score is minus the position in that ranking; unseen items rank below everything
    assert list(model.score("anyone", ["x", "z", "new"])) == [-2.0, -0.0, -np.inf]


def test_locale_popularity_backs_off_to_global():
    gb = [(f"g{n}", "tea") for n in range(5)] + [(f"g{n}", "mug") for n in range(3)]
    de = [(f"d{n}", "beer") for n in range(3)]
    frame = pd.concat([_frame(gb, "gb"), _frame(de, "de"), _frame([("s1", "sock")], "se")], ignore_index=True)
    model = LocalePopularity(min_buyers=2).fit(frame)
    recs = model.recommend(["d0", "newcomer", "s1", "nobody"], 2, {}, {"newcomer": "de", "nobody": "xx"})
    assert recs["d0"] == ["beer", "tea"]  # German favourite first, then global popularity
    assert recs["newcomer"] == ["beer", "tea"]  # locale given at request time
    assert recs["s1"] == ["tea", "beer"]  # Sweden has one buyer: global counts
    assert recs["nobody"] == ["tea", "beer"]


def test_item_knn_finds_planted_co_purchase_neighbour():
    # x and y are bought together by five users; z is a popular but unrelated item
    rows = [(f"p{n}", "x") for n in range(5)] + [(f"p{n}", "y") for n in range(5)]
    rows += [(f"q{n}", "z") for n in range(8)] + [("q0", "w"), ("q1", "w")]
    model = ItemKNN(neighbours=1).fit(_frame(rows + [("me", "x")]))
    assert model.recommend(["me"], 1, {"me": {"x"}}, {}) == {"me": ["y"]}
    # hand cosine: x has 6 buyers, y 5, 5 in common -> 5 / sqrt(30); one neighbour kept per item
    sim = model.similarity_.toarray()
    ix, iy = model._item_pos["x"], model._item_pos["y"]
    assert sim[ix, iy] == pytest.approx(5 / math.sqrt(30))
    assert (np.count_nonzero(sim, axis=1) <= 1).all()
    # after its neighbour, the list is filled by popularity; a cold user gets pure popularity
    assert model.recommend(["me"], 3, {"me": {"x"}}, {})["me"] == ["y", "z", "w"]
    assert model.recommend(["cold"], 3, {}, {})["cold"] == Popularity().fit(_frame(rows)).recommend(["c"], 3, {}, {})["c"]


# two factors for two planted blocks: with spare factors ALS also fits each user's unbought in-block
# items as negatives (they are zeros in the matrix), which blurs the block it is asked to recover
@pytest.mark.parametrize("system", [ALSBaseline(factors=2, iterations=15, seed=0),
                                    BPRBaseline(factors=4, iterations=100, seed=0)], ids=["als", "bpr"])
def test_factor_models_recover_two_blocks(system):
    train = _blocks(users=60, per_user=5)
    system.fit(train)
    seen = {u: set(g) for u, g in train.groupby("user_id")["product_id"]}
    users = sorted(seen)
    recs = system.recommend(users, 3, seen, {})
    # each user's top 3 unseen items come from their own block, for all but a stray user or two
    in_block = [all(p[0] == u[0] for p in recs[u]) for u in users]
    assert np.mean(in_block) >= 0.95
    # the score ranks the user's own block above the other one
    user = users[0]
    own = system.score(user, [f"{user[0]}{i}" for i in range(10)])
    other = system.score(user, [f"{'b' if user[0] == 'a' else 'a'}{i}" for i in range(10)])
    assert own.mean() > other.mean()


def test_als_matches_implicit_recommend():
    train = _blocks(seed=3)
    model = ALSBaseline(factors=4, iterations=10, seed=1).fit(train)
    seen = {u: set(g) for u, g in train.groupby("user_id")["product_id"]}
    ours = model.recommend(sorted(seen), 4, seen, {})
    for user, row in list(model._user_pos.items())[:10]:
        ids, _ = model.model_.recommend(row, model.counts_[row], N=4, filter_already_liked_items=True)
        assert ours[user] == [model.items_[i] for i in ids]


def _events() -> pd.DataFrame:
    # before the cut: block pattern plus popular items; after: repeat block buys, one new item, one new user
    rows = []
    for u in range(12):
        block = "a" if u < 6 else "b"
        for i in range(4):
            rows.append((f"u{u}", f"{block}{(u + i) % 5}", datetime(2011, 1, 1 + i), f"s{u}-{i}"))
        rows.append((f"u{u}", f"{block}{(u + 4) % 5}", datetime(2011, 3, 1), f"t{u}"))
    rows += [("u0", "brand-new", datetime(2011, 3, 2), "t0b"), ("newbie", "a0", datetime(2011, 3, 3), "n1")]
    frame = pd.DataFrame(rows, columns=["user_id", "product_id", "timestamp", "session_id"])
    return frame.assign(locale="gb", event_type="purchase")


def test_evaluate_systems_shapes_and_bootstrap():
    split = time_split(_events(), cut=datetime(2011, 2, 1))
    systems = {"popularity": Popularity().fit(split.train), "item_knn": ItemKNN(neighbours=5).fit(split.train)}
    result = evaluate_systems(split, systems, k=3, resamples=200)
    json.dumps(result, allow_nan=False)  # strict JSON
    assert result["k"] == 3 and result["split"]["name"] == "time"
    assert result["slice_users"] == {"overall": 13, "new_items": 1, "new_users": 1, "heavy_users": len(split.heavy_users)}
    for fig in result["systems"].values():
        assert set(fig["slices"]) == {"new_items", "new_users", "heavy_users"}
        assert fig["slices"]["new_items"]["ndcg@3"] == 0.0  # no baseline can return an item never sold in train
        assert 0.0 < fig["coverage"] <= 1.0 and 0.0 <= fig["auc"] <= 1.0
    # co-purchase knows each user's block; popularity does not
    assert result["systems"]["item_knn"]["overall"]["ndcg@3"] > result["systems"]["popularity"]["overall"]["ndcg@3"]
    vs = result["vs_reference"]
    assert vs["reference"] == "item_knn"  # default: the best baseline by NDCG
    boot = vs["systems"]["popularity"]["overall"]["ndcg@3"]
    assert boot["queries"] == 13 and boot["ci_low"] <= boot["diff"] <= boot["ci_high"] < 0
    assert set(vs["systems"]["popularity"]) == {"overall", "new_items", "new_users", "heavy_users"}
    table = markdown_table(result).splitlines()
    assert len(table) == 2 + 2 and table[0].startswith("| system | NDCG@3 | Recall@3")


def test_evaluate_systems_hand_computed_and_rejects_excluded_items():
    train = _frame([("a", "p1"), ("b", "p1"), ("c", "p1"), ("a", "p2"), ("b", "p2"), ("c", "p3")])
    split = RecsSplit(train=train, test={"a": {"p2"}, "z": {"p3"}}, exclude={}, new_items=set(), new_users={"z"},
                      heavy_users=set(), user_locale={}, name="hand", protocol={"name": "hand"})
    result = evaluate_systems(split, {"pop": Popularity().fit(train)}, k=2, resamples=10)
    # both users get [p1, p2]: a hits at rank 2 (1/log2 3), z misses
    assert result["systems"]["pop"]["overall"]["ndcg@2"] == pytest.approx(round(0.5 / math.log2(3), 4))
    assert result["systems"]["pop"]["coverage"] == pytest.approx(round(2 / 3, 4))
    assert result["vs_reference"] == {"reference": "pop", "resamples": 10, "systems": {}}

    class Leaky(Popularity):
        def recommend(self, users, k, exclude, locales):
            return {u: ["p1"] for u in users}

    split.exclude = {"a": {"p1"}}
    with pytest.raises(ValueError, match="excluded items"):
        evaluate_systems(split, {"leaky": Leaky().fit(train)}, k=2)
