"""Recommendations end to end on small logs: an invoice log (online-retail layout) and a ratings
log of another domain (books, generic path with --map) each go ingest -> snapshot -> Ray Train
(the `recommender` task, tiny BERT, 2 workers) -> registry -> jobs.evaluate_recs, where the model
sits beside the baselines on the split it was trained for and reaches items never sold."""
from __future__ import annotations

import csv
import json
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from jobs import evaluate_recs, ingest, recommend, snapshot, train
from ray_app.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.model]
KINDS = {"mug": "CERAMIC COFFEE MUG", "lamp": "BEDSIDE TABLE LAMP"}


def write_planted_invoices(path: Path, customers: int = 30, seed: int = 2) -> None:
    """Mug people buy mugs, lamp people lamps; two mugs first appear in the last fortnight."""
    rng = random.Random(seed)
    t0 = datetime(2011, 1, 3, 9)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"])
        invoice = 540000
        for day in range(0, 60, 3):
            for c in range(customers):
                if rng.random() < 0.5:
                    continue
                kind = "mug" if c % 2 else "lamp"
                pool = 20 + (2 if kind == "mug" and day >= 45 else 0)
                invoice += 1
                for n in rng.sample(range(pool), 3):
                    when = (t0 + timedelta(days=day, minutes=c)).strftime("%Y-%m-%d %H:%M:%S")
                    w.writerow([invoice, f"{kind[0].upper()}{n:03d}", f"{KINDS[kind]} DESIGN {n}", 2, when, "3.5",
                                f"{13000 + c}.0", "Germany" if c % 5 == 0 else "United Kingdom"])


def _last(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("text_tower", ["frozen", "lora"])
def test_invoice_log_to_a_trained_recommender_beside_the_baselines(ray_session, tmp_path, capsys, text_tower):
    log = tmp_path / "invoices.csv"
    write_planted_invoices(log)
    ws = ["--workspace", str(tmp_path / "ws")]
    assert ingest.main(["--source", "online-retail", "--path", str(log), "--quiet", *ws]) == 0
    capsys.readouterr()
    assert snapshot.main(["--name", "s1", *ws]) == 0
    capsys.readouterr()
    epochs = 2 if text_tower == "frozen" else 1  # the LoRA run checks training through the encoder; the rest is shared
    code = train.main(["--task", "recommender", "--snapshot", "s1", "--base-model", "tiny-bert", "--epochs", str(epochs),
                       "--batch-size", "16", "--num-workers", "2", "--text-tower", text_tower, "--lora-r", "2",
                       "--recs-cut", "2011-02-17", "--alias", "production", "--quiet", *ws])
    result = _last(capsys)
    assert code == 0, result
    assert result["task"] == "recommender" and result["examples"]["train"] > 0 and "val_ndcg@10" in result["metrics"]
    assert len(result["history"]) == epochs
    if text_tower == "lora":
        assert result["adapter_bytes"] > 0  # a LoRA adapter, not the whole encoder
        return
    out = tmp_path / "recs.json"
    assert evaluate_recs.main(["--model", "recommender@production", "--baselines", "popularity", "--baselines", "item_knn",
                               "--resamples", "100", "--out", str(out), "--quiet", *ws]) == 0
    summary = _last(capsys)
    figures = json.loads(out.read_text())
    time_split = figures["time"]["systems"]
    assert set(time_split) == {"popularity", "item_knn", "two_tower"}
    assert figures["time"]["split"]["cut"].startswith("2011-02-17") and figures["time"]["split"]["new_items"] == 2
    assert time_split["item_knn"]["slices"]["new_items"]["ndcg@10"] == 0  # collaborative filtering cannot reach them
    assert figures["time"]["slice_users"]["new_items"] > 0
    assert "two_tower" not in figures["per_user"]["systems"]  # trained on the time split: its test overlaps per-user's
    assert any("left out" in n for n in summary["notes"])
    assert Path(summary["report"]).read_text().count("| two_tower |") == 1
    # the batch job: every known customer's top 5, stamped, nothing they bought
    assert recommend.main(["--k", "5", "--batch-size", "8", "--quiet", *ws]) == 0
    batch = _last(capsys)
    assert batch["users"] == 30 and batch["model_version"] == result["model_version"] and batch["cold_users"] == 0
    store = Store(str(tmp_path / "ws" / "lancedb"))
    lists = store.read("recommendations").to_pylist()
    events = store.read("events").to_pylist()
    for row in lists:
        bought = {e["product_id"] for e in events if e["user_id"] == row["user_id"]}
        assert len(row["product_ids"]) == 5 and not bought & set(row["product_ids"])
        assert row["model_version"] == result["model_version"] and all(0 <= p <= 1 for p in row["scores"])


def test_a_books_ratings_log_goes_the_same_way(ray_session, tmp_path, capsys):
    """Another domain through the generic path, no code of its own: users, items with titles and genres,
    timestamped ratings -> ingest with --map -> train -> recommend -> evaluate."""
    rng = random.Random(4)
    books = tmp_path / "books.csv"
    books.write_text("isbn,book_title,genre\n" + "".join(
        f"b{i:03d},{'A crime novel' if i % 2 else 'An epic fantasy'} volume {i},{'Crime' if i % 2 else 'Fantasy'}\n"
        for i in range(40)))
    lines = ["reader,isbn,stars,ts"]
    for r in range(24):
        for n in range(10):
            book = rng.randrange(r % 2, 40, 2)
            lines.append(f"reader-{r},b{book:03d},{rng.randint(3, 5)},{1_300_000_000 + (n * 24 + r) * 86400}")
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("\n".join(lines) + "\n")
    ws = ["--workspace", str(tmp_path / "ws"), "--quiet"]
    assert ingest.main(["--table", "products", "--path", str(books), "--map", "isbn=product_id", "--map", "book_title=title",
                        "--map", "genre=category_path", *ws]) == 0
    assert ingest.main(["--table", "events", "--path", str(ratings), "--map", "reader=user_id", "--map", "isbn=product_id",
                        "--map", "stars=value", "--map", "ts=timestamp", "--event-type", "rating", *ws]) == 0
    assert snapshot.main(["--name", "books", *ws]) == 0
    capsys.readouterr()
    assert train.main(["--task", "recommender", "--snapshot", "books", "--base-model", "tiny-bert", "--epochs", "1",
                       "--batch-size", "16", "--num-workers", "1", "--text-tower", "frozen", "--alias", "production", *ws]) == 0
    capsys.readouterr()
    assert recommend.main(["--model", "recommender@production", "--k", "5", *ws]) == 0
    lists = _last(capsys)
    assert lists["users"] == 24 and lists["model_version"] == "recommender-v1"
    assert evaluate_recs.main(["--snapshot", "books", "--model", "recommender@production", "--splits", "time",
                               "--baselines", "popularity", "--resamples", "100", *ws]) == 0
    summary = _last(capsys)
    assert set(summary["splits"]["time"]) == {"popularity", "two_tower"}
    assert 0 <= summary["splits"]["time"]["two_tower"]["auc"] <= 1 and summary["splits"]["time"]["two_tower"]["coverage"] > 0
