"""The synthetic shop's ground truth and its held-out evaluation set.

Why: the demo must score models against what the generator knows to be true, not against the
rule labels the intent model is trained to imitate. Two files carry that truth to the store:
the gold intent/entity labels of the test-split queries (`synth.label_lines`) and graded
judgments of test- and validation-split queries (`judge_queries`). Training reads the train
split (validation only to pick among checkpoints), so no test truth can leak into a model; the
validation judgments are what choices are made on (jobs.main's ranker gate, jobs.fuse), so
that the test split is only ever reported. Each split draws from its own random stream, so the
test judgments do not depend on whether validation is judged.

Judgments follow the hidden relevance the click model uses (`true_relevance`): a product of the
query's pool (its category, or the brand's products when it names no category) that meets every
constraint the query states (brand, model, colour, size, price ceiling) is Exact; a pool product
missing one is a Substitute (always lower hidden relevance than every Exact one); a product
outside the pool is Irrelevant. The shop has no accessories, so C (complement) never appears.
A query is judged only when its Exact products are few enough to judge all of them
(`MAX_EXACT`): the full-catalogue protocol counts unjudged products as misses, so a partial
Exact set would punish a system for correct answers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ray_app.synth_catalog import SHOPPABLE, Catalogue, QueryRow, rng_for, split_of

MAX_EXACT = 50  # judge a query only when all of its Exact products fit in one judged list
SUBSTITUTES = 10  # near misses per query: the pool's non-exact products of highest hidden relevance
IRRELEVANT = 5  # random products from outside the pool
JUDGMENT_COLUMNS = ("query_id", "query", "product_id", "grade", "split")  # the text too: readable, shop-shaped


def true_relevance(meta: dict, cat: Catalogue, idx: np.ndarray) -> np.ndarray:
    """Hidden relevance in [0, 1] of products `idx` to a query: what a perfect judge would grade."""
    r = np.full(len(idx), 0.45 if meta["cat"] >= 0 else 0.6)
    if meta["brand"] >= 0:
        r += np.where((cat.brand[idx] == meta["brand"]) | (cat.brand[idx] == meta["brand2"]), 0.3, -0.15)
    if meta["model"] >= 0:
        r += np.where(cat.model[idx] == meta["model"], 0.35, -0.1)
    if meta["colour"] >= 0:
        r += np.where(cat.colour[idx] == meta["colour"], 0.15, -0.15)
    if meta["size"] >= 0:
        r += np.where(cat.size[idx] == meta["size"], 0.1, -0.1)
    if np.isfinite(meta["price_max"]):
        p = cat.price[idx]
        r += np.where(np.isnan(p), -0.05, np.where(p <= meta["price_max"], 0.1, -0.3))
    return np.clip(r, 0.0, 1.0)


def query_pool(meta: dict, cat: Catalogue) -> np.ndarray:
    """Titled products a query is about: its category, else its brand; empty when it names neither."""
    if meta["cat"] >= 0:
        return np.flatnonzero(cat.valid & (cat.cat == meta["cat"]))
    if meta["brand"] >= 0:
        return np.flatnonzero(cat.valid & (cat.brand == meta["brand"]))
    return np.zeros(0, dtype=np.int64)


def exact_mask(meta: dict, cat: Catalogue, idx: np.ndarray) -> np.ndarray:
    """Which of pool products `idx` meet every constraint the query states (each a plus in true_relevance)."""
    ok = np.ones(len(idx), dtype=bool)
    if meta["brand"] >= 0:
        ok &= (cat.brand[idx] == meta["brand"]) | (cat.brand[idx] == meta["brand2"])
    for key, column in (("model", cat.model), ("colour", cat.colour), ("size", cat.size)):
        if meta[key] >= 0:
            ok &= column[idx] == meta[key]
    if np.isfinite(meta["price_max"]):
        ok &= ~np.isnan(cat.price[idx]) & (cat.price[idx] <= meta["price_max"])
    return ok


JUDGED_SPLITS = {"test": 8, "validation": 9}  # split -> its random stream


def judge_queries(rows: list[QueryRow], cat: Catalogue, seed: int) -> pd.DataFrame:
    """Graded judgments (ESCI letters) of the test and validation shopping queries with 1..MAX_EXACT
    Exact products, test first."""
    titled = np.flatnonzero(cat.valid)
    out: list[tuple[str, str, str, str, str]] = []
    for split, stream in JUDGED_SPLITS.items():
        out += _judge_split(rows, cat, rng_for(seed, stream), titled, split)
    return pd.DataFrame(out, columns=list(JUDGMENT_COLUMNS))


def _judge_split(rows: list[QueryRow], cat: Catalogue, rng: np.random.Generator, titled: np.ndarray,
                 split: str) -> list[tuple[str, str, str, str, str]]:
    out: list[tuple[str, str, str, str, str]] = []
    for q in rows:
        if q.intent not in SHOPPABLE or split_of(q.query_id) != split:
            continue
        pool = query_pool(q.meta, cat)
        exact = exact_mask(q.meta, cat, pool)
        if not 1 <= exact.sum() <= MAX_EXACT:
            continue
        near = pool[~exact]
        if len(near):  # highest hidden relevance first, random among equals
            rel = true_relevance(q.meta, cat, near)
            near = near[np.lexsort((rng.random(len(near)), -rel))[:SUBSTITUTES]]
        outside = np.setdiff1d(titled, pool, assume_unique=True)
        far = rng.choice(outside, min(IRRELEVANT, len(outside)), replace=False) if len(outside) else outside
        for grade, idx in (("E", pool[exact]), ("S", near), ("I", np.sort(far))):
            out += [(q.query_id, q.text, cat.product_ids[i], grade, split) for i in idx.tolist()]
    return out


def held_out(rows: list[QueryRow]) -> list[QueryRow]:
    """The test-split queries: the only ones whose gold labels and judgments reach the store."""
    return [q for q in rows if split_of(q.query_id) == "test"]
