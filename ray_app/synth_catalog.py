"""Vocabulary, product catalogue and query templates of the synthetic shop (ray_app/synth.py: the rest).

Why a generator at all: every later stage (ingest, weak labels, training, serving) needs a shop
whose ground truth is known. Products are drawn column-wise with numpy so that 200k+ rows (the
ingest benchmark) take seconds; only the final string formatting is a Python loop.
All vocabulary is ASCII so that lower-casing a query never moves an entity span.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

EPOCH = np.datetime64("2026-01-01T00:00:00", "s")  # fixed "now": outputs never read the clock


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per purpose, so adding draws to one file never shifts another."""
    return np.random.default_rng([seed % 2**64, stream])


@dataclass(frozen=True)
class Category:
    path: tuple[str, ...]
    types: tuple[str, ...]  # product types: in titles and as the category mention of queries
    brands: tuple[str, ...]
    colours: tuple[str, ...]
    sizes: tuple[str, ...]
    size_word: bool  # queries say "size 10" (clothing) rather than "15 inch"
    materials: tuple[str, ...]
    features: tuple[str, ...]
    price: tuple[float, float]  # typical low and high price


CATEGORIES: tuple[Category, ...] = (
    Category(("Clothing", "Shoes", "Running Shoes"), ("running shoes", "trail running shoes", "sneakers"),
             ("Nike", "Adidas", "Asics", "Brooks", "Hoka", "New Balance", "Saucony"),
             ("black", "white", "red", "blue", "grey", "pink", "green"), ("7", "8", "9", "10", "11", "12"), True,
             ("mesh", "knit", "leather"), ("lightweight", "waterproof", "cushioned"), (45, 220)),
    Category(("Electronics", "Computers", "Laptops"), ("laptop", "gaming laptop", "ultrabook"),
             ("Dell", "HP", "Lenovo", "Apple", "Asus", "Acer", "Microsoft"),
             ("silver", "black", "grey", "white"), ("13 inch", "14 inch", "15 inch", "16 inch"), False,
             ("aluminium", "plastic", "magnesium"), ("lightweight", "touchscreen", "refurbished"), (300, 2600)),
    Category(("Electronics", "Mobile Phones", "Smartphones"), ("smartphone", "phone"),
             ("Apple", "Samsung", "Google", "OnePlus", "Motorola", "Xiaomi", "Sony"),
             ("black", "white", "blue", "silver", "green", "pink"), ("64gb", "128gb", "256gb", "512gb"), False,
             ("glass", "aluminium", "plastic"), ("unlocked", "refurbished", "5g"), (150, 1500)),
    Category(("Electronics", "Audio", "Headphones"), ("headphones", "wireless earbuds", "noise cancelling headphones"),
             ("Sony", "Bose", "Sennheiser", "JBL", "Apple", "Beats", "Anker", "Skullcandy"),
             ("black", "white", "blue", "silver", "red"), ("one size",), False,
             ("plastic", "aluminium", "leather"), ("wireless", "bluetooth", "over ear"), (20, 550)),
    Category(("Clothing", "Tops", "T-Shirts"), ("t-shirt", "graphic tee", "polo shirt"),
             ("Uniqlo", "Nike", "Adidas", "Gap", "Hanes", "Levi's", "Champion"),
             ("black", "white", "red", "blue", "grey", "navy", "green", "yellow"), ("xs", "s", "m", "l", "xl", "xxl"), True,
             ("cotton", "polyester", "linen"), ("organic", "slim fit", "oversized"), (8, 60)),
    Category(("Clothing", "Outerwear", "Jackets"), ("rain jacket", "down jacket", "fleece jacket"),
             ("The North Face", "Patagonia", "Columbia", "Arc'teryx", "Helly Hansen", "Marmot"),
             ("black", "navy", "red", "green", "grey", "yellow"), ("xs", "s", "m", "l", "xl"), True,
             ("nylon", "polyester", "gore-tex"), ("waterproof", "insulated", "packable"), (60, 650)),
    Category(("Home & Kitchen", "Kitchen Appliances", "Coffee Makers"), ("coffee maker", "espresso machine", "drip coffee maker"),
             ("Breville", "De'Longhi", "Keurig", "Nespresso", "Cuisinart", "Mr. Coffee", "Philips"),
             ("black", "silver", "white", "red"), ("4 cup", "8 cup", "12 cup"), False,
             ("stainless steel", "plastic", "glass"), ("programmable", "single serve", "with grinder"), (25, 900)),
    Category(("Bags & Luggage", "Backpacks", "Daypacks"), ("backpack", "laptop backpack", "hiking backpack"),
             ("Osprey", "Herschel", "JanSport", "Samsonite", "Deuter", "Fjallraven"),
             ("black", "grey", "navy", "green", "red", "blue"), ("15l", "20l", "25l", "30l"), False,
             ("nylon", "polyester", "canvas"), ("waterproof", "lightweight", "anti theft"), (25, 260)),
)
MODEL_STEMS = ("Glide", "Pulse", "Nova", "Apex", "Stride", "Aero", "Vector", "Summit", "Terra", "Flux",
               "Zen", "Orbit", "Vista", "Edge", "Core", "Spark", "Peak", "Wave", "Drift", "Atlas")
MODEL_TAILS = ("2", "3", "4", "5", "7", "9", "Pro", "Max", "Lite", "Plus", "X", "Air")
MODELS_PER_BRAND = 6
CAT_WEIGHTS = (0.16, 0.12, 0.12, 0.13, 0.15, 0.12, 0.10, 0.10)  # share of products and queries


@dataclass
class Vocab:
    """Flattened, indexable vocabulary: numpy arrays over products refer to these lists by index."""

    brands: list[str]  # global brand list (a brand may sell in several categories)
    colours: list[str]
    sizes: list[str]
    cat_brands: list[np.ndarray]  # per category: global brand ids
    models: list[str]  # global model list; model m belongs to model_cat[m], model_brand[m]
    model_cat: np.ndarray
    model_brand: np.ndarray
    model_block: dict[tuple[int, int], int]  # (category, brand id) -> its first model id


def build_vocab(seed: int) -> Vocab:
    """Model names differ by seed; brands, colours and sizes are fixed."""
    rng = rng_for(seed, 1)
    brands = sorted({b for c in CATEGORIES for b in c.brands})
    colours = sorted({x for c in CATEGORIES for x in c.colours})
    sizes = sorted({x for c in CATEGORIES for x in c.sizes})
    models, mcat, mbrand, block = [], [], [], {}
    for ci, cat in enumerate(CATEGORIES):
        for b in cat.brands:
            block[(ci, brands.index(b))] = len(models)
            stems = rng.choice(len(MODEL_STEMS), MODELS_PER_BRAND, replace=False)
            tails = rng.choice(len(MODEL_TAILS), MODELS_PER_BRAND)
            for s, t in zip(stems, tails):
                models.append(f"{MODEL_STEMS[s]} {MODEL_TAILS[t]}")
                mcat.append(ci)
                mbrand.append(brands.index(b))
    cat_brands = [np.array([brands.index(b) for b in c.brands]) for c in CATEGORIES]
    return Vocab(brands, colours, sizes, cat_brands, models, np.array(mcat), np.array(mbrand), block)


@dataclass
class Catalogue:
    """Column arrays of the catalogue (one entry per unique product) and the JSONL lines."""

    product_ids: list[str]
    cat: np.ndarray
    brand: np.ndarray  # global brand id
    model: np.ndarray  # global model id
    colour: np.ndarray
    size: np.ndarray
    price: np.ndarray  # NaN where the shop left it empty
    stock: np.ndarray
    valid: np.ndarray  # False where the title is empty (ingest quarantines those)
    lines: list[str]  # JSONL lines, duplicates (same id, newer price) appended at the end
    duplicates: int
    empty_titles: int
    median_price: np.ndarray  # per category, what "expensive" is measured against


def _pick(rng: np.random.Generator, cat: np.ndarray, options: list[np.ndarray], skew: float = 0.0) -> np.ndarray:
    """For each row pick one of its category's options (index into options[cat]), Zipf-skewed."""
    out = np.zeros(len(cat), dtype=np.int64)
    for ci, opts in enumerate(options):
        rows = np.flatnonzero(cat == ci)
        w = 1.0 / np.arange(1, len(opts) + 1) ** skew
        out[rows] = opts[rng.choice(len(opts), len(rows), p=w / w.sum())]
    return out


def make_catalogue(n: int, seed: int, vocab: Vocab | None = None, messy: bool = True) -> Catalogue:
    """Draw `n` unique products; with `messy`, ~0.5% re-appear later with a new price, ~0.2% lack a title."""
    vocab = vocab or build_vocab(seed)
    rng = rng_for(seed, 2)
    cat = rng.choice(len(CATEGORIES), n, p=np.array(CAT_WEIGHTS) / sum(CAT_WEIGHTS))
    brand = _pick(rng, cat, vocab.cat_brands, skew=0.8)
    model = np.zeros(n, dtype=np.int64)
    for (c, b), m0 in vocab.model_block.items():
        rows = np.flatnonzero((cat == c) & (brand == b))
        model[rows] = m0 + rng.integers(0, MODELS_PER_BRAND, len(rows))
    colour = _pick(rng, cat, [np.array([vocab.colours.index(x) for x in c.colours]) for c in CATEGORIES], 0.6)
    size = _pick(rng, cat, [np.array([vocab.sizes.index(x) for x in c.sizes]) for c in CATEGORIES])
    mat = rng.integers(0, 3, n)
    feat = rng.integers(0, 3, n)
    ptype = rng.choice(3, n, p=TYPE_WEIGHTS[3])
    lo = np.array([c.price[0] for c in CATEGORIES])[cat]
    hi = np.array([c.price[1] for c in CATEGORIES])[cat]
    premium = rng_for(seed, 3).uniform(0.8, 1.3, len(vocab.brands))[brand]
    price = np.clip(np.exp(rng.uniform(np.log(lo), np.log(hi))) * premium, 1, None)
    price = np.round(np.floor(price) + 0.99, 2)
    price[rng.random(n) < 0.02] = np.nan
    rating_count = np.floor(rng.lognormal(3.0, 1.6, n)).astype(np.int64) * (rng.random(n) > 0.08)
    rating = np.round(np.clip(5 * rng.beta(6, 1.8, n), 1.0, 5.0), 1)
    stock = rng.integers(1, 400, n) * (rng.random(n) > 0.10)
    html = rng.random(n) < 0.20
    valid = ~((rng.random(n) < 0.002) & messy)
    width = max(6, len(str(n)))
    pids = [f"P{i:0{width}d}" for i in range(1, n + 1)]
    lines = []
    for i in range(n):
        c = CATEGORIES[cat[i]]
        b, m, col, sz = vocab.brands[brand[i]], vocab.models[model[i]], vocab.colours[colour[i]], vocab.sizes[size[i]]
        pt = c.types[ptype[i] % len(c.types)]
        sz_t = f"Size {sz.upper()}" if c.size_word else ("" if sz == "one size" else sz.upper() if sz[-1] in "bl" else sz)
        title = f"{b} {m} {pt.title()} {col.title()} {sz_t}".strip() if valid[i] else ""
        if html[i]:
            desc = (f"<p>The <b>{b} {m}</b> {pt} in {col}. Made of {c.materials[mat[i]]} &amp; "
                    f"{c.features[feat[i]]}.</p><p>Free returns within 30 days.</p>")
        else:
            desc = f"The {b} {m} {pt} in {col}, made of {c.materials[mat[i]]}. {c.features[feat[i]].capitalize()}."
        attrs = {"colour": col, "size": sz, "material": c.materials[mat[i]], "feature": c.features[feat[i]]}
        lines.append(json.dumps({
            "product_id": pids[i], "title": title, "description": desc, "brand": b,
            "category_path": list(c.path), "attributes": attrs,
            "price": None if np.isnan(price[i]) else float(price[i]),
            "rating": None if rating_count[i] == 0 else float(rating[i]), "rating_count": int(rating_count[i]),
            "stock": int(stock[i]), "image_url": f"https://img.example-shop.com/p/{pids[i]}.jpg", "locale": "us"}))
    dups = np.flatnonzero(valid & (rng.random(n) < 0.005)) if messy else np.array([], dtype=np.int64)
    for i in dups:  # the shop re-exported these later with a new price: "latest wins" at ingest
        row = json.loads(lines[i])
        old = row["price"] if row["price"] is not None else float(lo[i])
        new = round(float(np.floor(old * rng.uniform(0.7, 1.1))) + 0.99, 2)
        row["price"] = new if new != row["price"] else new + 1.0
        price[i] = row["price"]
        lines.append(json.dumps(row))
    median = np.array([np.nanmedian(price[cat == c]) if np.any(~np.isnan(price[cat == c])) else np.mean(c_.price)
                       for c, c_ in enumerate(CATEGORIES)])
    return Catalogue(pids, cat, brand, model, colour, size, price, stock, valid, lines,
                     int(len(dups)), int((~valid).sum()), median)


def write_products(n: int, seed: int, path: Union[str, Path], messy: bool = True) -> int:
    """Write `n` synthetic products as JSONL (for the ingest benchmark); returns lines written."""
    cat = make_catalogue(n, seed, messy=messy)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(cat.lines) + "\n", encoding="utf-8")
    return len(cat.lines)


# ---- queries: templates whose slots are the entities, so gold spans are exact by construction ----
ENTITY_OF_SLOT = {"brand": "brand", "brand2": "brand", "category": "category", "product": "product",
                  "colour": "colour", "size": "size", "price": "price_range"}
# (intent, weight, template, subtle alternative intent a careful human might choose)
TEMPLATES: tuple[tuple[str, float, str, Optional[str]], ...] = (
    ("product_search", 3, "{colour} {category}", None), ("product_search", 2, "{colour} {category} size {size}", None),
    ("product_search", 3, "{brand} {category}", "brand_query"), ("product_search", 1, "{brand} {category} {colour}", None),
    ("product_search", 2, "{feature} {category}", None), ("product_search", 1, "{feature} {category} for {gender}", None),
    ("product_search", 1, "{category} for {gender}", None), ("product_search", 2, "{brand} {product}", None),
    ("product_search", 1, "{brand} {product} {colour}", None), ("product_search", 1, "{category} {size}", None),
    ("product_search", 1, "{colour} {brand} {category} size {size}", None), ("product_search", 1, "{category}", None),
    ("brand_query", 4, "{brand}", None), ("brand_query", 1, "{brand} official store", None),
    ("brand_query", 1, "{brand} new arrivals", None), ("brand_query", 1, "shop {brand}", None),
    ("brand_query", 1, "{brand} sale", "price_comparison"), ("brand_query", 1, "{brand} outlet", "price_comparison"),
    ("price_comparison", 2, "cheap {category}", None), ("price_comparison", 3, "{category} {price}", None),
    ("price_comparison", 1, "{colour} {category} {price}", None), ("price_comparison", 2, "{brand} vs {brand2} {category}", None),
    ("price_comparison", 1, "best price {brand} {product}", None), ("price_comparison", 1, "{brand} {category} deals", "product_search"),
    ("price_comparison", 1, "cheapest {category}", None), ("price_comparison", 1, "{category} on sale", None),
    ("review_lookup", 3, "{brand} {product} reviews", None), ("review_lookup", 2, "is {brand} {product} good", None),
    ("review_lookup", 2, "{brand} {category} reviews", None), ("review_lookup", 1, "{brand} {product} rating", None),
    ("review_lookup", 1, "best {category} {year}", "product_search"), ("review_lookup", 1, "{product} review", None),
    ("review_lookup", 1, "what do people say about {brand} {product}", None),
    ("order_support", 1, "where is my order", None), ("order_support", 2, "where is my order {num}", None),
    ("order_support", 1, "track my package", None), ("order_support", 1, "track order {num}", None),
    ("order_support", 1, "return {brand} {category}", None), ("order_support", 2, "refund status order {num}", None),
    ("order_support", 1, "cancel order {num}", None), ("order_support", 1, "change shipping address", None),
    ("order_support", 1, "my {category} arrived damaged", None), ("order_support", 1, "exchange {category} for size {size}", None),
    ("out_of_scope", 1, "weather tomorrow", None), ("out_of_scope", 2, "weather in {city} on {day}", None),
    ("out_of_scope", 1, "tell me a joke", None), ("out_of_scope", 2, "what time is it in {city}", None),
    ("out_of_scope", 1, "who won the game last night", None), ("out_of_scope", 2, "how to make {dish}", None),
    ("out_of_scope", 1, "play some music", None), ("out_of_scope", 2, "translate {word} to {lang}", None),
    ("out_of_scope", 1, "directions to {city}", None), ("out_of_scope", 1, "gift ideas for {gender}", "product_search"),
    ("out_of_scope", 1, "flights to {city}", None), ("out_of_scope", 1, "recipe for {dish}", None),
    ("out_of_scope", 1, "set a timer for {minutes} minutes", None), ("out_of_scope", 1, "news in {city} today", None),
)
INTENT_WEIGHTS = {"product_search": 0.40, "brand_query": 0.14, "price_comparison": 0.16,
                  "review_lookup": 0.10, "order_support": 0.10, "out_of_scope": 0.10}
FILLERS = {
    "gender": ("men", "women", "kids"), "year": ("2025", "2026"), "minutes": ("5", "10", "15", "20", "25", "30", "45", "60", "90"),
    "day": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "the weekend"),
    "city": ("new york", "chicago", "seattle", "austin", "boston", "denver", "miami", "portland", "atlanta", "phoenix",
             "san diego", "dallas", "detroit", "nashville", "london", "paris", "tokyo", "berlin", "rome", "madrid",
             "toronto", "sydney", "dublin", "las vegas", "houston", "orlando"),
    "dish": ("pancakes", "lasagna", "banana bread", "fried rice", "guacamole", "chili", "sourdough", "ramen", "pad thai",
             "meatballs", "apple pie", "tacos", "hummus", "risotto"),
    "word": ("hello", "thank you", "good morning", "cat", "library", "friend", "goodbye", "water", "coffee", "train"),
    "lang": ("spanish", "french", "german", "italian", "japanese"),
}
SLOT = re.compile(r"\{(\w+)\}")
TYPE_WEIGHTS = {1: [1.0], 2: [0.7, 0.3], 3: [0.6, 0.25, 0.15]}
SHOPPABLE = ("product_search", "brand_query", "price_comparison", "review_lookup")


@dataclass
class QueryRow:
    """A generated query with its gold labels and the hidden facts events are simulated from."""

    query_id: str
    text: str
    intent: str
    spans: list[dict]
    alt_intent: Optional[str] = None
    meta: dict = field(default_factory=dict)  # cat, brand, brand2, model, colour, size, price_max


def _price_phrase(rnd: random.Random, lo: float, hi: float) -> tuple[str, float]:
    x = float(round(math.exp(rnd.uniform(math.log(lo * 1.2), math.log(hi * 0.6))), -1 if hi < 1000 else -2)) or 10.0
    form = rnd.randrange(4)
    if form == 3:
        return f"between ${int(x // 2)} and ${int(x)}", x
    return (f"under ${int(x)}", f"below ${int(x)}", f"less than {int(x)} dollars")[form], x


def _fill(rnd: random.Random, template: str, vocab: Vocab) -> Optional[tuple[str, list[dict], dict]]:
    """Fill one template; None where it does not fit the drawn category (e.g. a size for headphones)."""
    ci = rnd.choices(range(len(CATEGORIES)), CAT_WEIGHTS)[0]
    cat = CATEGORIES[ci]
    slots = set(SLOT.findall(template))
    if ("size" in slots and cat.sizes == ("one size",)) or ("gender" in slots and "category" in slots and not cat.size_word):
        return None
    if "size {size}" in template and not cat.size_word or ("{category} {size}" in template and cat.size_word):
        return None
    bids = vocab.cat_brands[ci]
    b, b2 = rnd.sample(range(len(bids)), 2)
    model = vocab.model_block[(ci, int(bids[b]))] + rnd.randrange(MODELS_PER_BRAND)
    values = {"brand": vocab.brands[bids[b]], "brand2": vocab.brands[bids[b2]], "product": vocab.models[model],
              "category": rnd.choices(cat.types, TYPE_WEIGHTS[len(cat.types)])[0], "colour": rnd.choice(cat.colours),
              "size": rnd.choice(cat.sizes), "feature": rnd.choice(cat.features), "num": str(rnd.randrange(10000, 1000000))}
    price_max = math.inf
    if "price" in slots:
        values["price"], price_max = _price_phrase(rnd, *cat.price)
    for k, opts in FILLERS.items():
        values[k] = rnd.choice(opts)
    text, spans, pos = "", [], 0
    for m in SLOT.finditer(template):
        text += template[pos:m.start()]
        val = values[m.group(1)]
        if m.group(1) in ENTITY_OF_SLOT:
            spans.append({"start": len(text), "end": len(text) + len(val), "type": ENTITY_OF_SLOT[m.group(1)], "text": ""})
        text += val
        pos = m.end()
    text += template[pos:]
    meta = {"cat": ci if slots & {"category", "product"} else -1,
            "brand": int(bids[b]) if "brand" in slots else -1, "brand2": int(bids[b2]) if "brand2" in slots else -1,
            "model": model if "product" in slots else -1, "price_max": price_max,
            "colour": vocab.colours.index(values["colour"]) if "colour" in slots else -1,
            "size": vocab.sizes.index(values["size"]) if "size" in slots else -1}
    return text, spans, meta


def split_of(query_id: str) -> str:
    """train/validation/test ~80/10/10 from a hash of the id: stable whatever else changes."""
    bucket = int(hashlib.md5(query_id.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def make_queries(n: int, seed: int, vocab: Vocab) -> list[QueryRow]:
    """`n` queries, distinct ignoring case, with gold intent and entity spans.

    A duplicate is redrawn within the same intent, so intent shares stay near INTENT_WEIGHTS until
    an intent's templates run dry (then it is dropped); if all run dry, duplicates are let through.
    """
    rnd = random.Random(f"queries:{seed}")  # scalar draws: far faster than numpy's per call
    by_intent = {i: [t for t in TEMPLATES if t[0] == i] for i in INTENT_WEIGHTS}
    live = dict(INTENT_WEIGHTS)
    seen: set[str] = set()
    rows: list[QueryRow] = []
    width = max(5, len(str(n)))
    while len(rows) < n:
        intent = rnd.choices(list(live), list(live.values()))[0] if live else rnd.choice(list(INTENT_WEIGHTS))
        for _ in range(30):
            _, _, template, alt = rnd.choices(by_intent[intent], [t[1] for t in by_intent[intent]])[0]
            filled = None
            while filled is None:  # redraw the category until the template fits it
                filled = _fill(rnd, template, vocab)
            text, spans, meta = filled
            casing = rnd.random()  # most shoppers type lower case; some keep brand casing or capitalise
            text = text.lower() if casing < 0.8 else text if casing < 0.9 else text[:1].upper() + text[1:].lower()
            if text.lower() not in seen or not live:
                break
        else:
            live.pop(intent, None)
            continue
        seen.add(text.lower())
        for s in spans:
            s["text"] = text[s["start"]:s["end"]]
        rows.append(QueryRow(f"Q{len(rows) + 1:0{width}d}", text, intent, spans, alt, meta))
    return rows
