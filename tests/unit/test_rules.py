"""Business rules: the file format and its errors, every rule kind, conditions, order of application."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from ray_app.search.rules import apply_rules, boosted, holds, load_rules
from schemas.api import Candidate
from schemas.rules import RulesError, parse_rules

ROOT = Path(__file__).resolve().parents[2]
NOON = {"hour": 12}


def hit(pid: str, score: float, brand: str = "Acme", cats=("Clothing", "Shoes"), stock=5, **attrs) -> dict:
    return Candidate(product_id=pid, score=score, text=pid, brand=brand, category_path=list(cats), stock=stock,
                     attributes=json.dumps(attrs)).model_dump()


def rules(*items: dict, **top) -> object:
    return parse_rules({"version": "t1", "rules": list(items), **top})


def ids(hits: list[dict]) -> list[str]:
    return [h["product_id"] for h in hits]


def test_example_rules_file_parses_with_one_rule_of_each_kind():
    rs = load_rules(ROOT / "serve" / "rules.yaml")
    assert rs.version == "2026-12-01"
    assert {r.kind for r in rs.rules} == {"boost", "pin", "exclude", "diversity"}
    assert any(r.when and r.when.hours and r.when.hours[0] > r.when.hours[1] for r in rs.rules)  # a wrapping window


def test_load_errors_name_the_file_the_rule_and_the_field(tmp_path):
    with pytest.raises(RulesError, match="does not exist"):
        load_rules(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [unclosed\n")
    with pytest.raises(RulesError, match="bad.yaml.*not valid YAML"):
        load_rules(bad)
    bad.write_text('version: "v2"\nrules:\n  - id: lift\n    kind: boost\n    field: brand\n    value: nike\n    factor: -1\n')
    with pytest.raises(RulesError, match=r"bad.yaml.*rule 'lift' \(rules\[0\]\) field factor: .*greater than 0"):
        load_rules(bad)
    bad.write_text("rules: []\n")
    with pytest.raises(RulesError, match="field version: Field required"):
        load_rules(bad)
    bad.write_text("version: 2026-12-01\nrules: []\n")  # an unquoted YAML date is the same version string
    assert load_rules(bad).version == "2026-12-01"


@pytest.mark.parametrize("rule, message", [
    ({"id": "x", "kind": "bost"}, r"rule 'x' \(rules\[0\]\) field kind: .*does not match"),
    ({"id": "x", "kind": "pin", "query": "a", "product_id": "P1", "positon": 2}, "rule 'x'.*field positon: Extra inputs"),
    ({"id": "x", "kind": "exclude"}, "rule 'x'.*excludes nothing"),
    ({"id": "x", "kind": "diversity"}, "rule 'x'.*exactly one of max_per_brand and mmr_lambda"),
    ({"id": "x", "kind": "boost", "field": "colour", "value": "red", "factor": 2}, "rule 'x'.*field field: 'colour'"),
    ({"id": "x", "kind": "exclude", "brands": ["a"], "when": {"hours": [5, 5]}}, "rule 'x'.*field when.hours"),
    ({"id": "x", "kind": "exclude", "brands": ["a"], "when": {"device": ["phone"]}}, "rule 'x'.*field when.device"),
    ({"kind": "pin", "query": "a", "product_id": "P1"}, r"rules\[0\] field id: Field required"),
])
def test_rule_errors(rule, message):
    with pytest.raises(RulesError, match=message):
        rules(rule)


def test_duplicate_ids_are_rejected():
    with pytest.raises(RulesError, match="'d' is used twice"):
        rules({"id": "d", "kind": "exclude", "brands": ["a"]}, {"id": "d", "kind": "exclude", "brands": ["b"]})


def test_exclusions_drop_out_of_stock_ids_and_brands():
    rs = rules({"id": "oos", "kind": "exclude", "out_of_stock": True},
               {"id": "ban", "kind": "exclude", "product_ids": ["P3"], "brands": ["EVIL corp"]},
               {"id": "unused", "kind": "exclude", "brands": ["nobody"]})
    hits = [hit("P1", 5, stock=0), hit("P2", 4, stock=None), hit("P3", 3), hit("P4", 2, brand="Evil Corp"),
            hit("P5", 1, stock=-2)]
    out, applied = apply_rules(rs, hits, "shoes", NOON)
    assert ids(out) == ["P2"] and applied == ["oos", "ban"]


def test_boosts_by_brand_category_and_attribute_then_resort():
    rs = rules({"id": "b-brand", "kind": "boost", "field": "brand", "value": "ZED", "factor": 2},
               {"id": "b-cat", "kind": "boost", "field": "category", "values": ["running shoes"], "factor": 1.5},
               {"id": "b-attr", "kind": "boost", "field": "attribute:feature", "value": "Waterproof", "factor": 3},
               {"id": "b-none", "kind": "boost", "field": "brand", "value": "nobody", "factor": 9})
    hits = [hit("P1", 10), hit("P2", 6, brand="Zed"), hit("P3", 4, cats=("Clothing", "Running Shoes")),
            hit("P4", 3, feature=["waterproof", "light"]), hit("P5", 2, brand="zed", cats=("Running Shoes",))]
    out, applied = apply_rules(rs, hits, "q", NOON)
    scores = {h["product_id"]: h["score"] for h in out}
    assert scores == {"P1": 10, "P2": 12, "P3": 6, "P4": 9, "P5": 6}  # P5: 2 * 2 * 1.5, factors multiply
    assert ids(out) == ["P2", "P1", "P4", "P3", "P5"]  # ties (P3, P5 at 6) by product_id
    assert applied == ["b-brand", "b-cat", "b-attr"]


def test_boost_is_sign_aware_and_zero_stays():
    assert boosted(-2.0, 2.0) == -1.0 and boosted(2.0, 2.0) == 4.0 and boosted(0.0, 5.0) == 0.0
    assert boosted(-2.0, 0.5) == -4.0
    rs = rules({"id": "up", "kind": "boost", "field": "brand", "value": "zed", "factor": 4})
    hits = [hit("P1", -1.0), hit("P2", -2.0, brand="Zed"), hit("P3", 0.0, brand="Zed")]
    out, applied = apply_rules(rs, hits, "q", NOON)
    assert ids(out) == ["P3", "P2", "P1"] and out[1]["score"] == -0.5 and applied == ["up"]
    out, applied = apply_rules(rs, [hit("P3", 0.0, brand="zed"), hit("P1", 1.0)], "q", NOON)
    assert ids(out) == ["P3", "P1"] and applied == []  # nothing changed: the input order is kept


def test_understanding_boost_uses_the_ruleset_factor_and_is_reported():
    rs = rules(understanding_boost=3.0)
    out, applied = apply_rules(rs, [hit("P1", 3), hit("P2", 2, brand="Nike")], "nike shoes", NOON, boosts={"brand": ["nike"]})
    assert ids(out) == ["P2", "P1"] and out[0]["score"] == 6 and applied == ["understanding:brand"]
    with pytest.raises(ValueError, match="'colour'"):
        apply_rules(rs, [hit("P1", 1)], "q", NOON, boosts={"colour": ["red"]})


def test_boosted_order_is_deterministic_whatever_the_input_order():
    rs = rules({"id": "b", "kind": "boost", "field": "brand", "value": "zed", "factor": 2})
    hits = [hit(f"P{i}", float(i % 3), brand="Zed" if i % 2 else "Acme") for i in range(12)]
    first, _ = apply_rules(rs, hits, "q", NOON)
    for seed in range(5):
        shuffled = hits[:]
        random.Random(seed).shuffle(shuffled)
        assert apply_rules(rs, shuffled, "q", NOON)[0] == first


def test_max_per_brand_within_first_n_and_fill():
    rs = rules({"id": "div", "kind": "diversity", "max_per_brand": 1, "first_n": 3})
    hits = [hit("A1", 9, brand="A"), hit("A2", 8, brand="a"), hit("B1", 7, brand="B"), hit("A3", 6, brand="A"),
            hit("N1", 5, brand=""), hit("N2", 4, brand=""), hit("C1", 3, brand="C")]
    out, applied = apply_rules(rs, hits, "q", NOON)
    assert ids(out) == ["A1", "B1", "N1", "A2", "A3", "N2", "C1"] and applied == ["div"]
    out, applied = apply_rules(rs, [hit("A1", 2, brand="A"), hit("A2", 1, brand="A")], "q", NOON)
    assert ids(out) == ["A1", "A2"] and applied == []  # nothing else to show: the order stands


def test_mmr_spreads_similar_products():
    rs = rules({"id": "mmr", "kind": "diversity", "mmr_lambda": 0.5, "first_n": 3})
    hits = [hit("A1", 1.0, brand="A", cats=("X",)), hit("A2", 0.95, brand="A", cats=("X",)),
            hit("B1", 0.9, brand="B", cats=("Y",)), hit("C1", 0.0, brand="C", cats=("Z",))]
    out, applied = apply_rules(rs, hits, "q", NOON)
    assert ids(out) == ["A1", "B1", "C1", "A2"] and applied == ["mmr"]  # A2 repeats A1: it goes below C1
    pure = rules({"id": "rel", "kind": "diversity", "mmr_lambda": 1.0, "first_n": 3})
    assert ids(apply_rules(pure, hits, "q", NOON)[0]) == ids(hits)


def test_pins_move_fetch_and_respect_filters_and_exclusions():
    rs = rules({"id": "pin-a", "kind": "pin", "query": "Red  Shoes", "product_id": "P3", "position": 1},
               {"id": "pin-b", "kind": "pin", "query": ["red shoes"], "product_id": "X1", "position": 2},
               {"id": "pin-c", "kind": "pin", "query": "red shoes", "product_id": "X2", "position": 1},
               {"id": "pin-d", "kind": "pin", "query": "red shoes", "product_id": "X3", "position": 1},
               {"id": "pin-e", "kind": "pin", "query": "red shoes", "product_id": "X4", "position": 50},
               {"id": "oos", "kind": "exclude", "out_of_stock": True})
    catalogue = {"X1": hit("X1", 0.0), "X2": hit("X2", 0.0, brand="Banned"), "X3": hit("X3", 0.0, stock=0),
                 "X4": hit("X4", 0.0)}
    asked: list[list[str]] = []

    def lookup(pids: list[str]) -> list[dict]:
        asked.append(pids)
        return [catalogue[p] for p in pids if p in catalogue]

    hits = [hit("P1", 3), hit("P2", 2), hit("P3", 1)]
    out, applied = apply_rules(rs, hits, "red shoes", NOON, lookup=lookup, allowed=lambda r: r["brand"] != "Banned")
    assert ids(out) == ["P3", "X1", "P1", "P2", "X4"]  # X2 fails the filters, X3 is out of stock, X4 goes last
    assert out[1]["score"] == 3 and out[4]["score"] == 2  # fetched: the displaced hit's score, else the last one's
    assert applied == ["pin-a", "pin-b", "pin-e"] and len(asked) == 1 and sorted(asked[0]) == ["X1", "X2", "X3", "X4"]
    assert catalogue["X1"]["score"] == 0.0  # the lookup's dicts are copied too
    out, applied = apply_rules(rs, hits, "red shoes please", NOON, lookup=lookup)
    assert ids(out) == ids(hits) and applied == []


def test_pins_on_the_same_position_keep_file_order_and_in_place_pins_are_silent():
    rs = rules({"id": "first", "kind": "pin", "query": "q", "product_id": "P3", "position": 1},
               {"id": "second", "kind": "pin", "query": "q", "product_id": "P2", "position": 1},
               {"id": "same", "kind": "pin", "query": "q", "product_id": "P3", "position": 3})
    out, applied = apply_rules(rs, [hit("P1", 3), hit("P2", 2), hit("P3", 1)], "q", NOON)
    assert ids(out) == ["P3", "P2", "P1"] and applied == ["first"]  # P2 was at position 2 already
    out, applied = apply_rules(rs, [hit("P3", 3), hit("P2", 2), hit("P1", 1)], "q", NOON)
    assert ids(out) == ["P3", "P2", "P1"] and applied == []


def test_order_exclusions_boosts_diversity_pins():
    rs = rules({"id": "pin", "kind": "pin", "query": "q", "product_id": "A3", "position": 1},
               {"id": "div", "kind": "diversity", "max_per_brand": 1, "first_n": 2},
               {"id": "lift", "kind": "boost", "field": "brand", "value": "b", "factor": 10},
               {"id": "oos", "kind": "exclude", "out_of_stock": True})
    hits = [hit("A1", 9, brand="A"), hit("A2", 8, brand="A"), hit("B1", 1, brand="B", stock=0), hit("B2", 0.5, brand="B"),
            hit("A3", 0.1, brand="A")]
    out, applied = apply_rules(rs, hits, "q", NOON)
    assert ids(out) == ["A3", "A1", "B2", "A2"]  # B1 gone, B2 lifted to 5, diversity keeps A2 out of the top 2, pin last
    assert applied == ["oos", "lift", "div", "pin"]


@pytest.mark.parametrize("when, query, context, expected", [
    ({"query_equals": "Nike  Shoes"}, " nike shoes", {}, True),
    ({"query_equals": ["nike shoes"]}, "nike shoes red", {}, False),
    ({"query_contains": "running shoes"}, "blue Running Shoes size 9", {}, True),
    ({"query_contains": "shoe"}, "running shoes", {}, False),  # whole words only
    ({"locale": ["US", "de"]}, "q", {"locale": "us"}, True),
    ({"locale": ["de"]}, "q", {"locale": "us"}, False),
    ({"locale": ["us"]}, "q", {}, False),  # unknown locale: a locale-bound rule does not fire
    ({"device": ["mobile", "app"]}, "q", {"device": "app"}, True),
    ({"device": ["mobile"]}, "q", {"device": "desktop"}, False),
    ({"hours": [9, 17]}, "q", {"hour": 9}, True),
    ({"hours": [9, 17]}, "q", {"hour": 17}, False),  # end exclusive
    ({"hours": [22, 6]}, "q", {"hour": 23}, True),
    ({"hours": [22, 6]}, "q", {"hour": 0}, True),
    ({"hours": [22, 6]}, "q", {"hour": 5}, True),
    ({"hours": [22, 6]}, "q", {"hour": 6}, False),
    ({"hours": [22, 6]}, "q", {"hour": 12}, False),
    ({"hours": [0, 24]}, "q", {"hour": 23}, True),
    ({"locale": ["us"], "device": ["mobile"], "hours": [18, 6]}, "q", {"locale": "us", "device": "mobile", "hour": 20}, True),
    ({"locale": ["us"], "device": ["mobile"], "hours": [18, 6]}, "q", {"locale": "us", "device": "mobile", "hour": 12}, False),
])
def test_conditions(when, query, context, expected):
    rs = rules({"id": "lift", "kind": "boost", "field": "brand", "value": "zed", "factor": 2, "when": when})
    assert holds(rs.rules[0].when, " ".join(query.lower().split()), {"hour": 12, **context}) is expected
    out, applied = apply_rules(rs, [hit("P1", 2), hit("P2", 1.5, brand="Zed")], query, {"hour": 12, **context})
    assert (applied == ["lift"] and ids(out) == ["P2", "P1"]) if expected else (applied == [] and ids(out) == ["P1", "P2"])


def test_context_may_be_a_pydantic_model_and_hour_defaults_to_utc_now():
    from schemas.api import SearchContext

    rs = rules({"id": "always", "kind": "boost", "field": "brand", "value": "zed", "factor": 2, "when": {"hours": [0, 24]}})
    out, applied = apply_rules(rs, [hit("P1", 2), hit("P2", 1.5, brand="zed")], "q", SearchContext(device="mobile"))
    assert applied == ["always"]
    out, applied = apply_rules(rs, [hit("P1", 2), hit("P2", 1.5, brand="zed")], "q", None)
    assert applied == ["always"]


def test_callers_hits_are_never_mutated():
    rs = rules({"id": "oos", "kind": "exclude", "out_of_stock": True},
               {"id": "lift", "kind": "boost", "field": "brand", "value": "zed", "factor": 2},
               {"id": "div", "kind": "diversity", "max_per_brand": 1, "first_n": 3},
               {"id": "pin", "kind": "pin", "query": "q", "product_id": "P4", "position": 1})
    hits = [hit("P1", 3, stock=0), hit("P2", 2, brand="Zed"), hit("P3", 1, brand="Zed"), hit("P4", 0.5)]
    before = copy.deepcopy(hits)
    out, applied = apply_rules(rs, hits, "q", NOON, boosts={"brand": ["acme"]})
    assert hits == before and applied == ["oos", "lift", "understanding:brand", "div", "pin"]
    assert ids(out) == ["P4", "P2", "P3"] and out[1]["score"] == 4
    assert all(o is not h for o in out for h in hits)
