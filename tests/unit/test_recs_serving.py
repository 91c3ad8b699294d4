"""What the recommendation endpoints compute (ray_app/recs/serving.py), without Ray: popularity by
locale and recency, co-purchase complements, vector neighbours for a product nobody bought, the
home list's merge of a precomputed list with the session, cold start, stock and exclusions."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import torch

from ray_app.recs.serving import RecsIndex, baskets, fuse, user_history

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def product(pid: str, stock=5, brand="acme") -> dict:
    return {"product_id": pid, "title": f"title {pid}", "brand": brand, "stock": stock, "price": 10.0}


def event(user: str, pid: str, day: float, session: str = "", kind: str = "purchase", locale: str = "gb") -> dict:
    return {"user_id": user, "session_id": session, "product_id": pid, "event_type": kind, "locale": locale,
            "timestamp": T0 + timedelta(days=day)}


CATALOGUE = [product(p) for p in ("cup", "kettle", "lamp", "mug", "new-mug", "old-hit", "saucer", "sold-out")]
CATALOGUE[-1]["stock"] = 0


def log() -> pd.DataFrame:
    rows = []
    for u in range(6):  # mugs and saucers go together; kettles with cups
        rows += [event(f"u{u}", "mug", 20, f"b{u}"), event(f"u{u}", "saucer", 20, f"b{u}")]
        rows += [event(f"u{u}", "kettle", 21, f"c{u}"), event(f"u{u}", "cup", 21, f"c{u}")]
    rows += [event(f"old{u}", "old-hit", 0, f"o{u}") for u in range(8)]  # a big seller, long ago
    rows += [event(f"de{u}", "lamp", 21, f"d{u}", locale="de") for u in range(3)]
    rows += [event("u0", "sold-out", 21, "z"), event("u1", "sold-out", 21, "z1")]
    rows += [event("u9", "lamp", 21, kind="impression")]  # impressions are not baskets
    return pd.DataFrame(rows)


def vectors() -> np.ndarray:
    v = {"cup": [1, 0, 0], "kettle": [0.9, 0.1, 0], "lamp": [0, 0, 1], "mug": [0, 1, 0], "new-mug": [0.05, 1, 0],
         "old-hit": [0, 0, 0], "saucer": [0.1, 0.8, 0.1], "sold-out": [0, 1, 0]}
    return np.array([v[p["product_id"]] for p in CATALOGUE], dtype=np.float32)


@pytest.fixture(scope="module")
def index() -> RecsIndex:
    return RecsIndex(CATALOGUE, log(), vectors(), min_locale_buyers=3, trend_half_life_days=7)


def ids(picks) -> list[str]:
    return [p.product_id for p in picks]


def test_fuse_adds_reciprocal_ranks_and_names_every_source():
    out = fuse({"a": [("x", 0), ("y", 0)], "b": [("y", 0), ("z", 0)]}, k=3, exclude={"z"})
    assert ids(out) == ["y", "x"] and out[0].sources == ["a", "b"] and out[1].sources == ["a"]
    assert out[0].score == pytest.approx(1 / 62 + 1 / 61, abs=1e-6)


def test_baskets_are_sessions_else_user_days():
    frame = pd.DataFrame([event("u", "a", 0.1), event("u", "b", 0.2), event("u", "c", 1.1), event("u", "d", 0, "s")])
    keys = baskets(frame).tolist()
    assert keys[0] == keys[1] != keys[2] and keys[3] == "s"


def test_popular_weighs_recent_buyers_and_uses_the_locale_when_it_has_enough(index):
    overall, what = index.popular(None, 10)
    assert what == "popular" and "sold-out" not in ids_of(overall)  # out of stock never recommended
    # eight buyers three weeks before the newest event count less than six buyers of last week
    assert ids_of(overall).index("mug") < ids_of(overall).index("old-hit")
    german, what = index.popular("DE", 3)
    assert what == "popular:de" and ids_of(german)[0] == "lamp" and len(german) == 3  # topped up from every locale
    unknown, what = index.popular("fr", 3)
    assert what == "popular" and len(unknown) == 3


def ids_of(ranked) -> list[str]:
    return [p for p, _ in ranked]


def test_cart_complements_come_from_co_purchase_and_leave_the_basket_out(index):
    picks, strategy = index.cart(["mug"], [], "gb", 3)
    assert strategy == "cart" and ids(picks)[0] == "saucer" and "mug" not in ids(picks)
    assert picks[0].sources == ["co_purchase"]
    picks, strategy = index.cart(["unknown-id"], [], "de", 2)
    assert strategy == "popular" and ids(picks)[0] == "lamp" and len(picks) == 2


def test_similar_reaches_a_product_nobody_bought_through_its_vector(index):
    like_mug = index.similar("mug", 3)
    assert ids(like_mug)[0] == "saucer" and set(like_mug[0].sources) == {"co_purchase", "vector"}
    assert "new-mug" in ids(like_mug) and "sold-out" not in ids(like_mug)
    new = index.similar("new-mug", 2)  # never sold: no co-purchase, still answered
    assert ids(new)[0] == "mug" and new[0].sources == ["vector"]
    with pytest.raises(KeyError):
        index.similar("nope", 3)


def test_home_merges_the_precomputed_list_with_the_session_and_falls_back_to_popular(index):
    picks, strategy = index.home(["cup", "lamp", "sold-out"], [], [], bought={"cup"}, locale="gb", k=4)
    assert strategy == "personal" and ids(picks)[0] == "lamp" and "cup" not in ids(picks) and "sold-out" not in ids(picks)
    assert len(picks) == 4 and picks[1].sources[0].startswith("popular")  # topped up from popular
    # after the list was made the shopper looked at a mug: without a model its co-purchases join in
    picks, strategy = index.home(["lamp"], [("mug", 0.0)], ["mug"], bought=set(), locale="gb", k=3)
    assert strategy == "session" and "saucer" in ids(picks)
    picks, strategy = index.home(None, [], [], bought=set(), locale="de", k=2)  # a stranger: popular in the locale
    assert strategy == "popular" and ids(picks)[0] == "lamp"


def test_user_history_is_the_latest_distinct_interest_with_ages():
    frame = pd.DataFrame([event("u", "a", 0), event("u", "b", 1, kind="click"), event("u", "a", 2),
                          event("u", "c", 3, kind="impression")])
    history, bought = user_history(frame, 5, now=T0 + timedelta(days=4))
    assert history == [("b", 3.0), ("a", 2.0)] and bought == {"a"}
    assert user_history(frame, 1, now=datetime(2026, 11, 5))[0] == [("a", 2.0)]  # a naive now is UTC


@pytest.mark.model
def test_with_a_model_the_session_is_read_by_the_user_tower():
    from ray_app.models.lora import build_model
    from ray_app.recs.model_system import TwoTowerSystem

    torch.manual_seed(0)
    model, tok = build_model("recommender", "tiny-bert", {"locales": ["gb", "de"], "max_history": 5})
    model.eval()

    class Loaded:
        pass

    loaded = Loaded()
    loaded.model, loaded.tokenizer, loaded.max_length = model, tok, 16
    system = TwoTowerSystem(loaded, {p["product_id"]: p["title"] for p in CATALOGUE})
    system.item_vectors = system.encode_items()
    idx = RecsIndex(CATALOGUE, log(), system=system, min_locale_buyers=3)
    live = idx.personal([("mug", 1.0), ("cup", 0.0)], "gb", 4, exclude={"lamp"})
    assert len(live) == 4 and not {"lamp", "sold-out"} & set(ids_of(live))
    picks, strategy = idx.home(["kettle"], [("mug", 1.0)], ["mug"], bought={"mug"}, locale="gb", k=3)
    assert strategy == "session" and "mug" not in ids(picks) and any("session" in p.sources for p in picks)
    # the text tower gives the never-sold product a vector: it has neighbours
    assert ids(idx.similar("new-mug", 3)) and idx.similar("new-mug", 3)[0].sources == ["vector"]
    with pytest.raises(ValueError):
        RecsIndex(CATALOGUE[:-1], log(), system=system)
