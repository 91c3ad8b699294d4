"""Deterministic synthetic shop: gold/human labels, users, behaviour events and the writer.

Why: the platform needs end-to-end data whose truth is known, so that weak labels, click models
and rankers can be checked against it. Behaviour follows a position-biased click model,
P(click) = (1/position) * attractiveness, where attractiveness grows with a hidden true relevance
(brand, category, model, colour, size and price fit) and the user's latent taste, so relevance
derived from clicks is meaningful. Everything draws from `rng_for(seed, stream)`
and a fixed epoch (no clock): the same seed writes the same bytes. Vocabulary, products and
query templates live in ray_app/synth_catalog.py; the hidden relevance and the held-out
evaluation set (gold labels of the test split, judgments of the test and validation splits) in ray_app/synth_eval.py.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from ray_app.synth_catalog import (CATEGORIES, EPOCH, SHOPPABLE, Catalogue, QueryRow, build_vocab, make_catalogue,
                                   make_queries, rng_for, split_of)
from ray_app.synth_eval import held_out, judge_queries, query_pool, true_relevance
from schemas.config import GenerateConfig
from schemas.records import EVENT_TYPES

OUTPUT_FILES = ("products.jsonl", "queries.csv", "users.csv", "events.parquet", "gold_labels.jsonl", "human_labels.jsonl",
                "gold_test_labels.jsonl", "judgments.csv")
DEVICES = ("mobile", "desktop", "tablet")
SLATE, POOL = 10, 30  # impressions per page; per-query candidate list the engine reorders a little per session
DAY_MS = 86_400_000
WINDOW_DAYS = 90  # events fall in the 90 days before EPOCH


def label_lines(rows: list[QueryRow], annotator: str, human: bool = False,
                disagree: frozenset[str] = frozenset()) -> list[str]:
    """Intent + entity lines in the common label format; `disagree` ids get the subtle alternative."""
    out = []
    for q in rows:
        intent, spans = q.intent, [dict(s) for s in q.spans]
        if human and q.query_id in disagree:
            if q.alt_intent:
                intent = q.alt_intent
            else:  # annotator includes the word "size" in the size span
                for s in spans:
                    if s["type"] == "size" and q.text[max(0, s["start"] - 5):s["start"]].lower() == "size ":
                        s["start"] -= 5
                        s["text"] = q.text[s["start"]:s["end"]]
        base = {"target_type": "query", "target_id": q.query_id}
        out.append(json.dumps({**base, "task": "intent", "value": intent, "spans": [], "annotator": annotator, "confidence": 1.0}))
        out.append(json.dumps({**base, "task": "entity", "value": "", "spans": spans, "annotator": annotator, "confidence": 1.0}))
    return out


def human_subset(rows: list[QueryRow], fraction: float, seed: int) -> tuple[list[QueryRow], frozenset[str]]:
    """A fixed `fraction` of the train/validation queries, and the ~5% of those (subtle ones only) the
    annotator reads differently. Test queries are left to the gold file, so they are scored against truth."""
    rng = rng_for(seed, 5)
    open_rows = [q for q in rows if split_of(q.query_id) != "test"]
    k = int(round(fraction * len(open_rows)))
    chosen = sorted(rng.permutation(len(open_rows))[:k].tolist())
    subset = [open_rows[i] for i in chosen]
    subtle = [q.query_id for q in subset if q.alt_intent or re.search(r"size \S", q.text.lower()) and
              any(s["type"] == "size" for s in q.spans)]
    n_dis = min(len(subtle), int(round(0.05 * k)))
    disagree = frozenset(rng.permutation(subtle)[:n_dis].tolist()) if n_dis else frozenset()
    return subset, disagree


@dataclass
class Users:
    """users.csv rows plus the latent taste the simulation reads (never written out)."""

    frame: pd.DataFrame
    catpref: np.ndarray  # [users, categories] Dirichlet preference
    brand_aff: np.ndarray  # [users, brands] sparse affinity
    price_sens: np.ndarray  # [users] 0 (premium) .. 1 (bargain hunter)
    activity: np.ndarray  # [users] relative session rate
    device: np.ndarray  # [users] usual device index


def make_users(n: int, seed: int, n_brands: int) -> Users:
    """`n` users with latent preferences; the segment is derived from them so it carries signal."""
    rng = rng_for(seed, 6)
    catpref = rng.dirichlet(np.full(len(CATEGORIES), 0.4), n)
    brand_aff = rng.normal(0, 0.8, (n, n_brands)) * (rng.random((n, n_brands)) < 0.25)
    price_sens, activity = rng.beta(2, 2, n), rng.lognormal(0, 1, n)
    device = rng.choice(len(DEVICES), n, p=[0.6, 0.3, 0.1])
    segment = np.where(activity > np.quantile(activity, 0.8), "loyal", np.where(
        price_sens > 0.7, "bargain_hunter", np.where(price_sens < 0.25, "premium", "casual")))
    signup = EPOCH - np.timedelta64(WINDOW_DAYS, "D") - rng.integers(0, 730 * 86400, n).astype("timedelta64[s]")
    width = max(5, len(str(n)))
    frame = pd.DataFrame({"user_id": [f"U{i:0{width}d}" for i in range(1, n + 1)], "locale": "us",
                          "segment": segment, "signup_at": np.char.add(np.datetime_as_string(signup, unit="s"), "Z")})
    return Users(frame, catpref, brand_aff, price_sens, activity, device)


def _result_lists(rng: np.random.Generator, cat: Catalogue, rows: list[QueryRow]):
    """Per shoppable query: the engine's top POOL products (noisy relevance order), padded with -1."""
    qs, prods, rels, scores = [], [], [], []
    for qi, q in enumerate(rows):
        m = q.meta
        if q.intent not in SHOPPABLE:
            continue
        pool = query_pool(m, cat)  # the judgments' pool too (synth_eval), so both see the same products
        if len(pool) == 0:
            continue
        rel = true_relevance(m, cat, pool)
        score = rel + rng.normal(0, 0.15, len(pool))
        top = np.argpartition(-score, POOL)[:POOL] if len(pool) > POOL else np.arange(len(pool))
        top = top[np.argsort(-score[top], kind="stable")]
        pad = POOL - len(top)
        qs.append(qi)
        prods.append(np.pad(pool[top], (0, pad), constant_values=-1))
        rels.append(np.pad(rel[top], (0, pad)))
        scores.append(np.pad(score[top], (0, pad), constant_values=-np.inf))
    if not qs:
        return np.zeros(0, np.int64), np.zeros((0, POOL), np.int64), np.zeros((0, POOL)), np.zeros((0, POOL))
    return np.array(qs), np.stack(prods), np.stack(rels), np.stack(scores)


def _sessions(rng: np.random.Generator, s_count: int, cat: Catalogue, users: Users, lists, q_cat: np.ndarray,
              q_pop: np.ndarray, home_pools: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Simulate `s_count` sessions: one result page each, then clicks, carts and purchases."""
    qs, cand, crel, cscore = lists
    u = rng.choice(len(users.activity), s_count, p=users.activity / users.activity.sum())
    has = np.array([len(p) > 0 for p in home_pools], dtype=float)
    w = users.catpref[u] * has + 1e-12 * has
    pcat = np.minimum(((w / w.sum(1, keepdims=True)).cumsum(1) < rng.random(s_count)[:, None]).sum(1), len(CATEGORIES) - 1)
    home = (rng.random(s_count) < 0.08) | (len(qs) == 0)
    qsel = np.full(s_count, -1)
    by_pref = ~home & (rng.random(s_count) < 0.75)  # most searches are in a category the user likes
    for c in range(len(CATEGORIES)):
        rows, in_c = np.flatnonzero(by_pref & (pcat == c)), np.flatnonzero(q_cat == c)
        if len(rows) and len(in_c):
            qsel[rows] = in_c[rng.choice(len(in_c), len(rows), p=q_pop[in_c] / q_pop[in_c].sum())]
    rest = np.flatnonzero(~home & (qsel < 0))
    if len(rest):
        qsel[rest] = rng.choice(len(qs), len(rest), p=q_pop / q_pop.sum())
    prods, rel = np.full((s_count, SLATE), -1), np.zeros((s_count, SLATE))
    srch = np.flatnonzero(~home)
    if len(srch):  # the engine's list, lightly reshuffled per session so each product is seen at several ranks
        order = np.argsort(-(cscore[qsel[srch]] + rng.normal(0, 0.08, (len(srch), POOL))), axis=1, kind="stable")[:, :SLATE]
        prods[srch] = np.take_along_axis(cand[qsel[srch]], order, 1)
        rel[srch] = np.take_along_axis(crel[qsel[srch]], order, 1)
    for c, pool in enumerate(home_pools):  # home feed: a stride through a liked category, no query
        rows = np.flatnonzero(home & (pcat == c))
        if len(rows) and len(pool):
            idx = (rng.integers(0, len(pool), len(rows))[:, None] + np.arange(SLATE) * max(1, len(pool) // SLATE)) % len(pool)
            prods[rows] = np.where(np.arange(SLATE) < len(pool), pool[idx], -1)
            rel[rows] = 0.3
    shown = prods >= 0
    p = np.where(shown, prods, 0)
    pc, uu = cat.cat[p], u[:, None]
    ratio = np.nan_to_num(cat.price[p] / cat.median_price[pc], nan=1.0)
    util = (3.0 * rel + users.brand_aff[uu, cat.brand[p]] + 0.5 * np.clip(users.catpref[uu, pc] * len(CATEGORIES) - 1, -1, 2)
            - 1.2 * users.price_sens[uu] * np.clip(ratio - 1, -1, 3) - 2.8)
    attract = 1 / (1 + np.exp(-util))
    pos = np.arange(1, SLATE + 1)
    click = shown & (rng.random(shown.shape) < attract / pos)
    cart = click & (cat.stock[p] > 0) & (rng.random(shown.shape) < 0.6 / (1 + np.exp(1 - util)))
    buy = cart & (rng.random(shown.shape) < 0.6 - 0.35 * users.price_sens[uu])
    t0 = rng.integers(0, WINDOW_DAYS * DAY_MS, s_count)[:, None] + np.zeros(SLATE, np.int64)
    t_click = t0 + pos * 2000 + 1000 + rng.exponential(8000, shown.shape).astype(np.int64)
    t_cart = t_click + 5000 + rng.exponential(60000, shown.shape).astype(np.int64)
    t_buy = t_cart + 30000 + rng.exponential(300000, shown.shape).astype(np.int64)
    parts = [np.nonzero(m) + (k, t) for k, (m, t) in enumerate([(shown, t0), (click, t_click), (cart, t_cart), (buy, t_buy)])]
    s = np.concatenate([x[0] for x in parts])
    j = np.concatenate([x[1] for x in parts])
    return {"session": s, "type": np.concatenate([np.full(len(x[0]), x[2]) for x in parts]), "position": j + 1,
            "product": prods[s, j], "time": np.concatenate([x[3][x[0], x[1]] for x in parts]),
            "user": u[s], "query": np.where(qsel[s] >= 0, qs[np.maximum(qsel[s], 0)] if len(qs) else -1, -1),
            "device": np.where(rng.random(s_count) < 0.85, users.device[u], rng.integers(0, len(DEVICES), s_count))[s]}


def simulate_events(target: int, seed: int, cat: Catalogue, rows: list[QueryRow], users: Users) -> pa.Table:
    """Exactly `target` events (the last session may be cut short), ordered by time."""
    rng = rng_for(seed, 7)
    lists = _result_lists(rng, cat, rows)
    q_cat = np.array([rows[q].meta["cat"] for q in lists[0]], dtype=np.int64)
    q_pop = 1.0 / (rng.permutation(len(lists[0])) + 1.0)  # Zipf-like popularity, random which query is top
    home_pools = [np.flatnonzero(cat.valid & (cat.cat == c)) for c in range(len(CATEGORIES))]
    batches, total, offset = [], 0, 0
    while total < target and any(len(p) for p in home_pools):
        n_s = int(np.ceil((target - total) / SLATE * 1.05)) + 1
        b = _sessions(rng, n_s, cat, users, lists, q_cat, q_pop, home_pools)
        b["session"] = b["session"] + offset
        batches.append(b)
        total, offset = total + len(b["session"]), offset + n_s
    ev = {k: np.concatenate([b[k] for b in batches]) if batches else np.zeros(0, np.int64)
          for k in ("session", "type", "position", "product", "time", "user", "query", "device")}
    keep = np.lexsort((ev["position"], ev["type"], ev["time"], ev["session"]))[:target]
    keep = keep[np.lexsort((ev["position"][keep], ev["type"][keep], ev["session"][keep], ev["time"][keep]))]
    ev = {k: v[keep] for k, v in ev.items()}
    n = len(keep)
    qids = np.array([q.query_id for q in rows] + [""], dtype=object)
    pids = np.array(cat.product_ids, dtype=object)
    uids = users.frame["user_id"].to_numpy(dtype=object)
    width = max(9, len(str(n)))
    ts = (EPOCH - np.timedelta64(WINDOW_DAYS, "D")).astype("datetime64[ms]") + ev["time"].astype("timedelta64[ms]")
    return pa.table({
        "event_id": [f"E{i:0{width}d}" for i in range(1, n + 1)],
        "event_type": pa.array(np.array(EVENT_TYPES, dtype=object)[ev["type"]], pa.string()),
        "user_id": pa.array(uids[ev["user"]], pa.string()),
        "session_id": [f"S{s + 1:07d}" for s in ev["session"].tolist()],
        "query_id": pa.array(qids[ev["query"]], pa.string()),
        "product_id": pa.array(pids[ev["product"]], pa.string()),
        "position": pa.array(ev["position"], pa.int64()),
        "timestamp": pa.array(ts).cast(pa.timestamp("us", tz="UTC")),
        "device": pa.array(np.array(DEVICES, dtype=object)[ev["device"]], pa.string()),
        "locale": pa.array(["us"] * n, pa.string()),
    })


class GenerateResult(BaseModel):
    """What `generate` wrote: rows per file and where."""

    out: str
    seed: int
    products: int  # unique product ids
    product_lines: int  # lines in products.jsonl (duplicates included)
    duplicate_products: int
    empty_titles: int
    queries: int
    users: int
    events: int
    sessions: int
    gold_labels: int
    gold_test_labels: int  # gold label lines of the test-split queries: the held-out evaluation set
    judged_queries: int
    judgments: int
    human_labels: int
    human_queries: int
    human_disagreements: int
    files: dict[str, int]  # file name -> bytes


def generate(config: GenerateConfig) -> GenerateResult:
    """Write the shop (OUTPUT_FILES): the exports, every query's gold labels (gold_labels.jsonl), the
    held-out evaluation set (gold_test_labels.jsonl; judgments.csv: test and validation splits) and human labels.
    `config.out` is a local folder or a URI (the files are written locally and copied up)."""
    from ray_app.object_store import Output

    with Output(str(config.out)) as dest:
        return _write_shop(config, dest.folder).model_copy(update={"out": str(config.out)})


def _write_shop(config: GenerateConfig, out: Path) -> GenerateResult:
    vocab = build_vocab(config.seed)
    catalogue = make_catalogue(config.products, config.seed, vocab)
    (out / "products.jsonl").write_text("\n".join(catalogue.lines) + "\n", encoding="utf-8")
    rows = make_queries(config.queries, config.seed, vocab)
    pd.DataFrame({"query_id": [q.query_id for q in rows], "text": [q.text for q in rows], "locale": "us",
                  "split": [split_of(q.query_id) for q in rows]}).to_csv(out / "queries.csv", index=False, lineterminator="\n")
    gold = label_lines(rows, "gold")
    (out / "gold_labels.jsonl").write_text("\n".join(gold) + "\n", encoding="utf-8")
    gold_test = label_lines(held_out(rows), "gold")
    (out / "gold_test_labels.jsonl").write_text("".join(line + "\n" for line in gold_test), encoding="utf-8")
    judgments = judge_queries(rows, catalogue, config.seed)
    judgments.to_csv(out / "judgments.csv", index=False, lineterminator="\n")
    subset, disagree = human_subset(rows, config.gold_fraction, config.seed)
    human = label_lines(subset, "annotator_a", human=True, disagree=disagree)
    (out / "human_labels.jsonl").write_text("".join(line + "\n" for line in human), encoding="utf-8")
    users = make_users(config.users, config.seed, len(vocab.brands))
    users.frame.to_csv(out / "users.csv", index=False, lineterminator="\n")
    events = simulate_events(config.events, config.seed, catalogue, rows, users)
    pq.write_table(events, out / "events.parquet", compression="zstd")
    files = {name: (out / name).stat().st_size for name in OUTPUT_FILES}
    return GenerateResult(out=str(out), seed=config.seed, products=config.products, product_lines=len(catalogue.lines),
                          duplicate_products=catalogue.duplicates, empty_titles=catalogue.empty_titles,
                          queries=len(rows), users=config.users, events=events.num_rows,
                          sessions=len(set(events.column("session_id").to_pylist())), gold_labels=len(gold),
                          gold_test_labels=len(gold_test), judged_queries=int(judgments["query_id"].nunique()),
                          judgments=len(judgments),
                          human_labels=len(human), human_queries=len(subset), human_disagreements=len(disagree), files=files)
