"""jobs.fuse end to end on a tiny store: the validation carve, the registered fusion version, and
jobs.evaluate --fusion reporting the fitted hybrid beside its parts with the figures the fit saw."""
from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.model]

BRANDS = ["nike", "adidas", "sony", "bosch", "lego"]
CATEGORIES = ["running shoe", "headphones", "cordless drill", "toy car", "rain jacket", "coffee mug", "desk lamp", "yoga mat"]


def fill_store(store, n: int = 200) -> list[str]:
    """Products, 10 queries (6 train, 4 test, no validation split) and graded judgments; the train query ids."""
    from ray_app.store import rows_to_arrow, utcnow

    products = [{"product_id": f"p{i:03d}", "title": f"{BRANDS[i % 5]} {CATEGORIES[i % 8]} model {i}", "brand": BRANDS[i % 5],
                 "category_path": ["shop", CATEGORIES[i % 8]], "description": f"a {CATEGORIES[i % 8]} for every day",
                 "updated_at": utcnow()} for i in range(n)]
    queries, judgments = [], []
    for i in range(10):
        brand, category = BRANDS[i % 5], CATEGORIES[(3 * i) % 8]
        qid, split = f"q{i:02d}", "train" if i < 6 else "test"
        text = f"{brand} {category}" if i % 2 else f"{category} for {brand} fans"
        queries.append({"query_id": qid, "text": text, "split": split, "dataset": "toy", "updated_at": utcnow()})
        for p in products[:120]:
            grade = ("E" if p["brand"] == brand else "S") if category in p["title"] else "C" if p["brand"] == brand else "I"
            if grade != "I" or int(p["product_id"][1:]) % 9 == 0:
                judgments.append({"query_id": qid, "product_id": p["product_id"], "grade": grade,
                                  "gain": {"E": 3, "S": 2, "C": 1, "I": 0}[grade], "split": split, "updated_at": utcnow()})
    store.upsert("products", rows_to_arrow(products, "products"))
    store.upsert("queries", rows_to_arrow(queries, "queries"))
    store.upsert("judgments", rows_to_arrow(judgments, "judgments"))
    return [q["query_id"] for q in queries if q["split"] == "train"]


def test_fuse_registers_and_evaluate_reports_the_fitted_hybrid(store, tmp_path, capsys):
    from jobs import evaluate, fuse
    from ray_app.index import build_fts_indexes
    from ray_app.registry import Registry
    from ray_app.training.data import assign_splits
    from schemas.evaluation import EvaluateConfig, FuseConfig
    from schemas.fusion import FusionSpec

    train_ids = fill_store(store)
    build_fts_indexes(store.table("products"), ["title", "brand"])
    store.create_snapshot("s1")
    models, ws = tmp_path / "models", tmp_path / "ws"

    # No validation split in s1: carved from train by the training job's hash, and said so.
    argv = ["--db", store.uri, "--snapshot", "s1", "--retriever", "tiny-bert", "--models-dir", str(models),
            "--workspace", str(ws), "--validation-fraction", "0.5", "--alias", "candidate"]
    assert fuse.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    carved, _ = assign_splits({q: "train" for q in train_ids}, 0.5, 13)
    assert summary["carved"] and summary["queries"] == sum(s == "validation" for s in carved.values()) > 0
    assert any("carved" in n and "seed 13" in n for n in summary["notes"])
    assert (summary["fusion_version"], summary["alias"], summary["tried"]) == ("fusion-v1", "candidate", 105)
    assert any(line.startswith("fuse: chosen ") and "fusion-v1" in line for line in out)  # the printed table's last line
    spec, version = Registry(models).load_fusion("fusion@candidate")
    assert spec == FusionSpec(**summary["spec"]) and version.name == "fusion-v1" and version.task == "fusion"
    assert (version.base_model, version.snapshot, version.config["validation_queries"]) == ("tiny-bert", "s1", summary["queries"])
    trials = version.config["trials"]
    assert len(trials) == 105 and trials[0]["ndcg@10"] == max(t["ndcg@10"] for t in trials) == summary["chosen"]
    assert version.metrics["val_ndcg@10"] == summary["chosen"] >= summary["rrf_default"]
    assert version.table_versions == store.snapshot_versions("s1")

    # Fitted on the test split (no carve) so jobs.evaluate scores the very queries the fit saw:
    # the fitted hybrid and its parts must read exactly the figures the fit computed.
    fitted = fuse.run(FuseConfig(db=store.uri, snapshot="s1", retriever="tiny-bert", split="test", dataset="toy",
                                 models_dir=str(models), workspace=str(ws), quiet=True))
    assert not fitted.carved and fitted.queries == 4 and fitted.fusion_version == "fusion-v2"
    report = evaluate.run(EvaluateConfig(db=store.uri, snapshot="s1", split="test", dataset="toy", baseline="tiny-bert",
                                         fusion="fusion-v2", models_dir=str(models), workspace=str(ws), quiet=True,
                                         report_dir=str(tmp_path / "reports")))
    full = report.full_catalogue
    assert list(full) == ["bm25", "tiny-bert", "hybrid", "hybrid:fusion-v2"]
    assert full["hybrid:fusion-v2"]["ndcg@10"] == pytest.approx(fitted.chosen, abs=1e-4)
    assert full["hybrid"]["ndcg@10"] == pytest.approx(fitted.rrf_default, abs=1e-4)
    assert full["bm25"]["ndcg@10"] == pytest.approx(fitted.bm25_only, abs=1e-4)
    assert full["tiny-bert"]["ndcg@10"] == pytest.approx(fitted.dense_only, abs=1e-4)
    assert "hybrid:fusion-v2" in report.judged_list
    about = json.loads(open(report.out_path).read())["systems"]["hybrid:fusion-v2"]
    assert FusionSpec(**fitted.spec).describe() in about and "registry fusion-v2" in about

    plain = evaluate.run(EvaluateConfig(db=store.uri, snapshot="s1", split="test", dataset="toy", baseline="tiny-bert",
                                        models_dir=str(models), workspace=str(ws), quiet=True,
                                        report_dir=str(tmp_path / "reports")))
    assert list(plain.full_catalogue) == ["bm25", "tiny-bert", "hybrid"]
    figures = lambda row: {k: v for k, v in row.items() if k != "ms_per_query"}  # noqa: E731 - timing varies
    assert figures(plain.full_catalogue["hybrid"]) == figures(full["hybrid"])  # the default hybrid did not move
