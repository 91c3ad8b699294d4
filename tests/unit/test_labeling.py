"""Labelling without Ray: rule matcher, intent rules, position-bias maths, resolution, import/export."""
from __future__ import annotations

import json
from datetime import datetime

import pyarrow as pa
import pytest

from ray_app.labeling.behaviour import (aggregate_events, behaviour_label_rows, debiased_ctr, grade_pair,
                                        ipw_weight, propensity, smoothed_ctr)
from ray_app.labeling.human_io import ImportContext, import_records, label_studio_tasks, write_export
from ray_app.labeling.quality import cohen_kappa, quality_report, resolve_labels, span_prf
from ray_app.labeling.rules import RuleMatcher, build_lexicons, inflections, label_queries_local
from ray_app.privacy import pseudonymise
from ray_app.store import rows_to_arrow

pytestmark = pytest.mark.unit
T0, T1 = datetime(2026, 1, 1), datetime(2026, 2, 1)


@pytest.fixture(scope="module")
def matcher() -> RuleMatcher:
    products = pa.table({
        "brand": ["Nike", "Dr. Martens", "Levi's", "Sony", "On"],
        "category_path": [["Clothing", "Shoes", "Running Shoes"], ["Shoes", "Boots"], ["Clothing", "Jeans"],
                          ["Electronics", "Headphones & Earbuds"], ["Electronics", "Batteries"]],
        "attributes": ['{"colour": "Navy Blue"}', '{"color": "black"}', "{}", "not json", '{"colour": "red"}'],
        "title": ["Nike Air Zoom running shoe", "Dr Martens 1460 boots", "Levi's 501 jeans", "Sony WH-1000 headphones",
                  "On battery pack white"],
    })
    return RuleMatcher(build_lexicons(products))


def spans(m: RuleMatcher, text: str) -> list[tuple[str, str]]:
    return [(s["text"], s["type"]) for s in m.entities(text)]


def test_lexicons_come_from_the_catalogue(matcher):
    lex = build_lexicons(pa.table({"brand": ["Acme"], "category_path": [["Kitchen", "Batteries"]],
                                   "attributes": ['{"colour": "teal"}'], "title": ["Acme purple kettle"]}))
    assert lex["brand"] == ["acme"]
    assert {"battery", "batteries", "kitchen", "kitchens"} <= set(lex["category"])
    assert lex["colour"] == ["purple", "teal"]  # built-in colours the shop actually uses
    assert "on" not in matcher.terms  # a stopword brand would match everywhere: dropped
    assert inflections("running shoes") == {"running shoes", "running shoe"}
    assert inflections("box") == {"box", "boxes"} and inflections("clothing") == {"clothing"}


def test_compound_categories_from_titles():
    titles = ["Acme Air Rain Jacket", "Bolt Rain Jacket Red", "Acme Rain Jackets", "Acme Air Boots",
              "Bolt Air Jacket", "Cora Air Jacket", "Bolt Hiking Boots", "Acme Hiking Boots", "Cora Hiking Boot"]
    brands = [t.split()[0] for t in titles]
    lex = build_lexicons(pa.table({"brand": brands, "category_path": [["Clothing", "Jackets"]] * 4 + [["Shoes", "Boots"]] * 5,
                                   "attributes": ["{}"] * 9, "title": titles}))
    cats = set(lex["category"])
    assert {"rain jacket", "rain jackets", "hiking boots", "hiking boot"} <= cats
    assert not any(c.startswith("air ") for c in cats)  # "Air" precedes jackets and boots: a model word


def test_entity_offsets_longest_match_and_boundaries(matcher):
    text = "Red NIKE Running Shoes size 10 under $50"
    found = matcher.entities(text)
    assert [(s["start"], s["end"], s["type"]) for s in found] == [
        (0, 3, "colour"), (4, 8, "brand"), (9, 22, "category"), (28, 30, "size"), (31, 40, "price_range")]
    assert all(text[s["start"]:s["end"]] == s["text"] for s in found)
    assert spans(matcher, "navy blue jeans") == [("navy blue", "colour"), ("jeans", "category")]
    assert spans(matcher, "headphones & earbuds") == [("headphones & earbuds", "category")]
    assert spans(matcher, "snike shoestring nikes") == []  # word boundaries, no substring hits
    assert spans(matcher, "dr martens boot") == [("dr martens", "brand"), ("boot", "category")]
    assert spans(matcher, "levi's battery") == [("levi's", "brand"), ("battery", "category")]


@pytest.mark.parametrize("text,expected", [
    ("below 100 dollars", [("below 100 dollars", "price_range")]),
    ("jeans $20-$40", [("jeans", "category"), ("$20-$40", "price_range")]),
    ("15 inch laptop", [("15 inch", "size")]),
    ("boots size 10.5", [("boots", "category"), ("10.5", "size")]),  # "size" is the cue, not the value
    ("jeans xl", [("jeans", "category"), ("xl", "size")]),
    ("2 in 1 laptop", []),
    ("between $10 and $20", [("between $10 and $20", "price_range")]),
])
def test_size_and_price_patterns(matcher, text, expected):
    assert spans(matcher, text) == expected


@pytest.mark.parametrize("text,intent", [
    ("where is my order", "order_support"), ("refund for headphones", "order_support"),
    ("track package", "order_support"), ("sony headphones reviews", "review_lookup"),
    ("is nike good", "review_lookup"), ("boots worth it", "review_lookup"),
    ("cheapest boots", "price_comparison"), ("sony vs bose", "price_comparison"),
    ("jeans under $50", "price_comparison"), ("nike", "brand_query"), ("nike official store", "brand_query"),
    ("nike new arrivals", "brand_query"), ("nike sale", "brand_query"), ("nike running shoes", "product_search"),
    ("running shoes $20-$40", "price_comparison"), ("best boots 2026", "review_lookup"),
    ("set a timer for 20 minutes", "out_of_scope"), ("my jeans arrived damaged", "order_support"),
    ("black boots", "product_search"), ("zoom", "product_search"), ("tell me a joke", "out_of_scope"),
])
def test_intent_rules(matcher, text, intent):
    got, conf, rule = matcher.intent(text)
    assert got == intent and 0 < conf <= 1 and rule.startswith("intent:")
    if intent == "out_of_scope":
        assert conf <= 0.6  # what is left, or another service: never as sure as a positive rule


def test_rule_rows_are_deterministic(matcher):
    lex = {"brand": ["nike"], "category": ["shoes"], "colour": [], "title_words": []}
    a = label_queries_local([{"query_id": "Q1", "text": "nike shoes"}, {"query_id": "Q2", "text": "hello"}], lex, T0)
    b = label_queries_local([{"query_id": "Q1", "text": "nike shoes"}, {"query_id": "Q2", "text": "hello"}], lex, T1)
    assert [r["label_id"] for r in a] == [r["label_id"] for r in b]
    assert [(r["target_id"], r["task"]) for r in a] == [("Q1", "intent"), ("Q1", "entity"), ("Q2", "intent")]
    rows_to_arrow(a, "labels")  # valid Label rows


def test_position_bias_math():
    assert propensity(1, 1.0) == 1.0 and propensity(4, 1.0) == 0.25 and propensity(4, 0.5) == 0.5
    assert propensity(None, 1.0) == 1.0 and propensity(7, 0.0) == 1.0
    assert ipw_weight(3, 1.0) == pytest.approx(3.0) and ipw_weight(100, 1.0) == 20.0  # clipped
    assert debiased_ctr([1, 3], 10, 1.0) == pytest.approx(0.4)
    assert debiased_ctr([1, 3], 10, 0.0) == pytest.approx(0.2)  # eta 0: raw CTR
    assert debiased_ctr([5, 5], 4, 1.0) == 1.0  # capped
    assert smoothed_ctr(1.0, 1, strength=3, prior=0.1) == pytest.approx(1.3 / 4)
    ev = pa.table({"event_type": ["impression", "impression", "click", "impression", "click", "purchase", "impression"],
                   "query_id": ["q", "q", "q", "q", "q", "q", ""],
                   "product_id": ["a", "a", "a", "b", "b", "b", "a"],
                   "position": pa.array([2, 4, 4, None, None, None, 1], pa.int64())})
    stats = {(r["query_id"], r["product_id"]): r for r in aggregate_events(ev, 1.0).to_pylist()}
    assert set(stats) == {("q", "a"), ("q", "b")}  # events without a query are not pair evidence
    a = stats[("q", "a")]
    assert (a["impressions"], a["clicks"], a["mean_position"], a["ipw_clicks"]) == (2, 1, 3.0, 4.0)
    assert a["debiased_ctr"] == pytest.approx(1.0)
    assert stats[("q", "b")]["ipw_clicks"] == 1.0 and stats[("q", "b")]["purchases"] == 1  # no rank: weight 1


def test_grades_from_behaviour():
    assert grade_pair(10, 1, 0, 1, 1.0, 3)[0] == "E"
    assert grade_pair(10, 1, 1, 0, 1.0, 3)[0] == "S"
    assert grade_pair(10, 5, 0, 0, 5.0, 3)[0] == "S"
    assert grade_pair(10, 1, 0, 0, 1.0, 3)[0] == "C"
    assert grade_pair(10, 0, 0, 0, 0.0, 3)[0] == "I"
    assert grade_pair(2, 0, 0, 0, 0.0, 3) is None  # too few impressions, no engagement
    assert grade_pair(30, 0, 0, 0, 0.0, 3)[1] > grade_pair(3, 0, 0, 0, 0.0, 3)[1]  # confidence grows
    stats = pa.table({"query_id": ["q"], "product_id": ["p"], "impressions": [5], "clicks": [0],
                      "add_to_carts": [0], "purchases": [0], "ipw_clicks": [0.0], "debiased_ctr": [0.0]})
    (row,) = behaviour_label_rows(stats, 3, 1.0, T0)
    assert (row["target_id"], row["value"], row["source"]) == ("q::p", "I", "behaviour")


def lab(target, task, source, value="", spans=(), annotator="x", created=T0, conf=1.0):
    from ray_app.ids import label_id
    return dict(label_id=label_id(target, task, source, annotator), target_type="query_product" if "::" in target else "query",
                target_id=target, task=task, value=value, spans=list(spans), source=source, confidence=conf,
                annotator=annotator, created_at=created)


def test_resolution_precedence():
    rows = [lab("Q1", "intent", "model", "out_of_scope"), lab("Q1", "intent", "rule", "product_search"),
            lab("Q1", "intent", "human", "brand_query", annotator="a", created=T0),
            lab("Q1", "intent", "human", "review_lookup", annotator="b", created=T1),
            lab("Q2", "intent", "model", "out_of_scope"), lab("Q2", "intent", "rule", "product_search"),
            lab("Q1::P", "relevance", "rule", "I"), lab("Q1::P", "relevance", "behaviour", "E")]
    res = {(r["target_id"], r["task"]): r for r in resolve_labels(rows_to_arrow(rows, "labels")).to_pylist()}
    assert res[("Q1", "intent")]["value"] == "review_lookup"  # human wins; newest human
    assert res[("Q2", "intent")]["value"] == "product_search"  # rule beats model
    assert res[("Q1::P", "relevance")]["value"] == "E"  # behaviour beats rule


def test_agreement_metrics_and_report():
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "a", "b", "b"]) == 1.0
    assert cohen_kappa(["a", "b", "a", "b"], ["a", "a", "b", "b"]) == 0.0
    assert cohen_kappa(["a", "a", "a", "b"], ["a", "a", "b", "b"]) == 0.5  # po .75, pe .5
    f = span_prf([frozenset({(0, 4, "brand"), (5, 9, "category")})], [frozenset({(0, 4, "brand")})])
    assert (f["precision"], f["recall"], f["f1"]) == (0.5, 1.0, 0.6667)
    s_nike = {"start": 0, "end": 4, "type": "brand", "text": "nike"}
    rows = [lab("Q1", "intent", "rule", "product_search"), lab("Q1", "intent", "human", "brand_query"),
            lab("Q2", "intent", "rule", "product_search"), lab("Q2", "intent", "human", "product_search"),
            lab("Q1", "entity", "rule", spans=[s_nike]), lab("Q1", "entity", "human", spans=[s_nike]),
            lab("Q1::P1", "relevance", "behaviour", "E")]
    queries = pa.table({"query_id": ["Q1", "Q2", "Q3"], "text": ["nike", "nike shoes", "hi"]})
    judg = pa.table({"query_id": ["Q1"], "product_id": ["P1"], "grade": ["E"]})
    rep = quality_report(rows_to_arrow(rows, "labels"), queries, judg)
    assert rep["coverage"]["intent"]["human"] == round(2 / 3, 4) and rep["coverage"]["entity"]["resolved"] == round(1 / 3, 4)
    assert rep["agreement"]["intent"]["rule_vs_human"]["accuracy"] == 0.5
    assert rep["agreement"]["entity"]["rule_vs_human"]["f1"] == 1.0
    assert rep["agreement"]["relevance"]["behaviour_vs_judgments"] == {"n": 1, "accuracy": 1.0, "kappa": 1.0, "mean_abs_gain_diff": 0.0}
    assert rep["conflicts"]["intent"]["count"] == 1 and rep["conflicts"]["intent"]["examples"][0]["target_id"] == "Q1"
    assert rep["distribution"]["intent"] == {"brand_query": 1, "product_search": 1}
    assert rep["confidence"]["rule"]["histogram"]["0.9-1.0"] == 3


@pytest.fixture
def ctx() -> ImportContext:
    return ImportContext(texts={"Q00001": "nike running shoes", "Q00002": "where is my order"},
                         products={"P1", "P2"}, stored={}, default_annotator="team", now=T0)


def test_label_studio_import_and_round_trip(ctx, tmp_path):
    ls = [{"data": {"query_id": "Q00001", "text": "nike running shoes"},
           "annotations": [{"completed_by": 7, "result": [
               {"type": "choices", "from_name": "intent", "value": {"choices": ["brand_query"]}},
               {"type": "labels", "from_name": "entities", "value": {"start": 0, "end": 4, "text": "nike", "labels": ["brand"]}}]},
               {"completed_by": 8, "was_cancelled": True, "result": []}]}]
    path = tmp_path / "ls.json"
    path.write_text(json.dumps(ls))
    out = import_records(str(path), ctx)
    assert (out.read, out.imported, out.rejected) == (1, 1, [])
    got = {r["task"]: r for r in out.rows}
    # a person is stored as a keyed pseudonym unless a display name is configured (docs/labelling.md)
    assert got["intent"]["value"] == "brand_query" and got["intent"]["annotator"] == pseudonymise("labelstudio:7", ctx.pseudonym_key)
    assert got["entity"]["spans"] == [{"start": 0, "end": 4, "type": "brand", "text": "nike"}]

    intent_only = {"type": "choices", "from_name": "intent", "value": {"choices": ["product_search"]}}
    shown_spans = {"result": [{"type": "labels", "value": {"start": 0, "end": 4, "labels": ["brand"]}}]}
    path.write_text(json.dumps([{"data": {"query_id": "Q00001"}, "annotations": [{"completed_by": "a", "result": [intent_only]}]},
                                {"data": {"query_id": "Q00001"}, "predictions": [shown_spans],
                                 "annotations": [{"completed_by": "b", "result": [intent_only]}]},
                                {"data": {"query_id": "Q00001"}, "annotations": [{"completed_by": "c", "result": []}]}]))
    out = import_records(str(path), ctx)  # removing every predicted span says "no entities"; no prediction: no entity label
    a, b = (pseudonymise(x, ctx.pseudonym_key) for x in "ab")
    assert sorted((r["annotator"], r["task"], len(r["spans"])) for r in out.rows) == sorted([(a, "intent", 0), (b, "entity", 0), (b, "intent", 0)])
    assert out.rejected == [{"line": 3, "annotation": 1, "reason": "annotation holds no intent choice and no entity spans"}]

    human = [lab("Q00001", "intent", "human", "brand_query", annotator="ann_a", conf=0.9),
             lab("Q00001", "entity", "human", spans=[{"start": 0, "end": 4, "type": "brand", "text": "nike"},
                                                     {"start": 5, "end": 18, "type": "category", "text": "running shoes"}],
                 annotator="ann_a", conf=0.9),
             lab("Q00001", "intent", "human", "product_search", annotator="ann_b"),
             lab("Q00001", "entity", "human", annotator="ann_b"),
             lab("Q00001::P1", "relevance", "human", "S", annotator="ann_a")]
    weak = [lab("Q00002", "intent", "rule", "order_support", annotator="intent:order_words", conf=0.9)]
    ctx.stored = {("Q00002", "intent", "rule"): weak[0]}
    ctx.known_annotators = {"ann_a", "ann_b"}  # stored names (what jobs.label passes): an export imports back as it was
    tasks = label_studio_tasks(human + weak, weak, ctx.texts, {"P1": "Nike Zoom"})
    by = {(t["data"]["query_id"], t["data"].get("product_id")): t for t in tasks}
    assert set(by) == {("Q00001", None), ("Q00001", "P1"), ("Q00002", None)}
    assert by[("Q00002", None)]["predictions"][0]["result"][0]["value"]["choices"] == ["order_support"]
    assert len(by[("Q00001", None)]["annotations"]) == 2 and by[("Q00001", "P1")]["data"]["product_title"] == "Nike Zoom"
    for ext in ("json", "jsonl", "csv"):
        path = tmp_path / f"export.{ext}"
        write_export(str(path), human + weak, human + weak, weak, ctx.texts)
        back = import_records(str(path), ctx)
        assert back.rejected == [] and back.read == back.imported
        key = lambda r: (r["label_id"], r["task"], r["value"], json.dumps(r["spans"]), r["annotator"], r["confidence"])  # noqa: E731
        assert sorted(map(key, back.rows)) == sorted(map(key, human)), ext


def test_weak_lines_edited_become_human(ctx, tmp_path):
    stored = lab("Q00002", "intent", "rule", "order_support", annotator="intent:order_words")
    ctx.stored = {("Q00002", "intent", "rule"): stored}
    same = dict(target_type="query", target_id="Q00002", task="intent", value="order_support", source="rule", annotator="intent:order_words")
    edited = dict(same, target_id="Q00002", value="out_of_scope")
    path = tmp_path / "edit.jsonl"
    path.write_text(json.dumps(same) + "\n" + json.dumps(edited) + "\n")
    path.write_text(path.read_text() + json.dumps(dict(same, target_id="Q00001")) + "\n")
    out = import_records(str(path), ctx)
    assert (out.read, out.imported, out.unchanged, len(out.rows)) == (3, 2, 1, 1)
    assert out.rejected[0]["line"] == 3 and "no stored rule intent label" in out.rejected[0]["reason"]
    assert out.rows[0]["source"] == "human" and out.rows[0]["annotator"] == "team" and out.rows[0]["value"] == "out_of_scope"


def test_bad_import_lines_are_rejected_with_reasons(ctx, tmp_path):
    good = dict(target_type="query", target_id="Q00001", task="intent", value="brand_query", annotator="a")
    lines = [
        json.dumps(good),
        json.dumps(dict(good, task="sentiment")),
        json.dumps(dict(good, task="entity", value="", spans=[{"start": 10, "end": 40, "type": "brand", "text": "x"}])),
        json.dumps(dict(good, task="entity", value="", spans=[{"start": 0, "end": 4, "type": "brand", "text": "adid"}])),
        json.dumps(dict(good, target_id="Q99999")),
        "{not json",
        "",
        json.dumps(dict(good, value="shopping")),
        json.dumps(dict(target_type="query_product", target_id="Q00001::P9", task="relevance", value="E")),
        json.dumps(dict(good, task="entity", value="", spans=[{"start": 0, "end": 4, "type": "flavour"}])),
        json.dumps(dict(target_type="query_product", target_id="Q00001::P2", task="relevance", value="Exact")),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = import_records(str(path), ctx)
    reasons = {r["line"]: r["reason"] for r in out.rejected}
    assert out.read == 10 and out.imported == 2 and out.read == out.imported + len(out.rejected)
    assert "unknown task" in reasons[2] and "outside the query text" in reasons[3]
    assert "does not match" in reasons[4] and "unknown query id" in reasons[5]
    assert "invalid JSON" in reasons[6] and "unknown intent" in reasons[8]
    assert "unknown product id" in reasons[9] and "unknown entity type" in reasons[10]
    assert {r["value"] for r in out.rows} == {"brand_query", "E"}
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text('target_type,target_id,task,value,spans,annotator,confidence\n'
                        'query,Q00001,entity,,"[{""start"":0,""end"":4,""type"":""brand""}]",a,1\n'
                        'query,Q00001,entity,,"[{""start"":0,""end"":99,""type"":""brand""}]",a,1\n')
    out = import_records(str(csv_path), ctx)
    assert out.imported == 1 and out.rejected[0]["line"] == 3 and out.rows[0]["spans"][0]["text"] == "nike"


def test_relevance_agreement_uses_the_declared_gains():
    from ray_app.labeling.quality import _agree

    a = {"t1": {"value": "perfect"}, "t2": {"value": "good"}}
    b = {"t1": {"value": "good"}, "t2": {"value": "good"}}
    out = _agree("relevance", a, b, gains={"perfect": 4.0, "good": 2.0, "bad": 0.0})
    assert out["mean_abs_gain_diff"] == 1.0  # |4-2| and 0; ESCI's gains would count both as 0
