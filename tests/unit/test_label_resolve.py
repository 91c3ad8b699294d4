"""One label resolver: training, evaluation, the label report, show and export pick the same label."""
from __future__ import annotations

import json
from datetime import timedelta

from jobs import label as label_job
from ray_app.labeling.quality import quality_report, resolve_labels
from ray_app.labeling.resolve import resolve
from ray_app.store import rows_to_arrow, utcnow
from ray_app.training.data import load_task_data
from schemas.config import LabelConfig

T0 = utcnow() - timedelta(days=1)


def intent(label_id, qid, value, source, confidence, hours, annotator=""):
    return {"label_id": label_id, "target_type": "query", "target_id": qid, "task": "intent", "value": value,
            "source": source, "confidence": confidence, "annotator": annotator, "created_at": T0 + timedelta(hours=hours)}


def fill(store) -> None:
    queries = [{"query_id": f"q{i}", "text": f"nike shoes {i}", "split": "train", "updated_at": utcnow()} for i in range(6)]
    labels = [intent(f"q{i}-h", f"q{i}", "product_search", "human", 1.0, 0, "carol") for i in range(2, 6)]
    # two people disagree on q0: the surer one labelled first, the other one later
    labels += [intent("q0-alice", "q0", "brand_query", "human", 0.9, 0, "alice"),
               intent("q0-bob", "q0", "price_comparison", "human", 0.6, 5, "bob")]
    # q1 has only weak labels: two rules disagree, the surer one is older
    labels += [intent("q1-rule-a", "q1", "review_lookup", "rule", 0.8, 0, "rule_a"),
               intent("q1-rule-b", "q1", "order_support", "rule", 0.5, 5, "rule_b")]
    store.upsert("queries", rows_to_arrow(queries, "queries"))
    store.upsert("labels", rows_to_arrow(labels, "labels"))
    store.create_snapshot("s1")


def trained_intents(store) -> dict[str, str]:
    data = load_task_data(store, "s1", "intent_entity", validation_fraction=0.3, seed=1)
    return {r["query_id"]: r["intent"] for rows in data.splits.values() for r in rows}


def test_training_show_report_and_export_pick_the_same_label(store, tmp_path):
    fill(store)
    assert trained_intents(store)["q0"] == "brand_query"  # confidence before recency
    shown = label_job.run(LabelConfig(db=store.uri, action="show", query_id="q0", quiet=True))
    assert shown.query["resolved"]["intent"] == "brand_query"
    report = quality_report(store.read("labels"), store.read("queries", columns=["query_id", "text"]))
    resolved_intents = report["distribution"]["intent"]  # of the resolved labels: bob's and rule_b's lost
    assert resolved_intents == {"product_search": 4, "brand_query": 1, "review_lookup": 1}
    assert trained_intents(store)["q1"] == "review_lookup"
    out = tmp_path / "tasks.json"
    label_job.run(LabelConfig(db=store.uri, action="export", path=str(out), quiet=True))
    task = next(t for t in json.loads(out.read_text()) if t["data"]["query_id"] == "q1")
    predicted = [r["value"]["choices"][0] for p in task["predictions"] for r in p["result"] if r["from_name"] == "intent"]
    assert predicted == ["review_lookup"]  # the weak label Label Studio shows is the one training reads


def test_full_ties_fall_to_the_smallest_label_id_whatever_the_order():
    a = intent("b-label", "q", "brand_query", "human", 0.7, 1)
    b = intent("a-label", "q", "product_search", "human", 0.7, 1)
    for rows in ([a, b], [b, a]):
        assert resolve(rows)[("q", "intent")]["label_id"] == "a-label"
        assert resolve_labels(rows_to_arrow(rows, "labels")).column("label_id").to_pylist() == ["a-label"]
    missing = intent("z", "q", "brand_query", "human", None, 0) | {"created_at": None}
    assert resolve([missing, a])[("q", "intent")] is a  # no confidence / no time counts as lowest / oldest
