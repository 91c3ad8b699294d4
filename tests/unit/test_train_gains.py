"""Ranker and retriever examples from judgments on declared grade scales (no Ray): the stored gain
and scale make the training targets, ESCI's stay exactly what they were, positives follow
evaluation's relevance rule, and scales that cannot be normalised fail with a clear error."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ray_app.cli import JobError
from ray_app.store import rows_to_arrow, utcnow
from ray_app.training.data import load_task_data
from schemas.grades import GradeScale

pytestmark = pytest.mark.unit

ESCI_GAIN = {"E": 3, "S": 2, "C": 1, "I": 0}


def fill_graded_store(store, grades: dict[str, list], scale: str, snapshot: str = "s1", labels=()) -> None:
    """Products p0..p{n-1}, one train query per key of `grades` judging p0, p1, ... with its list; snapshot."""
    now = utcnow()
    n = max(len(g) for g in grades.values())
    store.upsert("products", rows_to_arrow([{"product_id": f"p{i}", "title": f"product {i}", "updated_at": now}
                                            for i in range(n)], "products"))
    store.upsert("queries", rows_to_arrow([{"query_id": q, "text": f"query {q}", "split": "train", "updated_at": now}
                                           for q in grades], "queries"))
    parsed = GradeScale.parse(scale) if scale else None
    judgments = [{"query_id": q, "product_id": f"p{i}", "grade": str(g),
                  "gain": parsed.grade(g)[1] if parsed else float(g), "scale": scale, "updated_at": now}
                 for q, gs in grades.items() for i, g in enumerate(gs) if g is not None]
    store.upsert("judgments", rows_to_arrow(judgments, "judgments"))
    if labels:
        store.upsert("labels", rows_to_arrow([{"label_id": f"l{i}", "target_type": "query_product", "target_id": t,
                                               "task": "relevance", "value": v, "source": "behaviour",
                                               "confidence": 0.6, "annotator": "behaviour", "created_at": now}
                                              for i, (t, v) in enumerate(labels)], "labels"))
    store.create_snapshot(snapshot)


def _rows(store, task: str, snapshot: str = "s1", **kw) -> list[dict]:
    data = load_task_data(store, snapshot, task, validation_fraction=0.0, **kw)
    return [r for rows in data.splits.values() for r in rows]


def _by_query(rows: list[dict]) -> dict[str, dict]:
    return {r["query_id"]: {k: json.loads(r[k]) for k in ("docs", "gains", "targets")} for r in rows}


def test_esci_graded_data_give_the_same_training_targets_as_before(store):
    """E/S/C/I: gains 3/2/1/0 (as integers, as before), pointwise targets gain / 3, retriever
    positives E and S, hard negatives I; the pointwise loss is the old BCE against gain / 3."""
    from tests.integration.test_train import fill_judged_store

    fill_judged_store(store, n_queries=8)
    letters = {}
    for j in store.read("judgments").to_pylist():
        letters.setdefault(j["query_id"], {})[j["product_id"]] = j["grade"]
    product_text = {p["product_id"]: p["title"] for p in store.read("products").to_pylist()}
    ranker = _rows(store, "ranker")
    assert len(ranker) == 8
    for row in ranker:
        docs, gains, targets = (json.loads(row[k]) for k in ("docs", "gains", "targets"))
        expected = [ESCI_GAIN[letters[row["query_id"]][p]] for p in sorted(letters[row["query_id"]])]
        assert row["gains"] == json.dumps(expected)  # byte for byte: 3, not 3.0
        assert targets == pytest.approx([g / 3 for g in expected])
        assert len(docs) == len(gains) == len(targets) == 7
    retriever = _rows(store, "retriever", hard_negatives=3)
    for qid, graded in letters.items():
        titles = {product_text[p]: g for p, g in graded.items()}
        mine = [r for r in retriever if r["query_id"] == qid]
        assert sorted(titles[r["positive"].split(" | ")[0]] for r in mine) == ["E", "S"]
        assert {titles[n.split(" | ")[0]] for r in mine for n in json.loads(r["negatives"])} == {"I"}

    from ray_app.models.encoder import tiny_bert
    from ray_app.models.heads import CrossEncoderRanker
    from ray_app.training.tasks import collate_ranker

    model, tok = tiny_bert()
    ranker_model = CrossEncoderRanker(model, loss="pointwise", pooling="cls").eval()
    batch = {k: np.array([r[k] for r in ranker[:2]], dtype=object) for k in ranker[0]}
    inputs = collate_ranker(batch, tok, {"list_size": 16, "seed": 1, "max_length": 16, "batch_negatives": 0,
                                         "head_config": {"pooling": "cls"}}, sample=False)
    assert torch.allclose(inputs["targets"], inputs["gains"] / 3)
    with torch.no_grad():
        out = ranker_model(**inputs)
    assert float(out["loss"]) == pytest.approx(float(F.binary_cross_entropy_with_logits(out["scores"], inputs["gains"] / 3)))


def test_numeric_and_fractional_grades_give_normalised_targets_and_relevant_positives(store):
    fill_graded_store(store, {"q1": ["0", "1", "2", "2.5", "3"], "q2": ["0.5", "3", "1.5"]}, "numeric:0-3")
    rows = _by_query(_rows(store, "ranker"))
    assert rows["q1"]["gains"] == [0, 1, 2, 2.5, 3] and rows["q2"]["gains"] == [0.5, 3, 1.5]
    assert rows["q1"]["targets"] == pytest.approx([0, 1 / 3, 2 / 3, 2.5 / 3, 1])
    assert rows["q2"]["targets"] == pytest.approx([0.5 / 3, 1, 0.5])
    retriever = _rows(store, "retriever", hard_negatives=2)
    # relevant = top third of 0-3 (gain >= 2), as jobs.evaluate counts it; negatives: the lowest grade
    assert sorted((r["query_id"], r["positive"]) for r in retriever) == [
        ("q1", "product 2"), ("q1", "product 3"), ("q1", "product 4"), ("q2", "product 1")]
    assert {n for r in retriever if r["query_id"] == "q1" for n in json.loads(r["negatives"])} == {"product 0"}
    assert all(json.loads(r["negatives"]) == [] for r in retriever if r["query_id"] == "q2")  # 0.5 is not the lowest


def test_a_scale_that_does_not_start_at_zero_and_named_levels(store, tmp_path):
    from ray_app.store import Store

    fill_graded_store(store, {"q1": ["1", "3", "4", "5"]}, "numeric:1-5")
    assert _by_query(_rows(store, "ranker"))["q1"]["targets"] == pytest.approx([0, 0.5, 0.75, 1])
    assert sorted(r["positive"] for r in _rows(store, "retriever")) == ["product 2", "product 3"]  # gain >= 5 - 4/3
    named = Store(str(tmp_path / "named"))
    fill_graded_store(named, {"q1": ["perfect", "good", "bad"]}, "perfect=4,good=1,bad=0")
    row = _by_query(_rows(named, "ranker"))["q1"]
    assert row["gains"] == [4, 1, 0] and row["targets"] == pytest.approx([1, 0.25, 0])


def test_scales_with_different_ranges_are_rescaled_and_noted(store):
    """Judgments on 0-4, behaviour labels on ESCI's 0-3 for the pairs judgments leave out."""
    fill_graded_store(store, {"q1": ["4", "2", None, None]}, "numeric:0-4", labels=[("q1::p2", "E"), ("q1::p3", "S")])
    data = load_task_data(store, "s1", "ranker", validation_fraction=0.0)
    row = _by_query(data.splits["train"])["q1"]
    assert row["targets"] == pytest.approx([1, 0.5, 1, 2 / 3])
    assert row["gains"] == pytest.approx([4, 2, 4, 8 / 3])  # each scale's [0, 1] position times the top gain 4
    assert any("different gain ranges" in n and "numeric:0-4" in n and "esci" in n for n in data.notes)


def test_relevance_labels_use_the_snapshot_taxonomys_grades_and_aliases(store):
    from ray_app.taxonomy import declare_taxonomy
    from schemas.taxonomy import Taxonomy

    declare_taxonomy(store, Taxonomy(name="shop", intents=["search"], grades={"perfect": 3, "good": 2, "bad": 0},
                                     grade_aliases={"great": "perfect"}), key="k")
    fill_graded_store(store, {"q1": [None, None, None, None]}, "", labels=[
        ("q1::p0", "great"), ("q1::p1", "Good"), ("q1::p2", "bad"), ("q1::p3", "E")])
    data = load_task_data(store, "s1", "ranker", validation_fraction=0.0)
    row = _by_query(data.splits["train"])["q1"]
    assert row["gains"] == [3, 2, 0] and row["targets"] == pytest.approx([1, 2 / 3, 0])  # p3's "E" is not a grade here
    assert any("1 relevance labels left out" in n and "'E'" in n for n in data.notes)


@pytest.mark.parametrize("scale, gain, message", [
    ("a=1,b=1", 1.0, "gives every grade the gain 1"),
    ("numeric:0-3", 4.0, "stored gain 4 (grade '3') is outside its scale 'numeric:0-3'"),
    ("grades-from-2019", 1.0, "stored grade scale 'grades-from-2019' cannot be read"),
])
def test_judgments_that_cannot_be_normalised_are_a_clear_error(store, scale, gain, message):
    now = utcnow()
    store.upsert("products", rows_to_arrow([{"product_id": "p0", "title": "x", "updated_at": now}], "products"))
    store.upsert("queries", rows_to_arrow([{"query_id": "q1", "text": "x", "updated_at": now}], "queries"))
    store.upsert("judgments", rows_to_arrow([{"query_id": "q1", "product_id": "p0", "grade": "3", "gain": gain,
                                              "scale": scale, "updated_at": now}], "judgments"))
    store.create_snapshot("s1")
    for task in ("ranker", "retriever"):
        with pytest.raises(JobError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_task_data(store, "s1", task)
