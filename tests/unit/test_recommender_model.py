"""The recommender task: examples from a split's train part, the two-tower model's loss going down
on a planted pattern, the cold-start paths (a new user, a never-sold item) and the model behind the
evaluation's Recommender interface. Tiny random BERT, no Ray."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from ray_app.models.lora import build_model
from ray_app.models.recommender import age_bucket
from ray_app.recs.examples import recommender_rows
from ray_app.recs.model_system import TwoTowerSystem
from ray_app.recs.split import time_split
from ray_app.recs.task import collate_recommender, epoch_start, evaluate_recommender, finalize_recommender

pytestmark = [pytest.mark.unit, pytest.mark.model]
T0 = datetime(2011, 1, 1)


def planted_log(users: int = 40, days: int = 40) -> pd.DataFrame:
    """Two kinds of shopper: mug people buy mugs, lamp people buy lamps, one basket a day."""
    rows, rng = [], np.random.default_rng(1)
    for u in range(users):
        kind = "mug" if u % 2 else "lamp"
        for d in range(0, days, 4):
            for j, n in enumerate(rng.choice(30, 3, replace=False)):
                item = f"{kind}-{n}"
                rows.append({"user_id": f"u_{u}", "session_id": f"s_{u}_{d}", "product_id": item, "event_type": "purchase",
                             "timestamp": T0 + timedelta(days=d, minutes=j), "locale": "de" if u % 3 == 0 else "gb"})
    rows.append({"user_id": "anon-s_x", "session_id": "s_x", "product_id": "mug-1", "event_type": "purchase",
                 "timestamp": T0, "locale": "gb"})
    return pd.DataFrame(rows)


TEXTS = {f"{k}-{i}": f"{'ceramic coffee mug' if k == 'mug' else 'bedside table lamp'} model {i}" for k in ("mug", "lamp")
         for i in range(30)} | {"mug-new": "ceramic coffee mug brand new design"}


def _batch(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}


class _Shard:
    def __init__(self, rows):
        self.rows = rows

    def iter_batches(self, batch_size, batch_format):
        for i in range(0, len(self.rows), batch_size):
            yield _batch(self.rows[i:i + batch_size])


def test_examples_come_from_train_only_with_history_before_the_basket():
    split = time_split(planted_log(), cut=T0 + timedelta(days=30))
    train, val, spaces = recommender_rows(split, TEXTS, max_history=5, targets_per_basket=2, negatives=3, validation_fraction=0.3)
    assert train and val and spaces["locales"] == ["de", "gb"] and "mug-new" not in spaces["items"]
    assert all(not r["user_id"].startswith("anon-") for r in train + val)
    for r in train:
        hist, basket = json.loads(r["history_ids"]), json.loads(r["basket"])
        assert len(hist) <= 5 and r["target_id"] in basket and r["target_id"] not in hist
        assert len(json.loads(r["negatives_ids"])) == 3 and all(a >= 0 for a in json.loads(r["history_ages"]))
    val_users = {r["user_id"] for r in val}
    assert val_users and len({r["user_id"] for r in train} & val_users) == len(val_users)  # their earlier baskets still train
    assert age_bucket(0.5) == 0 and age_bucket(400) == 9


def test_loss_goes_down_and_the_model_ranks_the_users_kind_first():
    torch.manual_seed(0)
    split = time_split(planted_log(), cut=T0 + timedelta(days=30))
    train, val, spaces = recommender_rows(split, TEXTS, max_history=5, negatives=4, validation_fraction=0.3)
    head = {"locales": spaces["locales"], "items": spaces["items"], "max_history": 5, "temperature": 0.1}
    model, tok = build_model("recommender", "tiny-bert", head)
    cfg = {"max_length": 16, "head_config": head, "seed": 0}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for epoch in range(4):
        cfg.update(epoch_start(model, _Shard(train), tok, cfg, torch.device("cpu")))
        model.train()
        for i in range(0, len(train), 16):
            out = model(**collate_recommender(_batch(train[i:i + 16]), tok, cfg))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            losses.append(float(out["loss"].detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    model.eval()
    figures = finalize_recommender(evaluate_recommender(model, [_batch(val)], tok, cfg, torch.device("cpu")))
    assert figures["val_users"] == len(val) and figures["val_auc"] > 0.6

    class Loaded:  # what the registry's LoadedModel gives the system
        pass

    loaded = Loaded()
    loaded.model, loaded.tokenizer, loaded.max_length = model, tok, 16
    system = TwoTowerSystem(loaded, TEXTS).fit(split.train)
    recs = system.recommend(["u_1", "u_2", "u_new"], 5, {"u_1": {"mug-0"}}, {"u_new": "de"})
    assert all(len(v) == 5 and len(set(v)) == 5 for v in recs.values()) and "mug-0" not in recs["u_1"]
    kinds = [sum(p.startswith("mug") for p in recs[u]) for u in ("u_1", "u_2")]
    assert kinds[0] > kinds[1]  # a mug person gets more mugs than a lamp person
    # a product nobody bought yet is scored from its text: a mug person likes the new mug more than a lamp person does
    assert system.score("u_1", ["mug-new"])[0] > system.score("u_2", ["mug-new"])[0]
    assert np.isneginf(system.score("u_1", ["not-in-catalogue"])[0])


@pytest.mark.realweights
def test_with_the_packaged_minilm_a_never_sold_product_reaches_the_shopper_its_text_suits():
    """Cold start from text alone, before any training: the real encoder's vectors already put a
    new mug nearer a mug buyer's history than a lamp buyer's."""
    split = time_split(planted_log(), cut=T0 + timedelta(days=30))
    model, tok = build_model("recommender", "minilm", {"locales": ["de", "gb"], "max_history": 10, "frozen_text": True})
    model.eval()

    class Loaded:
        pass

    loaded = Loaded()
    loaded.model, loaded.tokenizer, loaded.max_length = model, tok, 32
    system = TwoTowerSystem(loaded, TEXTS).fit(split.train)
    mug_fan, lamp_fan = system.score("u_1", ["mug-new"])[0], system.score("u_2", ["mug-new"])[0]
    assert mug_fan > lamp_fan
    top = system.recommend(["u_1"], 3, {}, {})["u_1"]
    assert all(p.startswith("mug") for p in top)


def test_a_warm_start_keeps_what_both_models_know_and_starts_new_ids_fresh(tmp_path):
    """jobs.refresh retrains from production: the towers and the rows of products and locales both
    catalogues know are copied; a product first sold since starts from its fresh row (and its text)."""
    from ray_app.models.lora import save_model

    torch.manual_seed(0)
    old, _ = build_model("recommender", "tiny-bert", {"locales": ["de", "gb"], "items": ["mug-1", "mug-2"], "max_history": 5})
    with torch.no_grad():
        old.item_id.weight.normal_()  # trained-looking rows
    save_model(old, tmp_path / "old", "recommender", "tiny-bert", None)
    torch.manual_seed(1)
    fresh, _ = build_model("recommender", "tiny-bert", {"locales": ["gb", "fr"], "items": ["mug-2", "mug-3"], "max_history": 5})
    torch.manual_seed(1)
    warm, _ = build_model("recommender", "tiny-bert", {"locales": ["gb", "fr"], "items": ["mug-2", "mug-3"], "max_history": 5},
                          init_from=tmp_path / "old")
    assert torch.equal(warm.item_id.weight[warm.item_index["mug-2"]], old.item_id.weight[old.item_index["mug-2"]])
    assert torch.equal(warm.item_id.weight[warm.item_index["mug-3"]], fresh.item_id.weight[fresh.item_index["mug-3"]])
    assert torch.equal(warm.user_tower.locale.weight[warm.locale_index["gb"]], old.user_tower.locale.weight[old.locale_index["gb"]])
    for (name, a), (_, b) in zip(warm.user_tower.encoder.named_parameters(), old.user_tower.encoder.named_parameters()):
        assert torch.equal(a, b), name
    assert torch.equal(warm.user_tower.locale.weight[warm.locale_index["fr"]], fresh.user_tower.locale.weight[fresh.locale_index["fr"]])
    with pytest.raises(ValueError, match="warm-start"):
        build_model("ranker", "tiny-bert", {"pooling": "residual"}, init_from=tmp_path / "old")
