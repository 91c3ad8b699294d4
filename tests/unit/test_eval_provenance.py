"""The evaluation says what the intent model was scored against: per task, labels by source:annotator."""
from __future__ import annotations

import pytest

from jobs.evaluate import scored_against
from ray_app.evaluation import render_report

pytestmark = pytest.mark.unit


def test_scored_against_counts_the_winning_labels_by_source_and_annotator():
    resolved = {("Q1", "intent"): {"source": "human", "annotator": "gold"},
                ("Q2", "intent"): {"source": "rule", "annotator": "intent:price_words"},
                ("Q1", "entity"): {"source": "human", "annotator": "gold"},
                ("Q2", "entity"): {"source": "human", "annotator": ""}}
    assert scored_against(resolved) == {"intent": {"human:gold": 1, "rule:intent:price_words": 1},
                                        "entity": {"human": 1, "human:gold": 1}}


def test_report_names_the_labels_it_scored_against():
    payload = {"created_at": "now", "db": "db", "products_version": 1, "products": 3, "split": "test", "queries": 0,
               "k": 10, "recall_k": 100, "query_understanding": {"intent_accuracy": 1.0},
               "intent_model": {"version": "intent_entity-v1", "requested": "intent_entity-v1",
                                "scored_against": {"intent": {"human:gold": 230}, "entity": {"human:gold": 230}}}}
    assert ("Scored against each query's resolved label, by source:annotator: intent human:gold 230; "
            "entity human:gold 230.") in render_report(payload)
