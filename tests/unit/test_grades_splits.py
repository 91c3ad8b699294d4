"""A shop's own judgments without Ray: declared grade scales and their gains, query ids from
query text, splits by hash of the query, and the figures computed with the stored gains."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from ray_app.cli import ConfigError, load_config
from ray_app.evaluation import Graded, catalogue_metrics, judged_list_metrics, render_report
from ray_app.ingest.clean import CleanContext, Reject, clean_record
from ray_app.ingest.judged import hash_split, judgment_queries, query_key
from schemas.config import IngestConfig
from schemas.grades import ESCI, GradeScale
from schemas.records import Judgment

pytestmark = pytest.mark.unit

NUMERIC = GradeScale.parse("numeric:0-3")


def ctx(table: str, **kw) -> CleanContext:
    return CleanContext(table=table, pseudonym_key="k", **kw)


def test_numeric_grades_and_fractional_means_are_accepted_with_their_gains():
    rows = [clean_record({"query_id": "q1", "product_id": f"p{i}", "grade": g}, ctx("judgments", grades=NUMERIC))
            for i, g in enumerate(["0", "3", 2.5, "1.0", 3.0])]
    assert [(r["grade"], r["gain"]) for r in rows] == [("0", 0.0), ("3", 3.0), ("2.5", 2.5), ("1", 1.0), ("3", 3.0)]
    assert {r["scale"] for r in rows} == {"numeric:0-3"}
    assert Judgment.model_validate({**rows[2]}).gain == 2.5  # the table takes fractional gains
    with pytest.raises(Reject) as err:
        clean_record({"query_id": "q1", "product_id": "p", "grade": "4"}, ctx("judgments", grades=NUMERIC))
    assert err.value.field == "grade" and "outside the scale numeric:0-3" in err.value.reason
    with pytest.raises(Reject) as err:  # undeclared, a number is not an ESCI letter: the reason says what to declare
        clean_record({"query_id": "q1", "product_id": "p", "grade": "3"}, ctx("judgments"))
    assert "--grades numeric:0-3" in err.value.reason


def test_named_levels_and_esci_default():
    scale = GradeScale.parse("Perfect=3,good=1.5,bad=0")
    row = clean_record({"query_id": "q", "product_id": "p", "grade": "perfect"}, ctx("judgments", grades=scale))
    assert (row["grade"], row["gain"], row["scale"]) == ("Perfect", 3.0, "Perfect=3,good=1.5,bad=0")
    esci = clean_record({"query_id": "q", "product_id": "p", "grade": "s"}, ctx("judgments"))
    assert (esci["grade"], esci["gain"], esci["scale"]) == ("S", 2.0, "esci")
    assert GradeScale.parse("E=3,S=2,C=1,I=0") == ESCI and GradeScale.parse(scale.spec) == scale
    for bad in ("numeric:3-1", "a=1", "a=x,b=2", "grades"):
        with pytest.raises(ValueError):
            GradeScale.parse(bad)


def test_ingest_config_declares_scale_and_hash_split():
    config = load_config(IngestConfig, ["--path", "j.csv", "--table", "judgments", "--grades", "numeric:0-4",
                                        "--test-fraction", "0.4", "--validation-fraction", "0.1", "--seed", "5"], "p", "")
    assert config.grades.spec == "numeric:0-4" and config.hash_split and config.seed == 5
    assert IngestConfig(path="x").grades is None and not IngestConfig(path="x").hash_split
    for argv in (["--grades", "numeric:0"], ["--split", "test", "--test-fraction", "0.2"],
                 ["--test-fraction", "0.8", "--validation-fraction", "0.3"]):
        with pytest.raises(ConfigError):
            load_config(IngestConfig, ["--path", "x", *argv], "p", "")


def test_ndcg_uses_the_declared_gains_hand_computed():
    judged = {"a": Graded.of("3", 3.0, NUMERIC), "b": Graded.of("2.5", 2.5, NUMERIC), "c": Graded.of("0", 0.0, NUMERIC)}
    got = judged_list_metrics(judged, {"a": 0.5, "b": 0.1, "c": 0.9}, k=10)  # ranked c, a, b
    dcg = 0 / math.log2(2) + (2 ** 3 - 1) / math.log2(3) + (2 ** 2.5 - 1) / math.log2(4)
    ideal = (2 ** 3 - 1) / math.log2(2) + (2 ** 2.5 - 1) / math.log2(3)
    assert got == {"ndcg@10": pytest.approx(dcg / ideal)} and dcg / ideal == pytest.approx(0.678691, abs=1e-6)
    # the same order graded in ESCI letters gives the ESCI figures, not the declared ones
    letters = judged_list_metrics({"a": "E", "b": "S", "c": "I"}, {"a": 0.5, "b": 0.1, "c": 0.9}, k=10)
    assert set(letters) == {"ndcg_esci", "ndcg@10"} and letters["ndcg@10"] != pytest.approx(got["ndcg@10"])
    # full catalogue: relevant = top third of 0-3 (gain >= 2); unjudged products count as gain 0
    full = catalogue_metrics(["x", "b", "c", "a"], judged, k=10, recall_k=2)
    assert full["recall@2"] == pytest.approx(0.5) and full["mrr"] == pytest.approx(0.5)
    assert full["ndcg@10"] == pytest.approx(((2 ** 2.5 - 1) / math.log2(3) + 7 / math.log2(5)) / ideal)


def test_judgments_keyed_by_query_text_get_the_queries_ids():
    judgment = clean_record({"query": "  Red\u00a0Running   SHOES ", "product_id": "p1", "grade": "2.5"},
                            ctx("judgments", grades=NUMERIC))
    assert judgment["query_id"] == query_key("red running shoes") == query_key("Red Running Shoes", "US")
    assert query_key("red running shoes", "de") != judgment["query_id"]
    # the queries file and the queries a judgments file names get the same id
    from_file = clean_record({"query": "red running shoes"}, ctx("queries"))
    named = [clean_record(r, ctx("queries")) for r in judgment_queries(
        {"search": "Red Running Shoes", "sku": "p1", "grade": "3"}, "j.csv", {"search": "query", "sku": "product_id"})]
    assert from_file["query_id"] == named[0]["query_id"] == judgment["query_id"]
    assert named[0]["text"] == "Red Running Shoes"
    assert judgment_queries({"query_id": "q1", "product_id": "p", "grade": "E"}, "j.csv") == []  # no text: no query row
    with pytest.raises(Reject) as err:
        clean_record({"product_id": "p1", "grade": "E"}, ctx("judgments"))
    assert err.value.field == "query_id" and "query text column" in err.value.reason


def test_hash_split_is_stable_proportional_and_leak_free():
    ids = [f"q{i}" for i in range(4000)]
    splits = [hash_split(q, 13, 0.4, 0.1) for q in ids]
    assert splits == [hash_split(q, 13, 0.4, 0.1) for q in ids]  # the same query, the same split
    share = Counter(splits)
    assert abs(share["test"] / 4000 - 0.4) < 0.03 and abs(share["validation"] / 4000 - 0.1) < 0.02
    assert sum(a != b for a, b in zip(splits, (hash_split(q, 14, 0.4, 0.1) for q in ids))) > 1000  # the seed matters
    assert {hash_split(q, 13, 0.0, 0.0) for q in ids} == {"train"}
    hashed = ctx("queries", split_seed=13, test_fraction=0.5, validation_fraction=0.0)
    for text in ("red shoes", "blue kettle", "usb cable", "desk lamp", "yoga mat", "rain jacket"):
        query = clean_record({"text": text, "split": "train"}, hashed)  # the hash overrides the file's column
        judgments = [clean_record({"query": text.upper(), "product_id": p, "grade": "E", "split": "test"},
                                  ctx("judgments", split_seed=13, test_fraction=0.5)) for p in ("p1", "p2")]
        assert {j["split"] for j in judgments} == {query["split"]} == {hash_split(query["query_id"], 13, 0.5, 0.0)}
    forced = clean_record({"text": "red shoes"}, ctx("queries", split="validation"))
    assert forced["split"] == "validation"


def test_report_states_the_grade_scale():
    payload = {"created_at": "now", "db": "x", "products": 3, "products_version": 1, "split": "test", "queries": 1,
               "k": 10, "recall_k": 100, "grade_scales": ["numeric:0-3"],
               "judged_list": {"bm25": {"ndcg@10": 0.67, "queries": 1}}}
    text = render_report(payload)
    assert "Grade scale: `numeric:0-3` (gain = grade; relevant: gain >= 2)" in text
    assert "NDCG@10 (declared gains)" in text and "NDCG (ESCI gains)" not in text
    esci = render_report({**payload, "grade_scales": ["esci"], "judged_list": {"bm25": {"ndcg_esci": 0.5, "ndcg@10": 0.6}}})
    assert "`esci` (E=3, S=2, C=1, I=0; relevant: E, S)" in esci and "NDCG@10 (3/2/1/0)" in esci


def test_judgment_grades_take_the_taxonomys_aliases():
    from schemas.taxonomy import builtin_taxonomy

    ctx = CleanContext(table="judgments", pseudonym_key="k", taxonomy=builtin_taxonomy())
    row = clean_record({"query_id": "q", "product_id": "p", "grade": "Exact"}, ctx)
    assert (row["grade"], row["gain"]) == ("E", 3.0)
    with pytest.raises(Reject, match="grade"):
        clean_record({"query_id": "q", "product_id": "p", "grade": "great"}, ctx)
