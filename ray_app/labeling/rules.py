"""Rule labeller: intent and entity labels from lexicons built out of the catalogue itself.

Lexicons come from the shop's own products (brands, category names, colours it sells), so
the rules follow the catalogue without hand-maintained lists. Spans are matched on token
boundaries, case-insensitively, longest non-overlapping match first (docs/labelling.md).
The rules know the built-in taxonomy; under a store's own taxonomy they write only what it
declares (spans of declared types, intents it declares, `out_of_scope` as its out-of-scope class).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime
from typing import Any, Iterable, Optional

import pyarrow as pa

from ray_app.ids import label_id
from schemas.taxonomy import Taxonomy

RULE_LABELLER = "rules"  # key part of rule label ids: one rule label per (query, task)
TOKEN_RE = re.compile(r"\w+(?:['’&.\-]\w+)*")
_WS = re.compile(r"\s+")
STOPWORDS = frozenset(
    "a an and the of for in on at to with by from or is are be it this that my me i you your our "
    "new best top all any some one no not what where how when who can do does".split())
COLOURS = frozenset(
    "black white grey gray silver gold red maroon burgundy pink orange yellow green olive lime teal "
    "turquoise blue navy purple violet lavender brown tan beige cream ivory khaki charcoal bronze "
    "copper multicolor multicolour clear transparent".split()
) | {"rose gold", "navy blue", "light blue", "dark blue", "sky blue", "dark green", "light grey", "dark grey"}
# Entity-type precedence when two candidates cover the same characters.
TYPE_RANK = {"price_range": 0, "size": 1, "brand": 2, "colour": 3, "category": 4, "product": 5}
SPAN_CONFIDENCE = {"price_range": 0.9, "size": 0.8, "brand": 0.9, "category": 0.85, "product": 0.7, "colour": 0.8}
_NUM = r"\d+(?:[.,/]\d+)?"  # 10, 10.5, 1,299, 1/2
_CUR = r"(?:\s*(?:dollars?|usd|bucks|\$))"
PATTERNS: dict[str, list[str]] = {
    "price_range": [
        rf"(?:under|below|less than|cheaper than|up to|max|maximum|within|over|above|more than|at least)\s+(?:\$\s?|usd\s*)?{_NUM}{_CUR}?",
        rf"between\s+\$?\s?{_NUM}\s+and\s+\$?\s?{_NUM}{_CUR}?",
        rf"\$\s?{_NUM}\s*(?:-|–|to)\s*\$?\s?{_NUM}{_CUR}?",
        rf"{_NUM}\s*(?:-|–|to)\s*{_NUM}{_CUR}",
        rf"\${_NUM}", rf"{_NUM}\s*(?:dollars?|usd|bucks)",
    ],
    "size": [
        # the keyword "size" is a cue, not part of the value: the span is group "v" ("10" in "size 10")
        rf"size\s*:?\s*(?P<v>{_NUM}|xxs|xs|s|m|l|xl|xxl|xxxl|[2-5]xl|small|medium|large|x-large|xx-large)",
        r"(?:xxs|xs|xl|xxl|xxxl|[2-5]xl|x-large|xx-large)",
        r"(?:king|queen|twin|full|california king)\s+size",
        rf"{_NUM}\s*x\s*{_NUM}(?:\s*(?:inch(?:es)?|cm|mm|ft|\"))?",
        rf"{_NUM}\s*-?\s*(?:inch(?:es)?|\"|cm|mm|ft|feet|foot|oz|ounces?|ml|l|litres?|liters?|qt|quarts?|gallons?|gb|tb|kg|lbs?)",
    ],
}
ORDER_WORDS = frozenset("order orders ordered return returns returning returned refund refunds refunded track "
                        "tracking delivery deliveries delivered deliver shipment shipped shipping cancel cancelled "
                        "canceled cancellation exchange invoice receipt parcel arrived damaged".split())
REVIEW_WORDS = frozenset("review reviews reviewed rating ratings rated testimonials opinions".split())
REVIEW_PHRASES = re.compile(r"\b(?:worth it|worth (?:buying|the money)|any good|pros and cons|good or bad|"
                            r"(?:people|customers|users) (?:say|think)|best\b.* (?:19|20)\d\d|"
                            r"is (?:the |this |a |an )?.+ (?:good|reliable|legit|durable))\b", re.I)
PRICE_WORDS = frozenset("cheap cheaper cheapest price prices pricing priced deal deals discount discounts "
                        "discounted sale bargain affordable inexpensive budget coupon coupons clearance vs vs. "
                        "versus compare comparison".split())
BRAND_FILLER = frozenset("store stores official site website shop shopping outlet sale new arrivals arrival "
                         "collection brand online the latest products catalog catalogue".split())
SHOPPING_WORDS = frozenset("buy men mens men's women womens women's kids boys girls baby gift gifts "
                           "pack kit accessories".split())
# Requests for other services: out of scope when no catalogue entity is in the query.
OTHER_SERVICE = re.compile(r"\b(?:weather|forecast|jokes?|timer|alarm|recipes?|translate|directions|flights?|news|"
                           r"music|songs?|play|time is it|how to make|who won|score|movie|movies)\b", re.I)


def lower_same_length(text: str) -> str:
    """Lower-case without changing the length, so offsets in the result index the original."""
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def norm_term(term: str) -> str:
    return _WS.sub(" ", lower_same_length(term).strip())


def term_variants(term: str) -> set[str]:
    """A term plus its punctuation variants ("dr. martens" -> "dr martens", "t-shirt" -> "t shirt")."""
    t = norm_term(term)
    out = {t, re.sub(r"[.'’]", "", t), t.replace("-", " "), t.replace("-", "")}
    return {norm_term(v) for v in out if v.strip()}


def inflections(name: str) -> set[str]:
    """Simple singular/plural forms of a category name (its last word is inflected)."""
    name = norm_term(name)
    head, _, last = name.rpartition(" ")
    forms = {last}
    if last.endswith("ies") and len(last) > 4:
        forms.add(last[:-3] + "y")
    elif re.search(r"(?:ches|shes|sses|xes|zes)$", last):
        forms.add(last[:-2])
    elif last.endswith("s") and not last.endswith("ss") and len(last) > 3:
        forms.add(last[:-1])
    elif not re.search(r"(?:ing|wear|ware)$", last):  # uncountable-ish: clothing, footwear
        if re.search(r"[^aeiou]y$", last):
            forms.add(last[:-1] + "ies")
        elif re.search(r"(?:ch|sh|ss|x|z)$", last):
            forms.add(last + "es")
        else:
            forms.add(last + "s")
    return {(head + " " + f).strip() for f in forms}


def compound_categories(titles: list[str], brands: list[str], categories: set[str], colours: set[str],
                        min_products: int = 3, min_brands: int = 2) -> set[str]:
    """Product types the titles spell as one modifier word + a category name ("rain jacket",
    "gaming laptop"). A modifier counts only if it precedes a single category name in the whole
    catalogue: model names ("Air", "Pro") precede many and are left out."""
    max_len = max((len(c.split()) for c in categories), default=1)
    seen: dict[tuple[str, str], list] = {}  # (modifier, head without plural s) -> [count, brands, surface head]
    heads_of: dict[str, set[str]] = {}
    for title, brand in zip(titles, brands):
        toks = [t.lower() for t in TOKEN_RE.findall(title or "")]
        skip = set(TOKEN_RE.findall((brand or "").lower())) | STOPWORDS | colours
        for j in range(1, len(toks)):
            head = next((h for n in range(max_len, 0, -1) if (h := " ".join(toks[j:j + n])) in categories), None)
            mod = toks[j - 1]
            if head and mod.replace("-", "").isalpha() and mod not in skip:
                key = (mod, head[:-1] if head.endswith("s") else head)
                heads_of.setdefault(mod, set()).add(key[1])
                entry = seen.setdefault(key, [0, set(), head])
                entry[0] += 1
                entry[1].add(brand)
    return {f"{mod} {head}" for (mod, _), (count, who, head) in seen.items()
            if count >= min_products and len(who) >= min_brands and len(heads_of[mod]) == 1}


def build_lexicons(products: pa.Table, max_title_words: int = 50_000) -> dict[str, list[str]]:
    """Brand, category, colour lexicons and the title vocabulary of a products table."""
    cols = set(products.column_names)
    col = lambda name: products.column(name).to_pylist() if name in cols else []  # noqa: E731
    brands = {norm_term(b) for b in col("brand") if b and b.strip()}
    brands = {b for b in brands if len(b) > 1 and b not in STOPWORDS}
    categories: set[str] = set()
    for path in col("category_path"):
        for name in path or []:
            parts = re.split(r"\s*(?:&|,|/|\band\b)\s*", name)
            if len(parts) > 1:
                categories.add(norm_term(name))  # the compound name itself, uninflected
            for part in parts:
                part = norm_term(part)
                if len(part) > 2 and part not in STOPWORDS:
                    categories |= inflections(part)
    seen_colours: set[str] = set()
    for raw in col("attributes"):
        try:
            attrs = json.loads(raw) if raw else {}
        except ValueError:
            continue
        for key, value in (attrs.items() if isinstance(attrs, dict) else ()):
            if str(key).lower() in ("colour", "color") and value:
                value = norm_term(str(value))
                seen_colours |= {value} | set(value.split())
    words: Counter[str] = Counter()
    for title in col("title"):
        toks = [t.lower() for t in TOKEN_RE.findall(title or "")]
        seen_colours |= set(toks) | {" ".join(p) for p in zip(toks, toks[1:])}
        words.update(t for t in set(toks) if len(t) > 2 and t.isalpha() and t not in STOPWORDS)
    colours = COLOURS & seen_colours
    for _ in range(2):  # a second round finds two-word modifiers: "noise" + "cancelling headphones"
        for phrase in compound_categories(col("title"), col("brand"), categories, {w for c in colours for w in c.split()}):
            categories |= inflections(phrase)
    return {
        "brand": sorted(brands), "category": sorted(categories),
        "colour": sorted(colours),
        "title_words": [w for w, _ in words.most_common(max_title_words)],
    }


class RuleMatcher:
    """Compiled lexicons + patterns; `entities` and `intent` are pure functions of the text."""

    def __init__(self, lexicons: dict[str, list[str]]):
        self.terms: dict[str, str] = {}
        for etype in sorted(("brand", "category", "colour", "product"), key=TYPE_RANK.get, reverse=True):
            for term in lexicons.get(etype, []):  # higher-precedence types written last win
                for v in term_variants(term):
                    self.terms[v] = etype
        self.max_tokens = max((len(TOKEN_RE.findall(t)) for t in self.terms), default=1)
        self.title_words = frozenset(lexicons.get("title_words", []))
        self.patterns = [(etype, re.compile(rf"(?<![\w$/.,])(?:{p})(?!\w)", re.I))
                         for etype, pats in PATTERNS.items() for p in pats]

    def entities(self, text: str) -> list[dict[str, Any]]:
        """Longest non-overlapping lexicon/pattern matches as spans {start, end, type, text, rule}."""
        low = lower_same_length(text)
        toks = [(m.start(), m.end()) for m in TOKEN_RE.finditer(low)]
        cands: list[tuple[int, int, str, str]] = []
        for i in range(len(toks)):
            for j in range(min(len(toks), i + self.max_tokens) - 1, i - 1, -1):
                s, e = toks[i][0], toks[j][1]
                etype = self.terms.get(_WS.sub(" ", low[s:e]))
                if etype:
                    cands.append((s, e, etype, f"lexicon:{etype}"))
                    break
        for etype, rx in self.patterns:
            for m in rx.finditer(text):
                s, e = m.span("v") if "v" in rx.groupindex else m.span()
                cands.append((s, e, etype, f"pattern:{etype}"))
        cands.sort(key=lambda c: (-(c[1] - c[0]), c[0], TYPE_RANK[c[2]]))
        taken: list[tuple[int, int, str, str]] = []
        for c in cands:
            if all(c[1] <= t[0] or c[0] >= t[1] for t in taken):
                taken.append(c)
        return [{"start": s, "end": e, "type": t, "text": text[s:e], "rule": r} for s, e, t, r in sorted(taken)]

    def intent(self, text: str, spans: Optional[list[dict[str, Any]]] = None) -> tuple[str, float, str]:
        """(intent, confidence, rule name) by the precedence order of docs/labelling.md."""
        spans = self.entities(text) if spans is None else spans
        words = [w.lower() for w in TOKEN_RE.findall(text)]
        wset = set(words)
        if wset & ORDER_WORDS:
            mine = bool(wset & {"my", "where", "status", "when"})
            return "order_support", 0.9 if mine else 0.75, "intent:order_words"
        if wset & REVIEW_WORDS or REVIEW_PHRASES.search(text):
            return "review_lookup", 0.85, "intent:review_words"
        types = {s["type"] for s in spans}
        if types == {"brand"}:  # only a brand plus navigation words ("nike outlet", "nike sale")
            covered = {w.lower() for s in spans for w in TOKEN_RE.findall(s["text"])}
            rest = [w for w in words if w not in covered]
            if all(w in BRAND_FILLER for w in rest):
                return "brand_query", 0.85 if not rest else 0.8, "intent:brand_only"
        if wset & PRICE_WORDS or "vs." in text.lower() or "price_range" in types:
            return "price_comparison", 0.8, "intent:price_words"
        if not spans and OTHER_SERVICE.search(text):
            return "out_of_scope", 0.6, "intent:other_service"
        if spans:
            return "product_search", 0.8 if "category" in types else 0.7, "intent:catalogue_entity"
        if wset & self.title_words or wset & SHOPPING_WORDS:
            return "product_search", 0.55, "intent:product_words"
        return "out_of_scope", 0.3, "intent:fallback"


def in_taxonomy(intent: str, spans: list[dict[str, Any]], taxonomy: Optional[Taxonomy]) -> tuple[Optional[str], list[dict]]:
    """The rule intent and spans the taxonomy declares (None: no intent label); unchanged without one."""
    if taxonomy is None:
        return intent, spans
    spans = [s for s in spans if s["type"] in taxonomy.entity_types]
    if intent == "out_of_scope":
        return taxonomy.out_of_scope, spans
    return (intent if intent in taxonomy.intents else None), spans


def rule_label_rows(query_id: str, text: str, matcher: RuleMatcher, created_at: datetime,
                    taxonomy: Optional[Taxonomy] = None) -> list[dict[str, Any]]:
    """The rule intent label and (when any span matched) the rule entity label of one query."""
    spans = matcher.entities(text)
    intent, conf, rule = matcher.intent(text, spans)
    intent, spans = in_taxonomy(intent, spans, taxonomy)
    rows = [] if intent is None else [
        dict(label_id=label_id(query_id, "intent", "rule", RULE_LABELLER), target_type="query",
             target_id=query_id, task="intent", value=intent, spans=[], source="rule",
             confidence=conf, annotator=rule, created_at=created_at)]
    if spans:
        rules = ",".join(sorted({s["rule"] for s in spans}))
        conf = round(sum(SPAN_CONFIDENCE[s["type"]] for s in spans) / len(spans), 4)
        rows.append(dict(label_id=label_id(query_id, "entity", "rule", RULE_LABELLER), target_type="query",
                         target_id=query_id, task="entity", value="", source="rule", confidence=conf,
                         spans=[{k: s[k] for k in ("start", "end", "type", "text")} for s in spans],
                         annotator=rules, created_at=created_at))
    return rows


class RuleLabeler:
    """Ray Data callable class: compiles the lexicons once per actor, labels Arrow batches of queries."""

    def __init__(self, lexicons: dict[str, list[str]], created_at: datetime, taxonomy: Optional[dict] = None):
        from ray_app.store import schema_of

        self.matcher = RuleMatcher(lexicons)
        self.created_at = created_at
        self.taxonomy = Taxonomy.model_validate(taxonomy) if taxonomy else None
        self.schema = schema_of("labels")

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for qid, text in zip(batch.column("query_id").to_pylist(), batch.column("text").to_pylist()):
            rows += rule_label_rows(qid, text or "", self.matcher, self.created_at, self.taxonomy)
        return pa.Table.from_pylist(rows, schema=self.schema)


def label_queries_local(queries: Iterable[dict[str, Any]], lexicons: dict[str, list[str]],
                        created_at: datetime, taxonomy: Optional[Taxonomy] = None) -> list[dict[str, Any]]:
    """Driver-side rule labelling (tests, `show`): the same rules without Ray."""
    matcher = RuleMatcher(lexicons)
    return [r for q in queries for r in rule_label_rows(q["query_id"], q["text"] or "", matcher, created_at, taxonomy)]
