"""`jobs.evaluate --snapshot` scores the snapshot's products and counts what it could not score."""
from __future__ import annotations

import json

import pytest

from jobs import evaluate
from ray_app.eval_data import open_catalogue, split_judged_lists
from ray_app.index import build_fts_indexes
from ray_app.store import rows_to_arrow, utcnow
from schemas.records import ESCI_GAIN

PRODUCTS = {"a": ("Red shoe", "nike"), "b": ("Blue shoe", "adidas"), "c": ("Green kettle", "bosch"),
            "d": ("Steel kettle", "bosch"), "e": ("Red hat", "puma")}


def fill(store) -> None:
    store.upsert("products", rows_to_arrow([{"product_id": p, "title": t, "brand": b, "updated_at": utcnow()}
                                            for p, (t, b) in PRODUCTS.items()], "products"))
    store.upsert("queries", rows_to_arrow([{"query_id": q, "text": t, "split": "test", "updated_at": utcnow()}
                                           for q, t in (("q1", "red shoe"), ("q2", "green kettle"))], "queries"))
    judged = [("q1", "a", "E"), ("q1", "b", "I"), ("q1", "zz", "E"),  # zz was never a product
              ("q2", "c", "E"), ("q2", "d", "S"), ("q9", "a", "E")]  # q9 was never a query
    store.upsert("judgments", rows_to_arrow([{"query_id": q, "product_id": p, "grade": g, "gain": ESCI_GAIN[g],
                                              "split": "test", "updated_at": utcnow()} for q, p, g in judged], "judgments"))


def run_eval(tmp_path, capsys, *extra: str) -> dict:
    db = str(tmp_path / "db")
    assert evaluate.main(["--db", db, "--baseline", "none", "--report-dir", str(tmp_path / "r"), "--quiet", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_evaluate_on_a_snapshot_scores_its_products_after_live_deletes(store, tmp_path, capsys):
    fill(store)
    store.create_snapshot("v1")
    store.delete("products", "product_id IN ('c', 'd')")  # q2's judged products leave the live catalogue
    build_fts_indexes(store.table("products"), ["title", "brand"])  # jobs.embed after the snapshot
    snap = run_eval(tmp_path, capsys, "--snapshot", "v1")
    assert snap["products"] == 5 and snap["queries"] == 2
    assert snap["products_version"] == store.snapshot_versions("v1")["products"]
    assert snap["unscored"] == {"judgments_missing_product": 1, "judgments_missing_query": 1, "queries_without_products": 0}
    assert snap["judged_list"]["bm25"]["queries"] == 2
    report = (tmp_path / "r").glob("eval-*.md")
    assert any("not scored" in p.read_text() and "snapshot 'v1'" in p.read_text() for p in report)
    live = run_eval(tmp_path, capsys)  # the live store: q2 lost both judged products, and says so
    assert live["products"] == 3 and live["queries"] == 1
    assert live["unscored"] == {"judgments_missing_product": 3, "judgments_missing_query": 1, "queries_without_products": 1}
    assert any("not scored" in n for n in live["notes"])


def test_catalogue_uses_the_live_indexes_only_when_they_are_exact(store):
    fill(store)
    store.create_snapshot("v1")
    build_fts_indexes(store.table("products"), ["title", "brand"])  # same rows, new version with indexes
    same = open_catalogue(store, "v1", ["title", "brand"])
    assert same.tbl.version == store.version("products") and "same products" in same.note
    store.upsert("products", rows_to_arrow([{"product_id": "a", "title": "Red boot", "updated_at": utcnow()}], "products"))
    changed = open_catalogue(store, "v1", ["title", "brand"])
    assert changed.scratch is not None and changed.texts["a"].startswith("Red shoe")
    hits = changed.tbl.search("shoe", query_type="fts").select(["product_id"]).limit(10).to_arrow()
    assert set(hits.column("product_id").to_pylist()) == {"a", "b"}  # the snapshot's text, not the live one


@pytest.mark.parametrize("query_split, judgment_split, counted", [("test", "train", True), ("", "test", True),
                                                                   ("train", "test", False)])
def test_split_of_query_wins_when_counting(query_split, judgment_split, counted):
    judged, unscored = split_judged_lists([{"query_id": "q", "product_id": "gone", "grade": "E", "split": judgment_split}],
                                          {"q"}, [{"query_id": "q", "split": query_split}], "test", {"a"})
    assert judged == {} and unscored["judgments_missing_product"] == int(counted)
    assert unscored["queries_without_products"] == int(counted)
