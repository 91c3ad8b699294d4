"""The index job and the offline evaluation end to end on a tiny store: tiny BERT in a Ray Data actor
pool, incremental re-embedding after an ingest, BM25 search, and the evaluation report."""
from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.model]

BRANDS = ["nike", "adidas", "sony", "bosch", "lego"]
CATEGORIES = ["running shoe", "headphones", "cordless drill", "toy car", "rain jacket", "coffee mug", "desk lamp", "yoga mat"]
QUERIES = {"q-shoe": ("nike running shoe", "running shoe", "nike"), "q-drill": ("bosch cordless drill", "cordless drill", "bosch"),
           "q-phones": ("sony headphones", "headphones", "sony")}


def fill_store(store, n: int = 200) -> None:
    from ray_app.store import rows_to_arrow, utcnow

    products = [{"product_id": f"p{i:03d}", "title": f"{BRANDS[i % 5]} {CATEGORIES[i % 8]} model {i}", "brand": BRANDS[i % 5],
                 "category_path": ["shop", CATEGORIES[i % 8]], "description": f"a {CATEGORIES[i % 8]} for every day",
                 "updated_at": utcnow()} for i in range(n)]
    queries, judgments = [], []
    for qid, (text, category, brand) in QUERIES.items():
        queries.append({"query_id": qid, "text": text, "split": "test", "dataset": "toy", "updated_at": utcnow()})
        for p in products[:80]:
            grade = ("E" if p["brand"] == brand else "S") if category in p["title"] else "I"
            if grade != "I" or int(p["product_id"][1:]) % 7 == 0:
                judgments.append({"query_id": qid, "product_id": p["product_id"], "grade": grade,
                                  "gain": {"E": 3, "S": 2, "I": 0}[grade], "split": "test", "updated_at": utcnow()})
    store.upsert("products", rows_to_arrow(products, "products"))
    store.upsert("queries", rows_to_arrow(queries, "queries"))
    store.upsert("judgments", rows_to_arrow(judgments, "judgments"))


def brute_force_recall(store, model: str, k: int = 100) -> float:
    """Mean Recall@k of E+S products over the queries, by cosine over the table's vectors, from scratch."""
    import numpy as np

    from ray_app.index import VECTOR_COLUMN, load_text_encoder

    products = store.read("products").to_pylist()
    matrix = np.asarray([p[VECTOR_COLUMN] for p in products], dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    relevant: dict[str, set] = {}
    for j in store.read("judgments").to_pylist():
        if j["grade"] in ("E", "S"):
            relevant.setdefault(j["query_id"], set()).add(j["product_id"])
    queries = store.read("queries").to_pylist()
    vectors = np.asarray(load_text_encoder(model).encode([q["text"] for q in queries]), dtype=np.float64)
    recalls = []
    for q, v in zip(queries, vectors):
        top = {products[i]["product_id"] for i in np.argsort(-(matrix @ (v / np.linalg.norm(v))), kind="stable")[:k]}
        recalls.append(len(top & relevant[q["query_id"]]) / len(relevant[q["query_id"]]))
    return float(np.mean(recalls))


def test_embed_incremental_then_evaluate(ray_session, store, tmp_path, capsys):
    from jobs import embed, evaluate, ingest
    from ray_app.index import VECTOR_COLUMN, fts_search
    from schemas.config import IngestConfig
    from schemas.evaluation import EmbedConfig, EvaluateConfig

    fill_store(store)
    config = EmbedConfig(db=store.uri, model="tiny-bert", batch_size=32, quiet=True)
    first = embed.run(config)
    assert (first.embedded, first.skipped, first.dim, first.model) == (200, 0, 32, "tiny-bert")
    assert first.vector_index.type == "none" and set(first.fts_columns) == {"title", "brand"}
    rows = store.read("products").to_pylist()
    assert all(len(r[VECTOR_COLUMN]) == 32 and r["vector_model"] == "tiny-bert" and r["vector_text_hash"] for r in rows)

    assert embed.main(["--db", store.uri, "--model", "tiny-bert", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["embedded"], summary["skipped"], summary["vector_index"]["rebuilt"]) == (0, 200, False)

    # Three products change through the generic ingest: it upserts record columns only.
    changes = tmp_path / "changes.jsonl"
    changes.write_text("\n".join(json.dumps({"product_id": pid, "title": title, "brand": "acme"}) for pid, title in [
        ("p010", "zanzibar espresso grinder"), ("p011", "acme trail running shoe"), ("p012", "acme desk lamp")]) + "\n")
    result = ingest.run(IngestConfig(db=store.uri, source="generic", table="products", path=str(changes), quiet=True))
    assert (result.accepted, result.tables[0].updated) == (3, 3)
    after = {r["product_id"]: r for r in store.read("products").to_pylist()}
    assert len(after) == 200 and after["p010"]["title"] == "zanzibar espresso grinder"
    assert all(r[VECTOR_COLUMN] is not None for r in after.values())  # kept (stale for the 3) by the upsert

    again = embed.run(config.model_copy(update={"snapshot": "indexed"}))
    assert (again.embedded, again.skipped) == (3, 197)
    assert store.snapshot_versions("indexed")["products"] == again.table_version
    assert again.vector_index.rebuilt
    hits = fts_search(store.table("products"), "espresso grinder", again.fts_columns, 5)
    assert hits and hits[0][0] == "p010"

    report_dir = tmp_path / "reports"
    out = evaluate.run(EvaluateConfig(db=store.uri, baseline="tiny-bert", dataset="toy", report_dir=str(report_dir),
                                      quiet=True))
    assert out.queries == 3 and out.products == 200
    for protocol in (out.judged_list, out.full_catalogue):
        assert {"bm25", "tiny-bert", "hybrid"} <= set(protocol)
    assert out.judged_list["bm25"]["ndcg_esci"] > 0.9  # titles carry the query words
    assert out.full_catalogue["tiny-bert"]["recall@100"] == pytest.approx(brute_force_recall(store, "tiny-bert"), abs=1e-4)
    assert out.full_catalogue["bm25"]["recall@100"] > 0.9
    assert {"retriever", "ranker", "intent_model"} <= set(out.skipped)
    report = open(out.report_path).read()
    assert "judged-list" in report and "| bm25 |" in report and "| tiny-bert |" in report
    figures = json.loads(open(out.out_path).read())
    assert figures["full_catalogue"]["bm25"]["queries"] == 3
    # every other system against BM25, paired over the same 3 queries
    cmp = figures["comparisons"]
    assert cmp["reference"] == "bm25" and set(cmp["judged_list"]) == {"tiny-bert", "hybrid"}
    assert cmp["judged_list"]["hybrid"]["ndcg_esci"]["queries"] == 3 and "Against bm25" in report
    # one figure per protocol next to the report, linked from it
    assert set(figures["plots"]) == {"judged_list", "full_catalogue"}
    for name in figures["plots"].values():
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in report


def register_untrained(models_dir) -> None:
    """Untrained tiny-BERT retriever, ranker and intent models in a registry (exercises the code paths)."""
    from ray_app.models.lora import build_model, save_model
    from ray_app.registry import Registry

    registry = Registry(models_dir)
    heads = {"retriever": {"temperature": 0.05}, "ranker": {"loss": "listwise"},
             "intent_entity": {"intents": ["brand_query", "product_search"], "entity_types": ["brand", "category"]}}
    for task, head in heads.items():
        model, _ = build_model(task, "tiny-bert", head, None)

        def save(folder, model=model, task=task):
            sizes = save_model(model, folder, task, "tiny-bert", None, extra={"max_length": 32})
            return {"adapter_bytes": sizes["adapter_bytes"], "full_model_bytes": sizes["full_model_bytes"]}

        version = registry.add(task, save, base_model="tiny-bert", lora=False, config={"max_length": 32})
        registry.promote(version.name, "production")


def test_evaluate_with_registry_models(store, tmp_path):
    from jobs import evaluate
    from sklearn.metrics import accuracy_score, f1_score

    from ray_app.index import build_fts_indexes, load_text_encoder
    from ray_app.registry import Registry
    from ray_app.store import rows_to_arrow, utcnow
    from schemas.evaluation import EvaluateConfig

    fill_store(store, n=120)
    build_fts_indexes(store.table("products"), ["title", "brand"])
    labels = [{"label_id": "l1", "target_type": "query", "target_id": "q-shoe", "task": "intent", "value": "product_search",
               "source": "human", "created_at": utcnow()},
              {"label_id": "l2", "target_type": "query", "target_id": "q-shoe", "task": "entity", "source": "human",
               "spans": [{"start": 0, "end": 4, "type": "brand", "text": "nike"}], "created_at": utcnow()},
              {"label_id": "l3", "target_type": "query", "target_id": "q-drill", "task": "intent", "value": "brand_query",
               "source": "rule", "created_at": utcnow()}]
    store.upsert("labels", rows_to_arrow(labels, "labels"))
    store.create_snapshot("eval")
    models = tmp_path / "models"
    register_untrained(models)
    assert load_text_encoder("retriever@production", str(models)).key == "retriever-v1"
    out = evaluate.run(EvaluateConfig(db=store.uri, snapshot="eval", baseline="none", retriever="retriever@production",
                                      ranker="production", intent_model="intent_entity@production", models_dir=str(models),
                                      rerank_depth=20, report_dir=str(tmp_path / "reports"), quiet=True))
    expected = {"bm25", "retriever-v1", "hybrid", "rerank:ranker-v1", "rerank+rrf:ranker-v1"}
    assert set(out.judged_list) == expected and set(out.full_catalogue) == expected
    # re-ranking (plain or fused) only reorders the top 20: what is found at depth 100 is the hybrid's
    for name in ("rerank:ranker-v1", "rerank+rrf:ranker-v1"):
        assert out.full_catalogue[name]["recall@100"] == out.full_catalogue["hybrid"]["recall@100"]
    qu = out.query_understanding
    assert (qu["queries"], qu["intent_queries"], qu["entity_queries"]) == (2, 2, 1)
    # the untrained model's own predictions, scored here against the labels given above
    predicted = [p["intent"] for p in Registry(models).load_model("intent_entity@production", task="intent_entity")
                 .predict(["bosch cordless drill", "nike running shoe"])]
    gold = ["brand_query", "product_search"]
    assert qu["intent_accuracy"] == pytest.approx(accuracy_score(gold, predicted), abs=1e-4)
    assert qu["intent_macro_f1"] == pytest.approx(f1_score(gold, predicted, average="macro"), abs=1e-4)
    assert out.intent_model == "intent_entity-v1"
    assert "cross-encoder ranker-v1" in open(out.report_path).read()
    assert "Model `intent_entity-v1` (asked for `intent_entity@production`)" in open(out.report_path).read()
