"""Search filters: the numpy mask, the LanceDB SQL and the row predicate select the same products;
query understanding turns price phrases and catalogue brands into filters and boosts."""
from __future__ import annotations

import json
import math

import lancedb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_app.search.filters import CatalogueColumns, filter_sql, row_matches, understanding_filters
from ray_app.search.price_text import parse_price
from ray_app.synth_catalog import build_vocab, make_catalogue, make_queries
from schemas.api import PriceRange, SearchFilters

BRANDS = ["Nike", "nike", "NIKE ", "Levi's", "Ça Va", "", "HP"]
LEVELS = ["Clothing", "clothing", "Shoes", "Running Shoes", "Home & Kitchen", "100%_Cotton", "Électronique"]
PRICES = [None, float("nan"), 0.0, 9.99, 10.0, 20.5, 50.0, 1e6]
STOCKS = [None, -3, 0, 1, 250]
LOCALES = ["us", "US", "de", "en-GB"]


def _catalogue(n: int = 160, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = [{"product_id": f"P{i:04d}", "title": f"thing {i} {'shoe' if i % 3 == 0 else 'shirt'}",
             "brand": BRANDS[rng.integers(len(BRANDS))],
             "category_path": [LEVELS[j] for j in rng.choice(len(LEVELS), rng.integers(0, 4), replace=False)],
             "price": PRICES[rng.integers(len(PRICES))], "stock": STOCKS[rng.integers(len(STOCKS))],
             "locale": LOCALES[rng.integers(len(LOCALES))]} for i in range(n)]
    schema = pa.schema([("product_id", pa.string()), ("title", pa.string()), ("brand", pa.string()),
                        ("category_path", pa.list_(pa.string())), ("price", pa.float64()), ("stock", pa.int64()),
                        ("locale", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    products = _catalogue()
    db = lancedb.connect(str(tmp_path_factory.mktemp("filters") / "db"))
    tbl = db.create_table("products", products)
    return products, CatalogueColumns.from_table(products), tbl


def _sql_ids(tbl, sql) -> set[str]:
    query = tbl.search()
    if sql is not None:
        query = query.where(sql)
    return set(query.select(["product_id"]).limit(10_000).to_arrow()["product_id"].to_pylist())


names = st.sampled_from([b.strip() or "x" for b in BRANDS] + [c.upper() for c in LEVELS] + LEVELS + ["nope", "  Nike "])
filters_st = st.builds(
    SearchFilters,
    brand=st.none() | st.lists(names, max_size=3),
    category=st.none() | st.lists(names, max_size=3),
    price=st.none() | st.tuples(st.none() | st.sampled_from([0.0, 9.99, 10.0, 20.5]),
                                st.none() | st.sampled_from([10.0, 20.5, 50.0, 1e6, math.inf])
                                ).filter(lambda t: None in t or t[0] <= t[1]).map(lambda t: PriceRange(min=t[0], max=t[1])),
    in_stock=st.none() | st.booleans(),
    locale=st.none() | st.sampled_from(["us", "US ", "de", "en-gb", "fr"]),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filters=filters_st)
def test_mask_sql_and_row_predicate_select_the_same_products(catalogue, filters):
    products, cols, tbl = catalogue
    by_mask = cols.allowed_ids(filters)
    by_rows = {r["product_id"] for r in products.to_pylist() if row_matches(filters, r)}
    assert by_mask == by_rows
    assert _sql_ids(tbl, filter_sql(filters)) == by_mask


def test_semantics_on_known_rows(catalogue):
    products, cols, tbl = catalogue
    rows = {r["product_id"]: r for r in products.to_pylist()}

    def ids(f: SearchFilters) -> set[str]:
        got = cols.allowed_ids(f)
        assert _sql_ids(tbl, filter_sql(f)) == got
        return got

    nike = ids(SearchFilters(brand="NIKE"))
    assert nike and all(rows[p]["brand"].lower() == "nike" for p in nike)  # "NIKE " (trailing space) is not Nike
    shoes = ids(SearchFilters(category=["running shoes"]))
    assert shoes == {p for p, r in rows.items() if "Running Shoes" in r["category_path"]}
    priced = ids(SearchFilters(price=PriceRange(min=10, max=20.5)))
    assert priced == {p for p, r in rows.items() if r["price"] is not None and 10 <= r["price"] <= 20.5}
    assert any(rows[p]["price"] == 10.0 for p in priced) and any(rows[p]["price"] == 20.5 for p in priced)
    stocked = ids(SearchFilters(in_stock=True))
    assert stocked == {p for p, r in rows.items() if r["stock"] is None or r["stock"] > 0}
    assert ids(SearchFilters(in_stock=False)) == set(rows)  # false constrains nothing
    assert ids(SearchFilters(brand=[], category=["  "])) == set(rows)  # an unticked facet constrains nothing
    assert ids(SearchFilters(locale="en-gb")) == {p for p, r in rows.items() if r["locale"] == "en-GB"}
    assert ids(SearchFilters(category=["100%_cotton"])) == {p for p, r in rows.items() if "100%_Cotton" in r["category_path"]}
    assert filter_sql(None) is None and filter_sql(SearchFilters()) is None
    assert cols.mask(None).all() and len(cols) == products.num_rows


def test_nan_and_null_prices_fail_any_price_bound(catalogue):
    products, cols, tbl = catalogue
    unknown = {r["product_id"] for r in products.to_pylist() if r["price"] is None or math.isnan(r["price"])}
    assert unknown
    for f in (SearchFilters(price=PriceRange(min=0)), SearchFilters(price=PriceRange(max=math.inf))):
        assert not unknown & cols.allowed_ids(f)
        assert not unknown & _sql_ids(tbl, filter_sql(f))


def test_sql_prefilters_full_text_search(catalogue):
    products, cols, tbl = catalogue
    tbl.create_fts_index("title", replace=True)
    f = SearchFilters(category=["clothing"], in_stock=True)
    got = tbl.search("shoe", query_type="fts").where(filter_sql(f), prefilter=True).limit(1000).to_arrow()
    want = {r["product_id"] for r in products.to_pylist() if "shoe" in r["title"].split()} & cols.allowed_ids(f)
    assert set(got["product_id"].to_pylist()) == want and want


def test_predicate_checks_by_id_and_rejects_unknown_products(catalogue):
    products, cols, _ = catalogue
    f = SearchFilters(brand="hp")
    ok = cols.predicate(f)
    rows = products.to_pylist()
    assert {r["product_id"] for r in rows if ok(r)} == cols.allowed_ids(f)
    assert not ok({"product_id": "P-not-in-catalogue", "brand": "HP"})


def test_mask_on_the_demo_catalogue_matches_row_predicate():
    cat = make_catalogue(2000, 7)
    rows = [json.loads(line) for line in cat.lines[:2000]]
    for r in rows:
        r["attributes"] = json.dumps(r["attributes"])
    cols = CatalogueColumns.from_table(pa.Table.from_pylist(rows))
    f = SearchFilters(brand=["sony", "Apple"], category="electronics", price=PriceRange(max=500), in_stock=True)
    want = {r["product_id"] for r in rows if row_matches(f, r)}
    assert want and cols.allowed_ids(f) == want


@pytest.mark.parametrize("text, expected", [
    ("under 50", (None, 50)), ("below $30", (None, 30)), ("less than 25 dollars", (None, 25)), ("up to 40", (None, 40)),
    ("between 20 and 40", (20, 40)), ("$20-$40", (20, 40)), ("20 to 40", (20, 40)), ("over 100", (100, None)),
    ("above 80", (80, None)), ("more than 60", (60, None)), ("from 20", (20, None)), ("from $20 to $40", (20, 40)),
    ("20 \u2013 40", (20, 40)), ("between 90 and 45", (45, 90)), ("under $1,200", (None, 1200)), ("1.5k and up", (1500, None)),
    ("50+", (50, None)), ("no more than 50", (None, 50)), ("no less than 20", (20, None)), ("50 or less", (None, 50)),
    ("at most 99.99", (None, 99.99)), ("under 50 and over 20", (20, 50)), ("Under $500", (None, 500)),
    ("$50", None), ("around 50", None), ("cheap", None), ("over 50 under 20", None), ("1 2 3", None),
])
def test_price_phrases(text, expected):
    assert parse_price(text) == (None if expected is None else tuple(None if v is None else float(v) for v in expected))


def test_every_generated_price_phrase_parses_to_its_gold_maximum():
    queries = make_queries(600, 11, build_vocab(11))
    spans = [(s["text"], q.meta["price_max"]) for q in queries for s in q.spans if s["type"] == "price_range"]
    assert len(spans) > 20
    for text, price_max in spans:
        lo, hi = parse_price(text)
        assert hi == price_max, text
        assert lo is None or lo < hi


def test_understanding_price_brand_boost_and_notes():
    ents = [{"start": 0, "end": 4, "label": "brand", "text": "Nike"},
            {"start": 18, "end": 26, "label": "price_range", "text": "under $80"},
            {"start": 27, "end": 30, "label": "brand", "text": "Acme"}]
    eff, boosts, applied = understanding_filters(ents, None, {"Nike", "Adidas"})
    assert eff.price == PriceRange(max=80) and eff.brand is None
    assert boosts == {"brand": ["nike"]}
    assert "price_range 'under $80' -> price.max 80" in applied
    assert any("'Acme'" in a and "not a catalogue brand" in a for a in applied)


def test_understanding_brand_filter_policy_and_columns_as_brands(catalogue):
    _, cols, _ = catalogue
    ents = [{"label": "brand", "text": "LEVI'S"}, {"label": "brand", "text": "hp"}]
    eff, boosts, applied = understanding_filters(ents, SearchFilters(in_stock=True), cols, brand_policy="filter")
    assert eff.brand == ["levi's", "hp"] and eff.in_stock is True and boosts == {}
    assert cols.allowed_ids(eff) and cols.allowed_ids(eff) == cols.allowed_ids(SearchFilters(brand=["HP", "Levi's"], in_stock=True))
    eff, boosts, applied = understanding_filters(ents, None, cols, brand_policy="off", price_policy="off")
    assert eff.is_empty() and boosts == {} and applied == []


def test_request_filters_win_over_derived_ones():
    ents = [{"label": "brand", "text": "nike"}, {"label": "price", "text": "over 100"}]
    request = SearchFilters(brand=["adidas"], price=PriceRange(max=60))
    eff, boosts, applied = understanding_filters(ents, request, {"nike", "adidas"}, brand_policy="filter")
    assert eff.brand == ["adidas"] and eff.price == PriceRange(max=60) and boosts == {}
    assert any("request's price filter wins" in a for a in applied)
    assert any("request's brand filter wins" in a for a in applied)
    assert request == SearchFilters(brand=["adidas"], price=PriceRange(max=60))  # the caller's object untouched


def test_unparseable_and_contradicting_prices_give_no_filter():
    eff, _, applied = understanding_filters([{"label": "price_range", "text": "cheap"}], None, set())
    assert eff.price is None and applied == ["price_range 'cheap' -> not understood as a price; no filter"]
    ents = [{"label": "price_range", "text": "over 200"}, {"label": "price_range", "text": "under 50"}]
    eff, _, applied = understanding_filters(ents, None, set())
    assert eff.price is None and any("contradict" in a for a in applied)
    ents = [{"label": "price_range", "text": "over 20"}, {"label": "price_range", "text": "under 50"}]
    assert understanding_filters(ents, None, set())[0].price == PriceRange(min=20, max=50)
