"""Query suggestions: building completions and affinity from rows, and the prefix index (no Ray)."""
from __future__ import annotations

import math
import random

import pyarrow as pa
import pytest

from ray_app.search.suggest import INFIX_FACTOR, MAX_BOOST, SuggestIndex, build_suggestions
from ray_app.search.suggest_build import ENGAGEMENT, SEARCH_WEIGHT

pytestmark = pytest.mark.unit

PRODUCTS = [
    {"product_id": "p1", "title": "Nike Pegasus 40 Running Shoes", "brand": "Nike", "category_path": ["Shoes", "Running Shoes"]},
    {"product_id": "p2", "title": "Nike Pegasus Trail Running Shoes", "brand": "Nike", "category_path": ["Shoes", "Running Shoes"]},
    {"product_id": "p3", "title": "Sony WH-1000 Headphones", "brand": "Sony", "category_path": ["Electronics", "Headphones"]},
    {"product_id": "p4", "title": "Bose QC Headphones", "brand": "Bose", "category_path": ["Electronics", "Headphones"]},
]


def event(kind: str, user: str, query: str, product: str = "p1", session: str = "") -> dict:
    return {"event_type": kind, "user_id": user, "session_id": session or f"s-{user}", "query_id": query,
            "product_id": product, "timestamp": None}


def rows_of(table: pa.Table) -> dict[str, dict]:
    return {r["text"]: r for r in table.to_pylist()}


def index_of(rows: list[tuple], affinity: list[tuple] = ()) -> SuggestIndex:
    """An index from (text, score, kind, brand, category) and (user, kind, value, weight) tuples."""
    suggestions = pa.Table.from_pylist([dict(zip(("text", "score", "kind", "brand", "category"), r)) for r in rows])
    aff = pa.Table.from_pylist([dict(zip(("user_id", "kind", "value", "weight"), r)) for r in affinity],
                               schema=pa.schema([("user_id", pa.string()), ("kind", pa.string()),
                                                 ("value", pa.string()), ("weight", pa.float64())]))
    return SuggestIndex.from_tables(suggestions, aff)


def texts(results: list[dict]) -> list[str]:
    return [r["text"] for r in results]


def test_logged_queries_weighted_normalised_and_deduplicated():
    queries = [{"query_id": "q1", "text": "Running  Shoes"}, {"query_id": "q2", "text": "ｒｕｎｎｉｎｇ shoes\t"},
               {"query_id": "q3", "text": "headphones"}, {"query_id": "q4", "text": "bose"}]
    events = ([event("impression", u, "q1") for u in ("a", "b")] + [event("click", "a", "q1")]
              + [event("impression", "c", "q2"), event("purchase", "c", "q2")]
              + [event("impression", u, "q3", "p3") for u in ("a", "b", "c", "d")]
              + [event("impression", u, "q4", "p4") for u in ("a", "b")] + [event("add_to_cart", "a", "q4", "p4")])
    table, _ = build_suggestions(queries, events, PRODUCTS)
    rows = rows_of(table)
    shoes = rows["running shoes"]  # q1 and q2 are one text: 3 searches, a click and a purchase
    catalogue_shoes = 2 + 0.5 * (ENGAGEMENT["click"] + ENGAGEMENT["purchase"])  # the category covers p1, p2
    assert shoes["kind"] == "query" and shoes["category"] == "running shoes"
    assert shoes["popularity"] == pytest.approx(3 * SEARCH_WEIGHT + ENGAGEMENT["click"] + ENGAGEMENT["purchase"]
                                                + catalogue_shoes)
    assert shoes["score"] == pytest.approx(math.log1p(shoes["popularity"]), abs=1e-6)
    assert rows["headphones"]["kind"] == "query"  # 4 searches outweigh the 2-product category
    assert rows["bose"]["kind"] == "query" and rows["bose"]["brand"] == "bose"
    assert [t for t in rows if "ｒ" in t or "  " in t or t != t.lower()] == []
    assert table.column("score").to_pylist() == sorted(table.column("score").to_pylist(), reverse=True)


def test_purchases_outweigh_clicks_outweigh_impressions():
    queries = [{"query_id": f"q{i}", "text": t} for i, t in enumerate(["alpha", "beta", "gamma"])]
    events = [event("impression", u, q) for u in ("a", "b") for q in ("q0", "q1", "q2")]
    events += [event("click", "a", "q1"), event("purchase", "a", "q2")]
    rows = rows_of(build_suggestions(queries, events, [])[0])
    assert rows["gamma"]["score"] > rows["beta"]["score"] > rows["alpha"]["score"]
    assert rows["alpha"]["popularity"] == 2 * SEARCH_WEIGHT  # ten impressions of one search count once
    events += [event("impression", "a", "q0", f"p{i}") for i in range(10)]
    assert rows_of(build_suggestions(queries, events, [])[0])["alpha"]["popularity"] == 2 * SEARCH_WEIGHT


def test_private_queries_are_never_suggested():
    queries = [{"query_id": "q1", "text": "track order 8787711"}, {"query_id": "q2", "text": "my rare query"},
               {"query_id": "q3", "text": "iphone 15"}, {"query_id": "q4", "text": "me@example.com"}]
    events = [event("impression", u, q) for u in ("a", "b") for q in ("q1", "q3", "q4")] + [event("click", "a", "q2")]
    table, _ = build_suggestions(queries, events, [])
    assert set(rows_of(table)) == {"iphone 15"}
    assert table.schema.metadata == {b"dropped_few_users": b"1", b"dropped_identifying": b"2"}
    assert "my rare query" in rows_of(build_suggestions(queries, events, [], min_query_users=1)[0])


def test_catalogue_vocabulary_kinds_and_aboutness():
    rows = rows_of(build_suggestions([], [], PRODUCTS)[0])
    assert {t: r["kind"] for t, r in rows.items()} == {
        "nike": "brand", "sony": "brand", "bose": "brand", "shoes": "category", "running shoes": "category",
        "electronics": "category", "headphones": "category", "nike running shoes": "product_line",
        "nike pegasus": "product_line"}  # single-product lines (sony headphones, nike pegasus 40) are left out
    assert (rows["nike pegasus"]["brand"], rows["nike pegasus"]["category"]) == ("nike", "running shoes")
    assert (rows["nike"]["brand"], rows["nike"]["category"]) == ("nike", "")
    assert rows["shoes"]["popularity"] == 2 and rows["electronics"]["popularity"] == 2
    assert "sony headphones" in rows_of(build_suggestions([], [], PRODUCTS, min_line_products=1)[0])


def test_affinity_from_engagement_only_normalised_per_user():
    events = [event("purchase", "u1", "", "p3"), event("click", "u1", "", "p1"), event("impression", "u1", "", "p4"),
              event("impression", "u2", "", "p4")]
    aff = build_suggestions([], events, PRODUCTS)[1].to_pylist()
    got = {(r["user_id"], r["kind"], r["value"]): r["weight"] for r in aff}
    ratio = ENGAGEMENT["click"] / ENGAGEMENT["purchase"]
    assert got == {("u1", "brand", "sony"): 1.0, ("u1", "brand", "nike"): ratio, ("u1", "category", "electronics"): 1.0,
                   ("u1", "category", "headphones"): 1.0, ("u1", "category", "shoes"): ratio,
                   ("u1", "category", "running shoes"): ratio}


ROWS = [("nike running shoes", 5.0, "product_line", "nike", "running shoes"), ("running shoes", 4.5, "category", "", "running shoes"),
        ("nike", 3.0, "brand", "nike", ""), ("nikes outlet", 2.5, "query", "", ""), ("bose headphones", 3.0, "product_line", "bose", "headphones"),
        ("sony headphones", 2.5, "product_line", "sony", "headphones"), ("rose garden", 9.0, "query", "", ""),
        ("bose", 1.0, "brand", "bose", ""), ("alpha one", 1.0, "query", "", ""), ("alpha two", 1.0, "query", "", "")]


def test_prefixes_match_whole_words_in_order_at_word_boundaries():
    index = index_of(ROWS)
    assert texts(index.complete("nike run")) == ["nike running shoes"]
    assert texts(index.complete("Run")) == ["running shoes", "nike running shoes"]  # at the start before inside
    assert set(texts(index.complete("nike"))) == {"nike", "nike running shoes", "nikes outlet"}
    # a complete word: nikes only after the exact matches, as the one-edit spelling of the word nike
    assert texts(index.complete("nike ")) == ["nike running shoes", "nike", "nikes outlet"]
    assert texts(index.complete("un")) == texts(index.complete("ik")) == []  # inside a word is no boundary
    assert texts(index.complete("shoes running")) == []  # words in order
    assert texts(index.complete("running shoes nike")) == []


def test_one_typo_in_the_last_word():
    index = index_of(ROWS)
    for typed in ("nuke", "nkie", "niek", "nke", "niike", "nikee"):  # substitution, transpositions, insertion, deletions
        assert "nike" in texts(index.complete(typed)), typed
    assert "nike running shoes" in texts(index.complete("nike runnign"))  # the last word only
    assert "nike running shoes" not in texts(index.complete("nkie running"))  # not the completed ones
    assert texts(index.complete("xyke")) == []  # two edits
    assert texts(index.complete("nu")) == []  # under three characters: no typo tolerance
    assert texts(index.complete("nkie ")) == ["nike running shoes", "nike"]  # a whole word one edit away


def test_exact_prefix_ranks_above_typo_and_popularity_orders_the_rest():
    index = index_of(ROWS)
    results = index.complete("bose")
    assert texts(results) == ["bose headphones", "bose", "rose garden"]  # rose scores 9 but needs an edit
    assert [r["kind"] for r in results] == ["product_line", "brand", "query"]
    assert texts(index.complete("alpha")) == ["alpha one", "alpha two"]  # a tie broken by text
    assert texts(index.complete("head")) == ["bose headphones", "sony headphones"]
    assert index.complete("head")[0]["score"] == pytest.approx(3.0 * INFIX_FACTOR)


def test_personalisation_boosts_a_users_brand_only_for_that_user():
    index = index_of(ROWS, [("u-sony", "brand", "sony", 1.0), ("u-other", "brand", "nike", 1.0)])
    plain = index.complete("head")
    mine = index.complete("head", user_id="u-sony")
    assert texts(plain) == ["bose headphones", "sony headphones"] and not any(r["personalised"] for r in plain)
    assert texts(mine) == ["sony headphones", "bose headphones"]
    assert [r["personalised"] for r in mine] == [True, False]
    assert mine[0]["score"] == pytest.approx(2.5 * INFIX_FACTOR * (1 + MAX_BOOST))
    assert index.complete("head", user_id="u-other") == plain == index.complete("head", user_id="nobody")


def test_empty_prefix_and_k():
    index = index_of(ROWS)
    assert index.complete("") == index.complete("   ") == index.complete("\x00") == index.complete("nike", k=0) == []
    assert len(index.complete("n", k=1)) == 1


def test_deterministic_whatever_the_row_order():
    rows = list(ROWS)
    random.Random(3).shuffle(rows)
    assert [index_of(rows).complete(p) for p in ("n", "bos", "alpha")] == [index_of(ROWS).complete(p) for p in ("n", "bos", "alpha")]


def _osa(a: str, b: str) -> int:
    """Optimal string alignment distance (Damerau-Levenshtein with adjacent transpositions)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _reference(rows, affinity, prefix, user, k):
    """Scan every completion: what complete() must return, computed the slow, obvious way."""
    whole, typed = prefix.endswith(" "), prefix.split()
    head, last = typed[:-1], typed[-1]
    weights = {(kind, v): w for u, kind, v, w in affinity if u == user}
    tiers: dict[int, list] = {0: [], 1: []}
    for text, score, kind, brand, category in rows:
        words, starts = text.split(), {}
        for i in range(len(words) - len(head)):
            if words[i:i + len(head)] != head:
                continue
            word = words[i + len(head)]
            options = [word] if whole else [word[:n] for n in range(1, len(word) + 1)]
            tier = 0 if last in options else 1 if len(last) >= 3 and any(
                len(o) >= 3 and _osa(last, o) == 1 for o in options) else None
            if tier is not None:
                starts[tier] = starts.get(tier, False) or i == 0
        tier = min(starts, default=None)
        if tier is None:
            continue
        boost = 1 + MAX_BOOST * max(weights.get(("brand", brand), 0.0), weights.get(("category", category), 0.0))
        final = score * boost * (1.0 if starts[tier] else INFIX_FACTOR)
        tiers[tier].append((-final, text, boost > 1))
    ranked = sorted(tiers[0]) + sorted(tiers[1])
    return [(t, round(-s, 6), p) for s, t, p in ranked[:k]]


def test_matches_a_full_scan_on_random_completions():
    rng = random.Random(11)
    words = ["".join(rng.choice("abcd") for _ in range(rng.randint(2, 5))) for _ in range(40)]
    brands, cats = words[:4], words[4:8]
    rows = {}
    while len(rows) < 400:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
        rows[text] = (text, float(rng.randint(1, 30)), "query", rng.choice(brands + [""]), rng.choice(cats + [""]))
    affinity = [("u1", "brand", brands[0], 1.0), ("u1", "category", cats[1], 0.4), ("u2", "brand", brands[2], 0.7)]
    index = index_of(list(rows.values()), affinity)
    for _ in range(300):
        word = rng.choice(words)
        prefix = word[:rng.randint(1, len(word))]
        if rng.random() < 0.5 and len(prefix) >= 3:
            i = rng.randrange(len(prefix))
            prefix = prefix[:i] + rng.choice("abcde") + prefix[i + 1:]
        if rng.random() < 0.3:
            prefix = rng.choice(words) + " " + prefix
        prefix += " " if rng.random() < 0.2 else ""
        user, k = rng.choice([None, "u1", "u2"]), rng.choice([1, 5, 10])
        got = [(r["text"], r["score"], r["personalised"]) for r in index.complete(prefix, user, k)]
        want = _reference(list(rows.values()), affinity, prefix, user, k)
        assert got == want, (prefix, user, k)
