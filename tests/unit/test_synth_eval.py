"""The synthetic shop's held-out evaluation set: gold labels of test queries only, judgments of
test and validation queries (never train), judgments that agree with the catalogue the shop
wrote and with the hidden relevance."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ray_app.synth import generate
from ray_app.synth_catalog import CATEGORIES, build_vocab, make_catalogue, make_queries
from ray_app.synth_eval import MAX_EXACT, true_relevance
from schemas.config import GenerateConfig

pytestmark = pytest.mark.unit

SMALL = dict(seed=5, products=400, queries=300, users=20, events=500, gold_fraction=0.3)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("shop")
    result = generate(GenerateConfig(out=str(out), **SMALL))
    queries = pd.read_csv(out / "queries.csv", keep_default_na=False)
    products: dict[str, dict] = {}
    for row in _jsonl(out / "products.jsonl"):  # a repeated id is a later re-export: the last line wins
        products[row["product_id"]] = row
    return out, result, queries, products


def test_gold_names_test_queries_only_and_judgments_never_train(shop):
    out, _, queries, _ = shop
    split = dict(zip(queries["query_id"], queries["split"]))
    test_ids = {q for q, s in split.items() if s == "test"}
    validation_ids = {q for q, s in split.items() if s == "validation"}
    gold_test = _jsonl(out / "gold_test_labels.jsonl")
    assert {g["target_id"] for g in gold_test} == test_ids  # every test query, and only those
    gold = {(g["target_id"], g["task"]): g for g in _jsonl(out / "gold_labels.jsonl")}
    assert all(g == gold[(g["target_id"], g["task"])] for g in gold_test)  # the generator's truth, unchanged
    assert not {h["target_id"] for h in _jsonl(out / "human_labels.jsonl")} & test_ids  # annotations train only
    judgments = pd.read_csv(out / "judgments.csv", keep_default_na=False)
    assert set(judgments["query_id"]) <= test_ids | validation_ids
    assert set(judgments["split"]) == {"test", "validation"}
    assert all(split[q] == s for q, s in zip(judgments["query_id"], judgments["split"]))
    # the test judgments do not depend on validation being judged (each split has its own stream)
    from ray_app.synth_eval import JUDGED_SPLITS
    alone = generate_judgments_of(SMALL, out.parent / "test-only", {"test": JUDGED_SPLITS["test"]})
    pd.testing.assert_frame_equal(judgments[judgments["split"] == "test"].reset_index(drop=True), alone)
    assert set(judgments["grade"]) <= set("ESCI") and not judgments.duplicated(["query_id", "product_id"]).any()


def generate_judgments_of(settings: dict, out: Path, splits: dict[str, int]) -> pd.DataFrame:
    """The judgments the generator writes when only `splits` are judged."""
    import ray_app.synth_eval as synth_eval

    saved = dict(synth_eval.JUDGED_SPLITS)
    synth_eval.JUDGED_SPLITS.clear()
    synth_eval.JUDGED_SPLITS.update(splits)
    try:
        generate(GenerateConfig(out=str(out), **settings))
    finally:
        synth_eval.JUDGED_SPLITS.clear()
        synth_eval.JUDGED_SPLITS.update(saved)
    return pd.read_csv(out / "judgments.csv", keep_default_na=False)


def _constraints(spans: list[dict], meta: dict) -> list:
    """Checks on a products.jsonl row that an Exact product must pass, read from the query's gold spans."""
    checks = []
    if meta["cat"] >= 0:
        path = list(CATEGORIES[meta["cat"]].path)
        checks.append(lambda p: p["category_path"] == path)
    brands = {s["text"].casefold() for s in spans if s["type"] == "brand"}
    if brands:
        checks.append(lambda p: p["brand"].casefold() in brands)
    for kind in ("colour", "size"):
        want = [s["text"].casefold() for s in spans if s["type"] == kind]
        if want:
            checks.append(lambda p, k=kind, w=want[0]: p["attributes"][k] == w)
    models = [s["text"].casefold() for s in spans if s["type"] == "product"]
    if models:
        checks.append(lambda p, m=models[0]: f" {m} " in f" {p['title'].casefold()} ")
    if math.isfinite(meta["price_max"]):
        checks.append(lambda p, x=meta["price_max"]: p["price"] is not None and p["price"] <= x)
    return checks


def test_judgments_agree_with_the_catalogue_written(shop):
    """Exact = meets every constraint the query's gold entities state; every such product is judged
    Exact (complete, so unjudged ones are truly not Exact); Irrelevant ones are outside the query's
    category (or brand, when it names no category)."""
    out, _, queries, products = shop
    rows = {q.query_id: q for q in make_queries(SMALL["queries"], SMALL["seed"], build_vocab(SMALL["seed"]))}
    # the generator's truth of every query (gold_labels.jsonl): validation queries are judged too
    gold = {g["target_id"]: g["spans"] for g in _jsonl(out / "gold_labels.jsonl") if g["task"] == "entity"}
    judgments = pd.read_csv(out / "judgments.csv", keep_default_na=False)
    brand_category = 0
    for qid, judged in judgments.groupby("query_id"):
        meta, grades = rows[qid].meta, dict(zip(judged["product_id"], judged["grade"]))
        checks = _constraints(gold[qid], meta)
        exact = {pid for pid, p in products.items() if p["title"] and all(c(p) for c in checks)}
        judged_exact = {pid for pid, g in grades.items() if g == "E"}
        if not any(s["type"] == "product" for s in gold[qid]):  # a model name is unique per brand, not per title
            assert judged_exact == exact, rows[qid].text
        assert judged_exact <= exact and 1 <= len(judged_exact) <= MAX_EXACT, rows[qid].text
        in_pool = checks[0] if meta["cat"] >= 0 else (lambda p: p["brand"].casefold() in
                                                      {s["text"].casefold() for s in gold[qid] if s["type"] == "brand"})
        assert all(not in_pool(products[pid]) for pid, g in grades.items() if g == "I"), rows[qid].text
        assert all(in_pool(products[pid]) for pid, g in grades.items() if g == "S"), rows[qid].text
        brand_category += meta["brand"] >= 0 and meta["cat"] >= 0 and {s["type"] for s in gold[qid]} == {"brand", "category"}
    assert judgments["query_id"].nunique() >= 10 and brand_category >= 1  # "{brand} {category}": all of them Exact


def test_exact_products_outrank_substitutes_in_hidden_relevance(shop):
    out, _, _, _ = shop
    vocab = build_vocab(SMALL["seed"])
    cat = make_catalogue(SMALL["products"], SMALL["seed"], vocab)
    rows = {q.query_id: q for q in make_queries(SMALL["queries"], SMALL["seed"], vocab)}
    index = {pid: i for i, pid in enumerate(cat.product_ids)}
    judgments = pd.read_csv(out / "judgments.csv", keep_default_na=False)
    with_substitutes = 0
    for qid, judged in judgments.groupby("query_id"):
        rel = {g: true_relevance(rows[qid].meta, cat, np.array([index[p] for p in judged["product_id"][judged["grade"] == g]],
                                                                 dtype=np.int64))
               for g in ("E", "S")}
        if len(rel["S"]):
            with_substitutes += 1
            assert rel["E"].min() > rel["S"].max(), rows[qid].text
    assert with_substitutes >= 5


def test_same_seed_same_evaluation_set(shop, tmp_path):
    out, _, _, _ = shop
    generate(GenerateConfig(out=str(tmp_path), **SMALL))
    for name in ("gold_test_labels.jsonl", "judgments.csv"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
