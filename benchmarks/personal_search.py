"""Personalised search on the synthetic shop, with and without the shopper's affinity.

The synthetic shop's shoppers buy by relevance AND a latent taste for brands and categories
(ray_app/synth.py), so a search that knows what a shopper engaged with before should put what they
then buy higher. Protocol:

- events ordered by time, cut at the 70% quantile of purchase times; affinity (jobs.suggest's:
  brand and category weights from clicks, carts and purchases, peak = 1) from events before the cut;
- test: every distinct (user, query, product) purchase after the cut that followed a search;
- the served first stage (LanceDB BM25 + all-MiniLM-L6-v2, RRF, top 100) for the query, then the
  blend of ray_app/search/personal.py at weight w and price share s (taste only, half and half,
  price only); relevance = the product bought (binary), NDCG@10;
- users split in two halves by a hash: (s, w) chosen on one (validation), reported on the other
  (test), paired bootstrap over purchases.

  python -m benchmarks.personal_search [--workspace /tmp/personal-shop-400k] [--events 400000] [--out benchmarks/results/personal_search.json]

Builds the shop first when the workspace has none (jobs.main --no-models, then jobs.embed).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import load_avg, write_results

WEIGHTS = (0.1, 0.2, 0.3, 0.5)
SHARES = (0.0, 0.5, 1.0)  # price fit's share of the personal signal (0: brand/category taste only)
CUT_QUANTILE = 0.7
K = 10


def build_shop(workspace: Path, events: int) -> None:
    from jobs import embed, main
    from schemas.config import MainConfig
    from schemas.evaluation import EmbedConfig

    main.run(MainConfig(workspace=str(workspace), models=False, serve=False, quiet=True, events=events))
    embed.run(EmbedConfig(workspace=str(workspace), model="minilm", quiet=True))


def ndcg_of(ranked: list[str], bought: str) -> float:
    return next((1.0 / math.log2(r + 1) for r, p in enumerate(ranked[:K], start=1) if p == bought), 0.0)


def half(user: str) -> str:
    return "validation" if hashlib.sha256(user.encode()).digest()[0] % 2 == 0 else "test"


def main() -> None:
    import pandas as pd
    import lancedb

    from ray_app.evaluation import paired_bootstrap
    from ray_app.index import load_text_encoder
    from ray_app.search.personal import personalise
    from ray_app.search.pipeline import LiveCatalogue, first_stage
    from ray_app.search.suggest_build import user_affinity
    from ray_app.store import Store
    from schemas.fusion import FusionSpec
    from schemas.serving import ServeAppConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default="/tmp/personal-shop-400k")
    ap.add_argument("--events", type=int, default=400_000, help="events of the shop built when the workspace has none")
    ap.add_argument("--out", default="benchmarks/results/personal_search.json")
    ap.add_argument("--resamples", type=int, default=2000)
    args = ap.parse_args()
    workspace = Path(args.workspace).resolve()
    db = workspace / "lancedb"
    store = Store(str(db))
    started = time.perf_counter()
    if not store.exists("products") or store.count("products") == 0:
        build_shop(workspace, args.events)
    events = store.read("events", columns=["user_id", "event_type", "product_id", "query_id", "timestamp"]).to_pandas()
    products = store.read("products", columns=["product_id", "brand", "category_path", "price"]).to_pylist()
    queries = {r["query_id"]: r["text"] for r in store.read("queries", columns=["query_id", "text"]).to_pylist()}
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True)
    cut = events.loc[events["event_type"] == "purchase", "timestamp"].quantile(CUT_QUANTILE)
    before, after = events[events["timestamp"] < cut], events[events["timestamp"] >= cut]
    table = user_affinity(before.to_dict("records"), products, top=5)
    from ray_app.search.suggest import SuggestIndex
    from ray_app.search.suggest_build import CATALOGUE_USER

    index = SuggestIndex.from_tables(__import__("pyarrow").table({"text": ["x"], "score": [1.0]}), table)  # as Suggest loads it
    medians = index.affinity.get(CATALOGUE_USER, {})
    affinity = {u: {**medians, **a} for u, a in index.affinity.items() if u != CATALOGUE_USER}
    test = after[(after["event_type"] == "purchase") & (after["query_id"].fillna("") != "") & after["query_id"].isin(queries)]
    test = test.drop_duplicates(["user_id", "query_id", "product_id"])

    config = ServeAppConfig(db=str(db), workspace=str(workspace), retrieve_depth=100)
    encoder = load_text_encoder("minilm", None)
    cat = LiveCatalogue(lancedb.connect(str(db)).open_table("products"), encoder, config)
    qids = sorted(set(test["query_id"]))
    vectors = dict(zip(qids, encoder.encode([queries[q] for q in qids])))
    firsts = {q: first_stage(cat, FusionSpec(), config, {"query": queries[q]}, None, vectors[q])["candidates"] for q in qids}

    rows: list[dict[str, Any]] = []
    for r in test.itertuples(index=False):
        hits = firsts[r.query_id]
        row = {"user": r.user_id, "half": half(r.user_id), "has_affinity": r.user_id in affinity,
               "in_candidates": any(h["product_id"] == r.product_id for h in hits),
               "base": ndcg_of([h["product_id"] for h in hits], r.product_id)}
        for share in SHARES:
            for w in WEIGHTS:
                ordered, _ = personalise(hits, affinity.get(r.user_id), w, share)
                row[(share, w)] = ndcg_of([h["product_id"] for h in ordered], r.product_id)
        rows.append(row)
    frame = pd.DataFrame(rows)
    val, tst = frame[frame["half"] == "validation"], frame[frame["half"] == "test"]
    grid = [(share, w) for share in SHARES for w in WEIGHTS]
    chosen = max(grid, key=lambda sw: (round(val[sw].mean(), 6), -sw[1], sw[0]))

    def by_setting(part):
        return {f"price_share={share} w={w}": round(float(part[(share, w)].mean()), 4) for share, w in grid}

    summary = {
        "benchmark": "personal_search", "shop": f"synthetic (jobs.main demo, seed 7, {len(events):,} events)",
        "first_stage": "BM25 + minilm, RRF, top 100", "cut": cut.isoformat(), "test_purchases": int(len(frame)),
        "users_with_affinity": len(affinity), "purchases_in_candidates": round(float(frame["in_candidates"].mean()), 4),
        "signal": "personal = (1 - price_share) * brand/category taste + price_share * price fit; score' = (1 - w) * scaled + w * personal",
        "validation": {"purchases": int(len(val)), "ndcg@10_without": round(float(val["base"].mean()), 4),
                       "ndcg@10_by_setting": by_setting(val), "chosen": {"price_share": chosen[0], "weight": chosen[1]}},
        "test": {"purchases": int(len(tst)), "ndcg@10_without": round(float(tst["base"].mean()), 4),
                 "ndcg@10_with": round(float(tst[chosen].mean()), 4),
                 "paired_bootstrap": paired_bootstrap(tst[chosen].tolist(), tst["base"].tolist(), args.resamples),
                 "ndcg@10_by_setting": by_setting(tst)},
        "seconds": round(time.perf_counter() - started, 1), "load_avg_1m": load_avg(),
    }
    write_results(args.out, summary)


if __name__ == "__main__":
    main()
