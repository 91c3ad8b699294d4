"""Ray Train fine-tuning end to end on a tiny store: 2 CPU workers (DDP over gloo), tiny BERT,
checkpoints, registry, and a worker killed mid-run that resumes from its checkpoint."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.model]

BRANDS = ["nike", "adidas", "sony", "apple", "lego", "bosch"]
CATEGORIES = ["running shoes", "headphones", "t-shirt", "drill", "laptop", "toy car"]
COLOURS = ["red", "black", "blue", "white"]
TEMPLATES = [
    ("product_search", "{colour} {category}", ["colour", "category"]),
    ("brand_query", "{brand} {category}", ["brand", "category"]),
    ("price_comparison", "cheapest {category} price", ["category"]),
    ("review_lookup", "reviews of {brand} {category}", ["brand", "category"]),
    ("order_support", "where is my order", []),
]


def make_query(i: int, rng: random.Random) -> tuple[str, str, list[dict]]:
    intent, template, _ = TEMPLATES[i % len(TEMPLATES)]
    values = {"brand": rng.choice(BRANDS), "category": rng.choice(CATEGORIES), "colour": rng.choice(COLOURS)}
    text, spans, pos = "", [], 0
    for piece in template.replace("}", "{").split("{"):
        if piece in values:
            spans.append({"start": len(text), "end": len(text) + len(values[piece]), "type": piece,
                          "text": values[piece]})
            text += values[piece]
        else:
            text += piece
    return text, intent, spans


def fill_tiny_store(store, n: int = 60, seed: int = 0, with_validation: bool = False) -> None:
    """`n` queries with intent + entity labels (human source) upserted directly, snapshot s1."""
    from ray_app.store import rows_to_arrow, utcnow

    rng = random.Random(seed)
    queries, labels = [], []
    for i in range(n):
        text, intent, spans = make_query(i, rng)
        split = "validation" if with_validation and i % 6 == 0 else "train"
        queries.append({"query_id": f"q{i:03d}", "text": text, "split": split, "updated_at": utcnow()})
        labels.append({"label_id": f"q{i:03d}-intent", "target_type": "query", "target_id": f"q{i:03d}",
                       "task": "intent", "value": intent, "source": "human", "created_at": utcnow()})
        labels.append({"label_id": f"q{i:03d}-entity", "target_type": "query", "target_id": f"q{i:03d}",
                       "task": "entity", "spans": spans, "source": "human", "created_at": utcnow()})
        # a lower-priority rule label that disagrees: resolution must pick the human one
        labels.append({"label_id": f"q{i:03d}-intent-rule", "target_type": "query", "target_id": f"q{i:03d}",
                       "task": "intent", "value": "out_of_scope", "source": "rule", "created_at": utcnow()})
    store.upsert("queries", rows_to_arrow(queries, "queries"))
    store.upsert("labels", rows_to_arrow(labels, "labels"))
    store.create_snapshot("s1")


def fill_judged_store(store, n_queries: int = 24, seed: int = 0) -> None:
    """Products, queries and E/S/C/I judgments (the query's brand+category is E), snapshot s1."""
    from ray_app.store import rows_to_arrow, utcnow

    rng = random.Random(seed)
    products = []
    for b in BRANDS:
        for c in CATEGORIES:
            products.append({"product_id": f"{b}-{c}".replace(" ", "_"), "title": f"{b.title()} {c}", "brand": b,
                             "category_path": ["root", c], "description": f"A {c} made by {b}.",
                             "attributes": json.dumps({"colour": rng.choice(COLOURS)}), "updated_at": utcnow()})
    queries, judgments = [], []
    for i in range(n_queries):
        b, c = BRANDS[i % len(BRANDS)], CATEGORIES[(i * 5 + 1) % len(CATEGORIES)]
        qid = f"r{i:03d}"
        queries.append({"query_id": qid, "text": f"{b} {c}", "split": "test" if i % 8 == 7 else "train",
                        "updated_at": utcnow()})
        others = [p for p in products if p["brand"] != b and p["category_path"][-1] != c]
        graded = [(f"{b}-{c}".replace(" ", "_"), "E")]
        graded += [(p["product_id"], "S") for p in products if p["brand"] == b and p["category_path"][-1] != c][:1]
        graded += [(p["product_id"], "C") for p in products if p["brand"] != b and p["category_path"][-1] == c][:2]
        graded += [(p["product_id"], "I") for p in rng.sample(others, 3)]
        for pid, grade in graded:
            judgments.append({"query_id": qid, "product_id": pid, "grade": grade, "gain": {"E": 3, "S": 2, "C": 1, "I": 0}[grade],
                              "split": "", "updated_at": utcnow()})
    store.upsert("products", rows_to_arrow(products, "products"))
    store.upsert("queries", rows_to_arrow(queries, "queries"))
    store.upsert("judgments", rows_to_arrow(judgments, "judgments"))
    store.create_snapshot("s1")


def _config(tmp_path, **overrides):
    from schemas.training import TrainConfig

    base = dict(task="intent_entity", snapshot="s1", base_model="tiny-bert", epochs=3, batch_size=4, lr=1e-2,
                num_workers=2, patience=0, max_length=32, storage_path=str(tmp_path / "ray_results"),
                models_dir=str(tmp_path / "models"), quiet=True)
    return TrainConfig(**{**base, **overrides})


def test_train_intent_entity_two_workers_registers_model(ray_session, store, tmp_path):
    from ray_app.registry import Registry
    from ray_app.training.trainer import run_training

    fill_tiny_store(store)
    result = run_training(_config(tmp_path, alias="candidate", word_shape=True), store)
    assert result.model_version == "intent_entity-v1" and result.epochs_run == 3 and result.restarts == 0
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    # the registered model is the best epoch's (earliest on ties): its figures are that epoch's, and
    # val_score is the mean of intent accuracy and span F1
    best = max(result.history, key=lambda h: h["val_score"])
    assert result.metric == "val_score" and result.best_epoch == int(best["epoch"])
    assert result.metrics["val_score"] == pytest.approx(best["val_score"])
    parts = [result.metrics[k] for k in ("val_intent_acc", "val_span_f1") if not math.isnan(result.metrics[k])]
    assert parts and result.metrics["val_score"] == pytest.approx(sum(parts) / len(parts))
    assert result.examples["train"] + result.examples["validation"] == 60
    ckpt = Path(result.checkpoint_path)
    assert (ckpt / "model.pt").is_file() and (ckpt / "train_state.json").is_file()
    assert 0 < result.adapter_bytes < result.full_model_bytes / 20
    reg = Registry(tmp_path / "models")
    version = reg.resolve("intent_entity@candidate")
    assert version.name == result.model_version and version.snapshot == "s1" and version.lora
    assert version.label_spaces["entity_types"] == ["brand", "category", "colour"]
    assert version.table_versions["labels"] >= 1 and version.config["lora_r"] == 8 and version.config["word_shape"]
    loaded = reg.load_model("candidate")
    pred = loaded.predict(["black sony headphones"])[0]
    assert pred["raw_intent"] in version.label_spaces["intents"]


def test_a_stop_on_the_board_ends_a_two_worker_run_at_the_same_step(ray_session, store, tmp_path):
    """What a Tune trial's Train run does when ASHA stops it, with two workers: both ranks leave
    their loop at one step (a rank that left alone would hang the other in DDP's next all-reduce),
    Train ends the run normally and its placement group gives the CPUs back."""
    import time

    import ray

    from ray_app.training.data import load_task_data
    from ray_app.training.stop import StopBoard
    from ray_app.training.trainer import build_trainer

    fill_tiny_store(store)
    config = _config(tmp_path, epochs=3, run_name="stopped-run")
    data = load_task_data(store, "s1", "intent_entity")
    board = StopBoard.remote()
    ray.get(board.started.remote("trial-a"))
    waiting = board.stop_and_wait.remote("trial-a", 120.0)  # what the Tune callback asks
    result = build_trainer(config, data, overrides={"stop_board": board, "stop_key": "trial-a"}).fit()
    ray.get(board.finished.remote("trial-a"))
    assert ray.get(waiting) is True
    outcome = result.return_value
    assert outcome["stopped"] is True and outcome["epochs_run"] == 0 and outcome["history"] == []
    deadline = time.monotonic() + 30
    while ray_session.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_session.available_resources().get("CPU", 0) == 2


def test_worker_killed_mid_run_resumes_from_checkpoint(ray_session, store, tmp_path):
    from ray_app.training.trainer import run_training

    fill_tiny_store(store)
    marker = tmp_path / "killed-once"
    result = run_training(_config(tmp_path, max_failures=1), store,
                          overrides={"fail_once_marker": str(marker), "fail_at_epoch": 1, "fail_rank": 1})
    assert marker.is_file()  # rank 1 really died (os._exit) during epoch 1
    assert result.restarts == 1 and result.epochs_run == 3
    assert [h["epoch"] for h in result.history] == [0.0, 1.0, 2.0]  # epoch 0 not redone: resumed from its checkpoint
    assert result.model_version == "intent_entity-v1"


def test_train_ranker_listwise_and_retriever(ray_session, store, tmp_path):
    """The other two heads through the same Ray Train loop: NDCG@10 and MRR validation, registry."""
    from ray_app.registry import Registry
    from ray_app.training.trainer import run_training

    fill_judged_store(store, n_queries=24)
    ranker = run_training(_config(tmp_path, task="ranker", epochs=2, lr=2e-3, lora=False, max_length=48), store)
    assert ranker.metric == "val_ndcg@10" and 0 < ranker.metrics["val_ndcg@10"] <= 1
    assert ranker.examples["test"] == 3 and ranker.adapter_bytes == 0  # full fine-tuning: no adapter
    retriever = run_training(_config(tmp_path, task="retriever", epochs=1, num_workers=1, hard_negatives=1,
                                     max_length=48), store)
    assert retriever.metric == "val_mrr" and 0 < retriever.metrics["val_mrr"] <= 1
    reg = Registry(tmp_path / "models")
    assert [v.name for v in reg.list()] == ["ranker-v1", "retriever-v1"]
    scores = reg.load_model("ranker@latest").score("nike headphones", ["Nike headphones | brand: nike", "Lego drill"])
    vecs = reg.load_model("retriever-v1").encode(["nike headphones", "lego drill"])
    assert len(scores) == 2 and vecs.shape == (2, 32)


def _write_shop_files(folder: Path) -> dict[str, Path]:
    """A shop's own files in its own columns: queries (CSV, `q` for the text), intent + entity
    labels (JSONL), products (CSV, `sku`/`name`) and graded judgments (CSV)."""
    import csv

    rng = random.Random(3)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {t: folder / f"{t}.{'jsonl' if t == 'labels' else 'csv'}" for t in ("queries", "labels", "products", "judgments")}
    with paths["products"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "name", "brand", "description"])
        for b in BRANDS:
            for c in CATEGORIES:
                w.writerow([f"{b}-{c}".replace(" ", "_"), f"{b.title()} {c}", b, f"A {c} by {b}"])
    with paths["queries"].open("w", newline="") as f, paths["labels"].open("w") as labels, \
            paths["judgments"].open("w", newline="") as judged:
        wq, wj = csv.writer(f), csv.writer(judged)
        wq.writerow(["query_id", "q", "split"])
        wj.writerow(["query_id", "product_id", "grade"])
        for i in range(48):
            text, intent, spans = make_query(i, rng)
            qid = f"shop-{i:03d}"
            wq.writerow([qid, text, "test" if i % 8 == 7 else "train"])
            labels.write(json.dumps({"label_id": f"{qid}-i", "target_type": "query", "target_id": qid, "task": "intent",
                                     "value": intent, "source": "human"}) + "\n")
            labels.write(json.dumps({"label_id": f"{qid}-e", "target_type": "query", "target_id": qid, "task": "entity",
                                     "spans": spans, "source": "human"}) + "\n")
            brand = next((s["text"] for s in spans if s["type"] == "brand"), rng.choice(BRANDS))
            cat = next((s["text"] for s in spans if s["type"] == "category"), rng.choice(CATEGORIES))
            wj.writerow([qid, f"{brand}-{cat}".replace(" ", "_"), "E"])
            wj.writerow([qid, f"{rng.choice([b for b in BRANDS if b != brand])}-{cat}".replace(" ", "_"), "S"])
            wj.writerow([qid, f"{brand}-{rng.choice([c for c in CATEGORIES if c != cat])}".replace(" ", "_"), "I"])
    return paths


def test_train_on_a_shops_own_files_ingested_with_source_generic(ray_session, tmp_path):
    """The shop's own labelled data, not a bundled format: generic ingest (with column mapping)
    -> snapshot -> both query-understanding and ranker training on it, lineage recorded."""
    from jobs import ingest, snapshot, train
    from ray_app.registry import Registry

    db = str(tmp_path / "db")
    paths = _write_shop_files(tmp_path / "shop")
    maps = {"queries": ["--map", "q=text"], "products": ["--map", "sku=product_id", "--map", "name=title"]}
    for table, path in paths.items():
        assert ingest.main(["--db", db, "--source", "generic", "--table", table, "--path", str(path), "--quiet",
                            *maps.get(table, [])]) == 0, table
    assert snapshot.main(["--db", db, "--name", "shop-v1", "--report-dir", str(tmp_path / "reports"), "--quiet"]) == 0
    common = dict(snapshot="shop-v1", base_model="tiny-bert", epochs=1, batch_size=8, lr=1e-2, num_workers=1,
                  patience=0, max_length=32, db=db, storage_path=str(tmp_path / "ray_results"),
                  models_dir=str(tmp_path / "models"), quiet=True)
    from schemas.training import TrainConfig

    qu = train.run(TrainConfig(task="intent_entity", **common))
    assert qu.snapshot == "shop-v1" and qu.examples["train"] + qu.examples["validation"] == 42 and qu.examples["test"] == 6
    version = Registry(tmp_path / "models").resolve(qu.model_version)
    assert version.label_spaces["intents"] == sorted({t[0] for t in TEMPLATES})
    assert version.label_spaces["entity_types"] == ["brand", "category", "colour"]
    ranker = train.run(TrainConfig(task="ranker", lora=False, **common))
    assert ranker.examples["test"] == 6 and 0 < ranker.metrics["val_ndcg@10"] <= 1
    assert Registry(tmp_path / "models").resolve(ranker.model_version).table_versions["judgments"] >= 1
