"""The synthetic shop: deterministic bytes, honoured counts, exact spans, consistent behaviour."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ray_app.synth import OUTPUT_FILES, GenerateResult, generate
from ray_app.synth_catalog import split_of, write_products
from schemas.config import GenerateConfig
from schemas.records import ENTITY_TYPES, EVENT_TYPES, INTENTS

pytestmark = pytest.mark.unit

SMALL = dict(seed=11, products=300, queries=200, users=30, events=3000, gold_fraction=0.3)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> tuple[Path, GenerateResult]:
    out = tmp_path_factory.mktemp("shop")
    return out, generate(GenerateConfig(out=str(out), **SMALL))


def test_same_seed_same_bytes_other_seed_differs(shop, tmp_path):
    out, _ = shop
    again = generate(GenerateConfig(out=str(tmp_path / "again"), **SMALL))
    for name in OUTPUT_FILES:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    other = generate(GenerateConfig(out=str(tmp_path / "other"), **{**SMALL, "seed": 12}))
    assert (tmp_path / "other" / "products.jsonl").read_bytes() != (out / "products.jsonl").read_bytes()
    assert again.model_dump() == {**shop[1].model_dump(), "out": str(tmp_path / "again")}
    assert other.events == SMALL["events"]


def test_counts_honoured(shop):
    out, result = shop
    products = _read_jsonl(out / "products.jsonl")
    assert len({p["product_id"] for p in products}) == result.products == SMALL["products"]
    assert len(products) == result.product_lines == SMALL["products"] + result.duplicate_products
    assert len(pd.read_csv(out / "queries.csv")) == result.queries == SMALL["queries"]
    assert len(pd.read_csv(out / "users.csv")) == result.users == SMALL["users"]
    assert len(pd.read_parquet(out / "events.parquet")) == result.events == SMALL["events"]
    assert len(_read_jsonl(out / "gold_labels.jsonl")) == result.gold_labels == 2 * SMALL["queries"]
    splits = pd.read_csv(out / "queries.csv")["split"]
    n_human = round(SMALL["gold_fraction"] * int((splits != "test").sum()))  # test queries are left to the gold file
    assert result.human_queries == n_human and result.human_labels == 2 * n_human
    assert len(_read_jsonl(out / "gold_test_labels.jsonl")) == result.gold_test_labels == 2 * int((splits == "test").sum())
    judgments = pd.read_csv(out / "judgments.csv")
    assert len(judgments) == result.judgments and judgments["query_id"].nunique() == result.judged_queries > 0
    assert result.files == {name: (out / name).stat().st_size for name in OUTPUT_FILES}


def test_products_shape_and_messiness(shop):
    out, result = shop
    products = _read_jsonl(out / "products.jsonl")
    first = products[0]
    assert set(first) == {"product_id", "title", "description", "brand", "category_path", "attributes", "price",
                          "rating", "rating_count", "stock", "image_url", "locale"}
    assert len(first["category_path"]) == 3 and isinstance(first["attributes"], dict)
    assert any("<p>" in p["description"] for p in products)
    assert sum(p["title"] == "" for p in products) == result.empty_titles
    seen: dict[str, dict] = {}
    for p in products:  # a repeated id is a later line with another price
        if p["product_id"] in seen:
            assert p["price"] != seen[p["product_id"]]["price"] and p["title"]
        seen[p["product_id"]] = p


def test_spans_match_text_and_all_intents_present(shop):
    out, _ = shop
    text = dict(pd.read_csv(out / "queries.csv", keep_default_na=False)[["query_id", "text"]].values)
    for name in ("gold_labels.jsonl", "human_labels.jsonl", "gold_test_labels.jsonl"):
        labels = _read_jsonl(out / name)
        for lab in labels:
            assert lab["target_type"] == "query" and lab["target_id"] in text
            if lab["task"] == "intent":
                assert lab["value"] in INTENTS and lab["spans"] == []
            for span in lab["spans"]:
                query = text[lab["target_id"]]
                assert 0 <= span["start"] < span["end"] <= len(query)
                assert query[span["start"]:span["end"]] == span["text"] and span["type"] in ENTITY_TYPES
    gold = _read_jsonl(out / "gold_labels.jsonl")
    assert {g["value"] for g in gold if g["task"] == "intent"} == set(INTENTS)
    assert sorted((g["target_id"], g["task"]) for g in gold) == sorted((q, t) for q in text for t in ("intent", "entity"))
    assert {s["type"] for g in gold for s in g["spans"]} == set(ENTITY_TYPES)


def test_human_labels_disagree_only_a_little(shop):
    out, result = shop
    gold = {(g["target_id"], g["task"]): g for g in _read_jsonl(out / "gold_labels.jsonl")}
    human = _read_jsonl(out / "human_labels.jsonl")
    assert {h["annotator"] for h in human} == {"annotator_a"}
    differ = {h["target_id"] for h in human
              if (h["value"], h["spans"]) != (gold[(h["target_id"], h["task"])]["value"], gold[(h["target_id"], h["task"])]["spans"])}
    assert len(differ) == result.human_disagreements <= 0.06 * result.human_queries + 1


def test_splits_present_and_stable(shop):
    out, _ = shop
    queries = pd.read_csv(out / "queries.csv")
    assert set(queries["split"]) == {"train", "validation", "test"}
    assert (queries["split"] == "train").mean() > 0.6
    assert split_of("Q00001") == split_of("Q00001") and split_of("Q00001") in {"train", "validation", "test"}


def test_events_reference_existing_rows(shop):
    out, _ = shop
    events = pd.read_parquet(out / "events.parquet")
    products = _read_jsonl(out / "products.jsonl")
    titled = {p["product_id"] for p in products if p["title"]}
    assert set(events["product_id"]) <= titled
    assert set(events["user_id"]) <= set(pd.read_csv(out / "users.csv")["user_id"])
    with_query = events[events["query_id"] != ""]
    assert set(with_query["query_id"]) <= set(pd.read_csv(out / "queries.csv")["query_id"])
    assert len(with_query) > 0.8 * len(events)
    # the generator writes the search funnel; returns come from order logs (online-retail)
    assert events["event_id"].is_unique and set(events["event_type"]) == set(EVENT_TYPES) - {"return"}
    assert events["position"].between(1, 10).all() and events["timestamp"].is_monotonic_increasing


def test_actions_follow_an_impression_at_the_same_position(shop):
    out, _ = shop
    events = pd.read_parquet(out / "events.parquet")
    key = ["session_id", "product_id", "position"]
    prev = {"click": "impression", "add_to_cart": "click", "purchase": "add_to_cart"}
    for kind, before in prev.items():
        acts = events[events["event_type"] == kind]
        joined = acts.merge(events[events["event_type"] == before][key + ["timestamp"]], on=key, how="left",
                            suffixes=("", "_before"))
        assert len(joined) == len(acts) and joined["timestamp_before"].notna().all(), kind
        assert (joined["timestamp_before"] <= joined["timestamp"]).all(), kind


def test_position_bias_and_relevance_show_in_clicks(shop):
    out, _ = shop
    events = pd.read_parquet(out / "events.parquet")
    shown = events[events["event_type"] == "impression"]["position"].value_counts()
    clicked = events[events["event_type"] == "click"]["position"].value_counts()
    assert clicked.get(1, 0) / shown[1] > 2 * clicked.get(8, 0) / shown[8]


def test_write_products_for_benchmarks(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = write_products(1000, 3, path)
    rows = _read_jsonl(path)
    assert len(rows) == lines >= 1000 and len({r["product_id"] for r in rows}) == 1000
    assert write_products(1000, 3, tmp_path / "q.jsonl", messy=False) == 1000
    assert path.read_bytes() == (write_products(1000, 3, tmp_path / "r.jsonl") and (tmp_path / "r.jsonl").read_bytes())


def test_entry_point_prints_json_summary(tmp_path, capsys):
    from jobs.generate import main

    rc = main(["--out", str(tmp_path / "cli"), "--products", "50", "--queries", "20", "--users", "5",
               "--events", "200", "--quiet"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["events"] == 200 and summary["products"] == 50
    assert main(["--out", str(tmp_path / "bad"), "--products", "5"]) == 2  # a bad config: exit 2, JSON line last
    bad = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bad["ok"] is False and "products" in bad["error"]
