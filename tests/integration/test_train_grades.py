"""A shop's numeric judgments (0-3, fractional rater means such as 2.5) through the Ray Train loop:
the ranker trains pointwise on targets normalised by the scale and the retriever finds its
positives by evaluation's relevance rule (ESCI letters were once the only grades training read)."""
from __future__ import annotations

import math

import pytest

from tests.integration.test_train import BRANDS, CATEGORIES, _config

pytestmark = [pytest.mark.integration, pytest.mark.model]


def fill_numeric_store(store, n_queries: int = 12) -> None:
    """Products brand x category; per query: its product 3, a same-brand one 2.5 (two raters' mean),
    same-category ones 1.5 and 1, two others 0, on the declared scale numeric:0-3; snapshot s1."""
    from ray_app.store import rows_to_arrow, utcnow

    now = utcnow()
    pid = lambda b, c: f"{b}-{c}".replace(" ", "_")  # noqa: E731
    products = [{"product_id": pid(b, c), "title": f"{b.title()} {c}", "brand": b, "category_path": ["root", c],
                 "updated_at": now} for b in BRANDS for c in CATEGORIES]
    queries, judgments = [], []
    for i in range(n_queries):
        b, c = BRANDS[i % len(BRANDS)], CATEGORIES[(i * 5 + 1) % len(CATEGORIES)]
        qid = f"n{i:03d}"
        queries.append({"query_id": qid, "text": f"{b} {c}", "split": "test" if i % 6 == 5 else "train", "updated_at": now})
        others = [x for x in BRANDS if x != b]
        graded = [(pid(b, c), 3.0), (pid(b, CATEGORIES[(i + 2) % len(CATEGORIES)]), 2.5), (pid(others[0], c), 1.5),
                  (pid(others[1], c), 1.0), (pid(others[2], CATEGORIES[i % len(CATEGORIES)]), 0.0),
                  (pid(others[3], CATEGORIES[(i + 3) % len(CATEGORIES)]), 0.0)]
        judgments += [{"query_id": qid, "product_id": p, "grade": f"{g:g}", "gain": g, "scale": "numeric:0-3",
                       "updated_at": now} for p, g in graded]
    store.upsert("products", rows_to_arrow(products, "products"))
    store.upsert("queries", rows_to_arrow(queries, "queries"))
    store.upsert("judgments", rows_to_arrow(judgments, "judgments"))
    store.create_snapshot("s1")


def test_ranker_and_retriever_train_on_numeric_fractional_grades(ray_session, store, tmp_path):
    from ray_app.training.trainer import run_training

    fill_numeric_store(store)
    ranker = run_training(_config(tmp_path, task="ranker", ranker_loss="pointwise", epochs=2, num_workers=1,
                                  lr=2e-3, lora=False, max_length=32), store)
    assert ranker.metric == "val_ndcg@10" and 0 < ranker.metrics["val_ndcg@10"] <= 1
    assert len(ranker.history) == 2 and all(math.isfinite(h["train_loss"]) and h["train_loss"] > 0 for h in ranker.history)
    assert ranker.examples["test"] == 2
    retriever = run_training(_config(tmp_path, task="retriever", epochs=1, num_workers=1, hard_negatives=1,
                                     max_length=32), store)
    # positives: gain >= 2 on 0-3 (the 3 and the 2.5 of each query), as jobs.evaluate counts relevant
    assert retriever.examples["train"] + retriever.examples["validation"] == 2 * 10
    assert 0 < retriever.metrics["val_mrr"] <= 1
