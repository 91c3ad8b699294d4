"""jobs.main imports gold labels only when every query they name is in the store's test split."""
from __future__ import annotations

import json

import pytest

from jobs.main import check_held_out
from ray_app.cli import JobError
from ray_app.store import Store, rows_to_arrow, utcnow

pytestmark = pytest.mark.unit


def _gold(path, ids):
    path.write_text("".join(json.dumps({"target_type": "query", "target_id": q, "task": "intent", "value": "brand_query"})
                            + "\n" for q in ids))
    return path


def test_gold_labels_of_train_queries_are_refused(tmp_path):
    store = Store(str(tmp_path / "db"))
    store.upsert("queries", rows_to_arrow([{"query_id": q, "text": f"query {q}", "split": s, "updated_at": utcnow()}
                                           for q, s in (("Q1", "train"), ("Q2", "test"), ("Q3", "validation"))], "queries"))
    assert check_held_out(store.uri, _gold(tmp_path / "ok.jsonl", ["Q2", "Q2"])) == 1
    with pytest.raises(JobError, match=r"2 of 3 gold-labelled queries are not in the store's test split \(e.g. Q1, Q3\)"):
        check_held_out(store.uri, _gold(tmp_path / "leak.jsonl", ["Q1", "Q2", "Q3"]))
    with pytest.raises(JobError, match="Q9"):  # a query the store does not know is not held out either
        check_held_out(store.uri, _gold(tmp_path / "unknown.jsonl", ["Q9"]))
