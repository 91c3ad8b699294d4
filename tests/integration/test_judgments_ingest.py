"""A shop's own judgments end to end: one CSV keyed by query text with numeric grades fills
`queries` and `judgments`, splits by hash, a re-run adds nothing, and jobs.evaluate scores with
the stored gains (or fails loudly when the requested split is empty)."""
from __future__ import annotations

import csv
import json

import pytest

from jobs import evaluate, ingest
from ray_app.index import build_fts_indexes
from ray_app.ingest.judged import hash_split, query_key
from schemas.config import IngestConfig
from schemas.evaluation import EvaluateConfig

pytestmark = pytest.mark.integration

KINDS = ["kettle", "toaster", "blender", "lamp", "mug", "kettle descaler", "desk fan", "rice cooker"]
GRADES = ["3", "2.5", "1", "0"]  # 2.5: the mean of two raters' 2 and 3


def _write_csv(path, header: list[str], rows: list[list[str]]):
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def write_shop(tmp_path):
    cells = [(i, kind, j) for i, kind in enumerate(KINDS) for j in range(4)]
    products = _write_csv(tmp_path / "products.csv", ["product_id", "title", "brand"],
                          [[f"p{i}{j}", f"{['steel', 'glass', 'red', 'mini'][j]} {kind}", "acme"] for i, kind, j in cells])
    judgments = _write_csv(tmp_path / "judgments.csv", ["query", "product_id", "grade"],
                           [[f"steel {kind}", f"p{i}{j}", GRADES[j]] for i, kind, j in cells]
                           + [["STEEL  Kettle", "p00", "3"],  # the same query and product again: a duplicate
                              ["steel kettle", "p01", "7"]])  # off the declared scale: quarantined
    return products, judgments


def test_judgments_by_query_text_fill_both_tables_split_and_evaluate(ray_session, store, tmp_path, capsys):
    products, judgments = write_shop(tmp_path)
    ingest.run(IngestConfig(db=store.uri, table="products", path=str(products), quiet=True))
    config = IngestConfig(db=store.uri, table="judgments", path=str(judgments), grades="numeric:0-3",
                          test_fraction=0.5, seed=13, quiet=True)
    result = ingest.run(config)
    by_table = {t.table: t for t in result.tables}
    assert set(by_table) == {"queries", "judgments"}
    for t in by_table.values():  # each table has its own ledger row, and every row read is accounted for
        assert t.read == t.accepted + t.quarantined + t.duplicates
    assert (by_table["judgments"].accepted, by_table["judgments"].quarantined, by_table["judgments"].duplicates) == (32, 1, 1)
    assert (by_table["queries"].accepted, by_table["queries"].read) == (8, 34)  # one row per judgment row, 8 queries
    ledger = {r["table"]: r for r in store.read("ingest_runs").to_pylist() if r["table"] in ("queries", "judgments")}
    assert ledger["queries"]["accepted"] == 8 and ledger["judgments"]["accepted"] == 32

    queries = {q["query_id"]: q for q in store.read("queries").to_pylist()}
    assert set(queries) == {query_key(f"steel {kind}") for kind in KINDS}
    rows = store.read("judgments").to_pylist()
    assert {r["query_id"] for r in rows} == set(queries)
    assert sorted({r["gain"] for r in rows}) == [0.0, 1.0, 2.5, 3.0] and {r["scale"] for r in rows} == {"numeric:0-3"}
    for r in rows:  # a judgment lands in its query's split: nothing leaks
        assert r["split"] == queries[r["query_id"]]["split"] == hash_split(r["query_id"], 13, 0.5, 0.0)
    assert {q["split"] for q in queries.values()} == {"train", "test"}
    reason = store.read("quarantine").to_pylist()[0]["reason"]
    assert "'7' is outside the scale numeric:0-3" in reason

    again = ingest.run(config)  # a re-run adds nothing to either table
    assert all(t.inserted == 0 for t in again.tables)
    assert (store.count("queries"), store.count("judgments")) == (8, 32)
    later = tmp_path / "queries.csv"  # a queries file keyed by text meets the same ids
    later.write_text("text\nSteel Kettle\n")
    assert ingest.run(IngestConfig(db=store.uri, table="queries", path=str(later), quiet=True)).tables[0].inserted == 0

    build_fts_indexes(store.table("products"), ["title", "brand"])
    out = evaluate.run(EvaluateConfig(db=store.uri, split="test", baseline="none", report_dir=str(tmp_path / "r"), quiet=True))
    n_test = sum(q["split"] == "test" for q in queries.values())
    assert out.queries == n_test and out.grade_scales == ["numeric:0-3"]
    assert set(out.judged_list["bm25"]) == {"ndcg@10", "queries"}
    # BM25 puts "steel X" (both words, grade 3) first; at worst the rest come in the worst order. Read on
    # ESCI's letters instead of the declared 0-3, every gain would be 0 and the figure far below this bound.
    from ray_app.metrics import ndcg_at_k

    worst_rest = ndcg_at_k([4, 3, 2, 1], [3.0, 0.0, 1.0, 2.5])
    assert worst_rest - 1e-6 <= out.judged_list["bm25"]["ndcg@10"] <= 1.0
    report = open(out.report_path).read()
    assert "Grade scale: `numeric:0-3` (gain = grade; relevant: gain >= 2)" in report

    code = evaluate.main(["--db", store.uri, "--split", "validation", "--baseline", "none",
                          "--report-dir", str(tmp_path / "r"), "--quiet"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and summary["ok"] is False
    assert "no judged query in split 'validation'" in summary["error"]
    assert f"test: {n_test} queries, {n_test} judged" in summary["error"]
    assert f"train: {8 - n_test} queries, {8 - n_test} judged" in summary["error"]


def test_taxonomy_grades_are_the_default_scale(ray_session, store, tmp_path):
    from ray_app.taxonomy import declare_taxonomy
    from schemas.taxonomy import Taxonomy

    declare_taxonomy(store, Taxonomy(intents=["search"], grades={"perfect": 3, "good": 1.5, "bad": 0}), "k")
    path = tmp_path / "judgments.csv"
    path.write_text("query_id,product_id,grade\nq1,p1,Perfect\nq1,p2,good\nq1,p3,3\n")
    result = ingest.run(IngestConfig(db=store.uri, table="judgments", path=str(path), quiet=True))
    judged = {t.table: t for t in result.tables}["judgments"]
    assert (judged.accepted, judged.quarantined) == (2, 1)  # "3" is not a level the taxonomy declares
    rows = sorted(store.read("judgments").to_pylist(), key=lambda r: r["product_id"])
    assert [(r["grade"], r["gain"], r["scale"]) for r in rows] == [("perfect", 3.0, "perfect=3,good=1.5,bad=0"),
                                                                   ("good", 1.5, "perfect=3,good=1.5,bad=0")]
    assert store.count("queries") == 0  # no query text in the file: no query rows
