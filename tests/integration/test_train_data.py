"""Training data from a snapshot: behaviour relevance labels feed the ranker when no judgments exist."""
from __future__ import annotations

import pytest

from ray_app.cli import JobError
from ray_app.ids import label_id
from ray_app.store import Store, rows_to_arrow, utcnow
from ray_app.training.data import load_task_data

pytestmark = pytest.mark.integration


def test_ranker_trains_on_behaviour_labels_and_human_wins(tmp_path):
    store = Store(str(tmp_path / "db"))
    now = utcnow()
    store.upsert("products", rows_to_arrow([{"product_id": f"p{i}", "title": f"shoe {i}", "updated_at": now} for i in range(4)], "products"))
    store.upsert("queries", rows_to_arrow([{"query_id": f"q{i}", "text": f"shoes {i}", "split": "train", "updated_at": now}
                                           for i in range(6)], "queries"))
    labels = []
    for q in range(6):
        for p in range(4):
            grade = "E" if p == q % 4 else "I"
            labels.append({"label_id": label_id(f"q{q}::p{p}", "relevance", "behaviour", "behaviour"), "target_type": "query_product",
                           "target_id": f"q{q}::p{p}", "task": "relevance", "value": grade, "source": "behaviour",
                           "confidence": 0.6, "annotator": "behaviour", "created_at": now})
    labels.append({"label_id": label_id("q0::p1", "relevance", "human", "ann"), "target_type": "query_product",
                   "target_id": "q0::p1", "task": "relevance", "value": "S", "source": "human", "confidence": 1.0,
                   "annotator": "ann", "created_at": now})
    store.upsert("labels", rows_to_arrow(labels, "labels"))
    store.create_snapshot("s")
    data = load_task_data(store, "s", "ranker", validation_fraction=0.3)
    rows = data.splits["train"] + data.splits["validation"]
    assert len(rows) == 6
    q0 = next(r for r in rows if r["query_id"] == "q0")
    assert sorted(__import__("json").loads(q0["gains"])) == [0, 0, 2, 3]  # human S beat behaviour I on (q0, p1)
    with pytest.raises(JobError, match="not found"):
        load_task_data(store, "missing", "ranker")


def test_training_rows_are_shuffled_not_grouped_by_intent(tmp_path):
    """Ids that sort by intent (as SNIPS's do) must not reach training one intent after another."""
    store = Store(str(tmp_path / "db"))
    now = utcnow()
    intents = ["a", "b", "c", "d"]
    queries = [{"query_id": f"{it}-{i:03d}", "text": f"{it} query {i}", "split": "train", "updated_at": now}
               for it in intents for i in range(50)]
    store.upsert("queries", rows_to_arrow(queries, "queries"))
    store.upsert("labels", rows_to_arrow([{"label_id": label_id(q["query_id"], "intent", "human", "x"), "target_type": "query",
                                           "target_id": q["query_id"], "task": "intent", "value": q["query_id"][0],
                                           "source": "human", "annotator": "x", "created_at": now} for q in queries], "labels"))
    store.create_snapshot("s")
    train = load_task_data(store, "s", "intent_entity").splits["train"]
    first = [r["intent"] for r in train[:20]]
    assert len(set(first)) >= 3
    assert train == load_task_data(store, "s", "intent_entity").splits["train"]  # deterministic
