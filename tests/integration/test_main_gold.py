"""The main job's held-out evaluation: gold labels and judgments of the test split reach the store,
and the intent model is scored against the generator's gold labels, not the rule labels it imitates."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from jobs import evaluate
from jobs import main as main_job
from ray_app.registry import Registry
from ray_app.store import Store
from schemas.config import MainConfig
from schemas.evaluation import EvaluateConfig

pytestmark = pytest.mark.integration


class GoldModel:
    """Predicts exactly the generator's gold labels: scores 1.0 against gold and less against any rule label that errs."""

    def __init__(self, gold: dict[str, dict]):
        self.gold = gold
        self.version = SimpleNamespace(name="gold-v1", snapshot="", base_model="none", created_at="")

    def predict(self, texts: list[str]) -> list[dict]:
        return [self.gold[t] for t in texts]


def _differ(rule: dict, gold: dict) -> bool:
    spans = [sorted((s["start"], s["end"], s["type"]) for s in lab["spans"] or []) for lab in (rule, gold)]
    return rule["value"] != gold["value"] or spans[0] != spans[1]


def test_main_job_scores_the_intent_model_against_gold_labels(ray_session, tmp_path, monkeypatch):
    result = main_job.run(MainConfig(workspace=str(tmp_path), db=str(tmp_path / "db"), demo_dir=str(tmp_path / "demo"),
                                     products=300, queries=300, users=30, events=3000,
                                     report_dir=str(tmp_path / "reports"), models=False))
    demo = tmp_path / "demo"
    texts = dict(pd.read_csv(demo / "queries.csv", keep_default_na=False)[["query_id", "text"]].values)
    gold_lines = [json.loads(line) for line in (demo / "gold_test_labels.jsonl").read_text().splitlines()]
    truth: dict[str, dict] = {}
    for g in gold_lines:
        row = truth.setdefault(texts[g["target_id"]], {"intent": "", "entities": []})
        row.update({"intent": g["value"]} if g["task"] == "intent" else {"entities": g["spans"]})
    n_test = len(truth)
    assert result.labels["gold"] == {"human": 2 * n_test}
    judgments = pd.read_csv(demo / "judgments.csv")
    assert result.ingest["judgments"]["accepted"] == len(judgments) > 0

    store = Store(result.db)
    stored = store.read_snapshot(result.snapshot, "judgments", columns=["query_id", "split"]).to_pylist()
    assert len(stored) == len(judgments) and {j["split"] for j in stored} == {"test", "validation"}
    labels = store.read_snapshot(result.snapshot, "labels").to_pylist()
    rule = {(lab["target_id"], lab["task"]): lab for lab in labels if lab["source"] == "rule"}
    assert any(_differ(rule[(g["target_id"], g["task"])], g) for g in gold_lines
               if (g["target_id"], g["task"]) in rule)  # the rule labels err on some test query

    monkeypatch.setattr(Registry, "load_model", lambda self, name, task=None, **kw: GoldModel(truth))
    config = EvaluateConfig(workspace=str(tmp_path), db=result.db, snapshot=result.snapshot, intent_model="gold-v1")
    qu, _, which = evaluate.evaluate_intent(store, config, evaluate.eval_queries(store, config))
    assert qu["queries"] == n_test and qu["intent_accuracy"] == 1.0 and qu["entity_f1"] == 1.0
    assert which["scored_against"] == {"intent": {"human:gold": n_test}, "entity": {"human:gold": n_test}}
