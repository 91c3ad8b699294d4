"""Build query suggestions: candidate completions with a popularity score, and per-user affinity.

Pure functions over plain rows (no Ray, no store): `jobs.suggest` reads the tables and writes
what `build_suggestions` returns; `ray_app.search.suggest.SuggestIndex` answers prefixes from it.

Popularity of a logged query: SEARCH_WEIGHT per distinct search (a (user, session) pair that
logged events for it; its impressions count once, as the search itself, so a results page of
20 products is not worth 20) plus ENGAGEMENT weights per click (2), add-to-cart (3) and purchase
(5). Catalogue vocabulary (brands, every category level, product lines) is worth one per product
it covers plus half the engagement on those products. `score` is log1p(popularity); rows with
the same normalised text are merged (popularity summed, the larger source names the kind).
Logged queries are suggested to others only when at least `min_query_users` distinct users
searched them and they hold no run of more than `max_digit_run` digits (order, phone or postal
numbers) and no "@": a completion must never reveal one shopper's search.
"""
from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from typing import Any, Iterable

import pyarrow as pa

from ray_app.text import normalize_text

SEARCH_WEIGHT = 1.0
ENGAGEMENT: dict[str, float] = {"click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}  # impressions: 0
CATALOGUE_ENGAGEMENT_SHARE = 0.5
KINDS: tuple[str, ...] = ("query", "brand", "category", "product_line")  # also the tie order of a merge
SUGGESTION_SCHEMA = pa.schema([("text", pa.string()), ("kind", pa.string()), ("score", pa.float64()),
                               ("popularity", pa.float64()), ("brand", pa.string()), ("category", pa.string())])
AFFINITY_SCHEMA = pa.schema([("user_id", pa.string()), ("kind", pa.string()), ("value", pa.string()),
                             ("weight", pa.float64())])


def normalize_suggestion(text: str) -> str:
    """Lowercase (casefold), NFKC, control characters dropped, whitespace collapsed and trimmed."""
    return normalize_text(normalize_text(text or "").casefold())


def _stem(token: str) -> str:
    # "laptop" in a query is about the category "laptops": compare words without a plural s
    return token[:-1] if len(token) > 3 and token.endswith("s") and not token.endswith("ss") else token


class _Phrases:
    """Finds the longest known phrase (brand or category name) inside a text, word by word."""

    def __init__(self, names: Iterable[str], stem: bool):
        self.stem = stem
        self.by_first: dict[str, list[tuple[tuple[str, ...], str]]] = defaultdict(list)
        for name in sorted(set(names)):
            words = tuple(self._key(name.split()))
            if words:
                self.by_first[words[0]].append((words, name))
        for options in self.by_first.values():
            options.sort(key=lambda o: (-len(o[0]), o[1]))

    def _key(self, words: list[str]) -> list[str]:
        return [_stem(w) for w in words] if self.stem else words

    def find(self, text: str) -> str:
        words = self._key(text.split())
        best: tuple[int, str] = (0, "")
        for i, w in enumerate(words):
            for phrase, name in self.by_first.get(w, ()):
                if len(phrase) > best[0] and tuple(words[i:i + len(phrase)]) == phrase:
                    best = (len(phrase), name)
                    break  # options are longest first
        return best[1]


def _query_rows(queries: list[dict[str, Any]], events: list[dict[str, Any]], brands: _Phrases,
                categories: _Phrases, min_query_users: int, max_digit_run: int) -> tuple[list[tuple], Counter]:
    text_of = {q["query_id"]: normalize_suggestion(q.get("text") or "") for q in queries}
    searches: dict[str, set] = defaultdict(set)
    users: dict[str, set] = defaultdict(set)
    engagement: Counter = Counter()
    for e in events:
        text = text_of.get(e.get("query_id") or "")
        if not text:
            continue
        searches[text].add((e.get("user_id") or "", e.get("session_id") or ""))
        users[text].add(e.get("user_id") or "")
        engagement[text] += ENGAGEMENT.get(e.get("event_type") or "", 0.0)
    digits = re.compile(r"\d{%d,}" % (max_digit_run + 1))
    rows, dropped = [], Counter()
    for text in sorted(searches):
        if len(users[text] - {""}) < min_query_users:
            dropped["few_users"] += 1
        elif digits.search(text) or "@" in text:
            dropped["identifying"] += 1
        else:
            rows.append((text, "query", SEARCH_WEIGHT * len(searches[text]) + engagement[text],
                         brands.find(text), categories.find(text)))
    return rows, dropped


def _catalogue_rows(products: list[dict[str, Any]], engagement: dict[str, float],
                    min_line_products: int) -> list[tuple]:
    per: dict[tuple[str, str], dict[str, Any]] = {}

    def add(text: str, kind: str, pid: str, brand: str, category: str) -> None:
        if not text:
            return
        entry = per.setdefault((text, kind), {"products": set(), "brand": brand, "categories": Counter()})
        entry["products"].add(pid)
        if category:
            entry["categories"][category] += 1

    for p in products:
        pid, brand = p["product_id"], normalize_suggestion(p.get("brand") or "")
        path = [c for c in (normalize_suggestion(c) for c in p.get("category_path") or []) if c]
        leaf = path[-1] if path else ""
        add(brand, "brand", pid, brand, "")
        for level in path:
            add(level, "category", pid, "", level)
        if brand and leaf:
            add(f"{brand} {leaf}", "product_line", pid, brand, leaf)
        title = normalize_suggestion(p.get("title") or "")
        if brand and title.startswith(brand + " "):  # the model line: the brand and the next one or two words
            rest = title[len(brand) + 1:].split()
            for n in (1, 2):
                if len(rest) >= n:
                    add(" ".join([brand, *rest[:n]]), "product_line", pid, brand, leaf)
    rows = []
    for (text, kind), entry in sorted(per.items()):
        if kind == "product_line" and len(entry["products"]) < min_line_products:
            continue
        category = min(entry["categories"].items(), key=lambda kv: (-kv[1], kv[0]))[0] if entry["categories"] else ""
        popularity = len(entry["products"]) + CATALOGUE_ENGAGEMENT_SHARE * sum(
            engagement.get(pid, 0.0) for pid in entry["products"])
        rows.append((text, kind, popularity, entry["brand"], category))
    return rows


def _merge(rows: list[tuple]) -> pa.Table:
    """One row per text: popularity summed, kind and aboutness from the largest source."""
    by_text: dict[str, list[tuple]] = defaultdict(list)
    for row in rows:
        by_text[row[0]].append(row)
    out = []
    for text, group in by_text.items():
        group.sort(key=lambda r: (-r[2], KINDS.index(r[1])))
        popularity = sum(r[2] for r in group)
        brand = next((r[3] for r in group if r[3]), "")
        category = next((r[4] for r in group if r[4]), "")
        out.append({"text": text, "kind": group[0][1], "score": round(math.log1p(popularity), 6),
                    "popularity": round(popularity, 6), "brand": brand, "category": category})
    out.sort(key=lambda r: (-r["score"], r["text"]))
    return pa.Table.from_pylist(out, schema=SUGGESTION_SCHEMA)


CATALOGUE_USER = "*catalogue*"  # the affinity table's rows that belong to no user: each leaf category's median price
PRICE_KIND, MEDIAN_KIND = "price", "median_price"  # a user's price level: mean log(price / leaf median) of what they engaged with


def _leaf(path: list[str]) -> str:
    return path[-1] if path else ""


def product_about(products: Iterable[dict[str, Any]]) -> dict[str, tuple[str, list[str]]]:
    """product_id -> (normalised brand, normalised category levels): what suggestions and affinity match on."""
    return {p["product_id"]: (normalize_suggestion(p.get("brand") or ""),
                              [c for c in (normalize_suggestion(c) for c in p.get("category_path") or []) if c])
            for p in products}


def user_affinity(events: list[dict[str, Any]], products: list[dict[str, Any]], top: int) -> pa.Table:
    """Per user: brand and category weights from engagement (impressions say nothing of taste), max 1;
    for products with a `price`, also the user's price level (kind `price`: the engagement-weighted mean
    of log(price / median price of the product's leaf category)) and, under CATALOGUE_USER, each leaf's median."""
    about = product_about(products)
    prices = {p["product_id"]: p.get("price") for p in products if p.get("price")}
    weights: dict[str, Counter] = defaultdict(Counter)
    level: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    medians: dict[str, float] = {}
    if prices:
        by_leaf: dict[str, list[float]] = defaultdict(list)
        for pid, price in prices.items():
            if price and price > 0 and pid in about:
                by_leaf[_leaf(about[pid][1])].append(float(price))
        medians = {leaf: float(statistics.median(v)) for leaf, v in by_leaf.items() if leaf}
    for e in events:
        user, w = e.get("user_id") or "", ENGAGEMENT.get(e.get("event_type") or "", 0.0)
        if not user or not w or e.get("product_id") not in about:
            continue
        brand, path = about[e["product_id"]]
        if brand:
            weights[user][("brand", brand)] += w
        for lvl in path:
            weights[user][("category", lvl)] += w
        price, median = (prices or {}).get(e["product_id"]), medians.get(_leaf(path))
        if price and price > 0 and median:
            level[user][0] += w * math.log(float(price) / median)
            level[user][1] += w
    rows = []
    for user in sorted(weights):
        for kind in ("brand", "category"):
            items = sorted(((v, w) for (k, v), w in weights[user].items() if k == kind), key=lambda x: (-x[1], x[0]))
            if not items:
                continue
            peak = items[0][1]
            rows.extend({"user_id": user, "kind": kind, "value": v, "weight": round(w / peak, 6)} for v, w in items[:top])
        if level[user][1] > 0:
            rows.append({"user_id": user, "kind": PRICE_KIND, "value": "log_ratio", "weight": round(level[user][0] / level[user][1], 6)})
    rows.extend({"user_id": CATALOGUE_USER, "kind": MEDIAN_KIND, "value": leaf, "weight": round(m, 4)} for leaf, m in sorted(medians.items()))
    return pa.Table.from_pylist(rows, schema=AFFINITY_SCHEMA)


def build_suggestions(queries: Iterable[dict[str, Any]], events: Iterable[dict[str, Any]],
                      products: Iterable[dict[str, Any]], min_query_users: int = 2, max_digit_run: int = 4,
                      min_line_products: int = 2, affinity_top: int = 5) -> tuple[pa.Table, pa.Table]:
    """(suggestions, affinity) tables from query, event and product rows; deterministic for the same rows.

    Dropped query counts are in the suggestions schema metadata (b"dropped_few_users", b"dropped_identifying").
    """
    queries, events, products = list(queries), list(events), list(products)
    about = product_about(products)
    brands = _Phrases((b for b, _ in about.values() if b), stem=False)
    categories = _Phrases((c for _, path in about.values() for c in path), stem=True)
    engagement: Counter = Counter()
    for e in events:
        engagement[e.get("product_id") or ""] += ENGAGEMENT.get(e.get("event_type") or "", 0.0)
    query_rows, dropped = _query_rows(queries, events, brands, categories, min_query_users, max_digit_run)
    table = _merge(query_rows + _catalogue_rows(products, engagement, min_line_products))
    table = table.replace_schema_metadata({f"dropped_{k}": str(dropped.get(k, 0)) for k in ("few_users", "identifying")})
    return table, user_affinity(events, products, affinity_top)

