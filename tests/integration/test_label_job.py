"""The labelling job end to end on a tiny store: weak labels with Ray Data, human import wins
exactly where it was given, export/import round trip, and idempotent re-runs."""
from __future__ import annotations

import json
import random
from datetime import datetime, timedelta

import pytest
from sklearn.metrics import cohen_kappa_score

from jobs.label import run
from ray_app.labeling.quality import resolve_labels
from ray_app.store import rows_to_arrow
from schemas.config import LabelConfig

pytestmark = pytest.mark.integration

BRANDS = ["Nike", "Adidas", "Sony", "Levi's", "Dr. Martens"]
CATEGORIES = [["Clothing", "Shoes", "Running Shoes"], ["Electronics", "Headphones"],
              ["Electronics", "Laptops"], ["Clothing", "Jeans"], ["Clothing", "Shoes", "Boots"]]
COLOURS = ["black", "red", "navy blue", "white"]
QUERY_TEXTS = [
    "nike running shoes", "red nike running shoes size 10", "sony headphones under $100", "adidas",
    "nike official store", "where is my order", "return my headphones", "is sony good", "levis jeans reviews",
    "cheapest laptop", "sony vs bose", "black boots", "dr martens boots", "15 inch laptop", "navy blue jeans",
    "tell me a joke", "weather tomorrow", "headphones $20-$40", "running shoes for women", "white sneakers",
    "adidas new arrivals", "laptop deals", "track my package", "levi's", "boots below 100 dollars",
    "wireless headphones", "jeans xl", "cancel order", "nike", "good morning",
]


def build_store(store, seed: int = 0) -> None:
    rng = random.Random(seed)
    t0 = datetime(2026, 1, 1)
    products = []
    for i in range(50):
        brand, cat, colour = BRANDS[i % 5], CATEGORIES[(i * 3) % 5], COLOURS[i % 4]
        products.append(dict(product_id=f"P{i:03d}", title=f"{brand} {cat[-1].rstrip('s')} {colour} model {i}",
                             brand=brand, category_path=cat, attributes=json.dumps({"colour": colour}),
                             price=10.0 + i, updated_at=t0))
    queries = [dict(query_id=f"Q{i:03d}", text=t, updated_at=t0) for i, t in enumerate(QUERY_TEXTS)]
    events, n = [], 0
    for q in queries[:20]:
        shown = rng.sample(range(50), 6)
        for session in range(4):
            user = f"u_{rng.getrandbits(96):024x}"
            for pos, p in enumerate(shown, start=1):
                base = dict(user_id=user, session_id=f"S{q['query_id']}{session}", query_id=q["query_id"],
                            product_id=f"P{p:03d}", timestamp=t0 + timedelta(minutes=n))
                events.append(dict(base, event_id=f"E{n:05d}", event_type="impression", position=pos)); n += 1
                if rng.random() < 0.5 / pos:
                    events.append(dict(base, event_id=f"E{n:05d}", event_type="click", position=pos)); n += 1
                    if pos == 1 and session % 2 == 0:
                        events.append(dict(base, event_id=f"E{n:05d}", event_type="purchase")); n += 1
                    elif pos == 2:
                        events.append(dict(base, event_id=f"E{n:05d}", event_type="add_to_cart")); n += 1
    store.upsert("products", rows_to_arrow(products, "products"))
    store.upsert("queries", rows_to_arrow(queries, "queries"))
    store.upsert("events", rows_to_arrow(events, "events"))
    # Q000 showed products 24, 48, 26, 2, 16, 32 (4 impressions each: all graded by behaviour);
    # 0 and 1 were never shown, so they have no behaviour label to compare with
    grades = {24: "E", 48: "S", 26: "C", 2: "I", 16: "E", 32: "I", 0: "E", 1: "E"}
    judged = [dict(query_id="Q000", product_id=f"P{p:03d}", grade=g, gain={"E": 3, "S": 2, "C": 1, "I": 0}[g],
                   updated_at=t0) for p, g in grades.items()]
    store.upsert("judgments", rows_to_arrow(judged, "judgments"))


def resolved_map(store) -> dict:
    return {(r["target_id"], r["task"]): (r["value"], tuple((s["start"], s["end"], s["type"]) for s in r["spans"]))
            for r in resolve_labels(store.read("labels")).to_pylist()}


def test_label_job_end_to_end(ray_session, store, tmp_path):
    build_store(store)
    cfg = dict(db=store.uri, quiet=True)
    weak = run(LabelConfig(action="weak", report_out=str(tmp_path / "report.json"), **cfg))
    # one rule intent per query; every one of the 20 x 6 shown pairs has 4 impressions (>= 3): graded
    written = store.read("labels").to_pylist()
    assert sum(r["source"] == "rule" and r["task"] == "intent" for r in written) == 30
    assert weak.written == {"rule": sum(r["source"] == "rule" for r in written), "behaviour": 120}
    assert weak.report["coverage"]["intent"] == 1.0 and weak.report["coverage"]["entity"] > 0.5
    assert weak.report["agreement"]["intent_rule_vs_human"] == {"n": 0, "accuracy": None, "kappa": None}
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"coverage", "agreement", "conflicts", "distribution", "confidence"} <= set(report)
    assert report["agreement"]["intent"]["rule_vs_human"]["n"] == 0
    # behaviour against the judgments, recomputed here from the two tables
    judged = {f"{j['query_id']}::{j['product_id']}": j["grade"] for j in store.read("judgments").to_pylist()}
    behaviour = {r["target_id"]: r["value"] for r in store.read("labels").to_pylist()
                 if r["source"] == "behaviour" and r["target_id"] in judged}
    assert sorted(behaviour) == [f"Q000::P{p:03d}" for p in (2, 16, 24, 26, 32, 48)]
    vs_judged = report["agreement"]["relevance"]["behaviour_vs_judgments"]
    assert vs_judged["n"] == 6
    assert vs_judged["accuracy"] == round(sum(v == judged[t] for t, v in behaviour.items()) / 6, 4)
    pairs = sorted(behaviour)
    kappa = cohen_kappa_score([behaviour[t] for t in pairs], [judged[t] for t in pairs])
    assert vs_judged["kappa"] == pytest.approx(kappa, abs=1e-4), (behaviour, vs_judged)
    rows_after_first = store.count("labels")

    before = resolved_map(store)
    rule_intent = {t: v[0] for (t, task), v in before.items() if task == "intent"}
    targets = ["Q000", "Q005", "Q015"]
    human = tmp_path / "human.jsonl"
    lines = [dict(target_type="query", target_id=t, task="intent", annotator="annotator_a",
                  value="review_lookup" if rule_intent[t] != "review_lookup" else "out_of_scope") for t in targets]
    lines.append(dict(target_type="query", target_id="Q999", task="intent", value="brand_query"))  # unknown query
    human.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    imp = run(LabelConfig(action="import", path=str(human), **cfg))
    assert (imp.lines_read, imp.imported, imp.rejected, imp.written) == (4, 3, 1, {"human": 3})
    assert imp.rejected_lines[0]["line"] == 4 and "unknown query id" in imp.rejected_lines[0]["reason"]
    after = resolved_map(store)
    after_pairs = sum(task == "relevance" for _, task in after)
    changed = {t for t in set(before) | set(after) if before.get(t) != after.get(t)}
    assert changed == {(t, "intent") for t in targets}
    assert imp.report["agreement"]["intent_rule_vs_human"]["n"] == 3
    assert imp.report["agreement"]["intent_rule_vs_human"]["accuracy"] == 0.0

    # export -> import back changes nothing (lossless), in both common formats
    for ext in ("jsonl", "csv", "json"):
        path = tmp_path / f"review.{ext}"
        exp = run(LabelConfig(action="export", path=str(path), **cfg))
        back = run(LabelConfig(action="import", path=str(path), **cfg))
        assert back.rejected == 0 and back.imported == back.lines_read
        if ext == "json":  # Label Studio: one task per query and labelled pair; only annotations import
            assert exp.exported == 30 + after_pairs and back.lines_read == 3
        else:
            assert exp.exported == len(after) and back.lines_read == exp.exported
        assert resolved_map(store) == after
    assert store.count("labels") == rows_after_first + 3

    again = run(LabelConfig(action="weak", **cfg))
    assert store.count("labels") == rows_after_first + 3 and again.deleted_stale == 0
    assert resolved_map(store) == after  # human labels still win over re-made weak labels

    shown = run(LabelConfig(action="show", query_id="Q005", **cfg))
    assert shown.query["resolved"]["intent"] == after[("Q005", "intent")][0]
