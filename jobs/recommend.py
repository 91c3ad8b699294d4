"""Batch recommendations: every known user's top-N into the `recommendations` table, stamped.

  python -m jobs.recommend [--model recommender@production] [--snapshot NAME] [--k 50]
         [--concurrency 1] [--cpus-per-actor 1] [--use-gpu] [--no-exclude-bought] [--no-in-stock-only]

The driver builds each known user's history from the purchases (last `max_history` distinct
items, their age in days at the newest purchase) and hands users to Ray Data; `Recommend`, an
actor, loads the model and encodes the catalogue once (item tower over product text, so
products never sold are candidates too), then scores batches of users against every product.
Business rules: already-bought products and products out of stock are left out. The lists are
upserted by user in one commit, each row stamped with the model version and snapshot, so a
re-run replaces them and a crash leaves the previous lists in place. Last stdout line: JSON summary.
"""
from __future__ import annotations

import json
import time
from typing import Any, Optional, Sequence

import pyarrow as pa

from ray_app.cli import JobError, main_wrapper
from ray_app.store import Store, rows_to_arrow, utcnow
from schemas.recs import RecommendConfig, RecommendResult


class Recommend:
    """Ray Data actor: the model, its tokenizer and the catalogue's item vectors, loaded once."""

    def __init__(self, db: str, snapshot: Optional[str], model: str, models_dir: Optional[str], k: int,
                 in_stock_only: bool, threads: Optional[int] = None, device: Optional[str] = None):
        import torch

        from ray_app.recs.data import PRODUCT_COLUMNS, item_texts, read_table
        from ray_app.recs.model_system import TwoTowerSystem
        from ray_app.registry import load_model

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        products = read_table(Store(db), snapshot, "products", PRODUCT_COLUMNS + ["stock"])
        stock = dict(zip(products.column("product_id").to_pylist(), products.column("stock").to_pylist()))
        self.out_of_stock = {p for p, s in stock.items() if s is not None and s <= 0} if in_stock_only else set()
        self.loaded = load_model(model, models_dir, task="recommender", device=device)
        self.system = TwoTowerSystem(self.loaded, item_texts(products))
        self.system.item_vectors = self.system.encode_items()
        self.k = k

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        users = batch.column("user_id").to_pylist()
        locales = dict(zip(users, batch.column("locale").to_pylist()))
        exclude = {}
        for u, h, a, bought in zip(users, batch.column("history").to_pylist(), batch.column("ages").to_pylist(),
                                   batch.column("bought").to_pylist()):
            self.system.set_history(u, json.loads(h), json.loads(a))
            exclude[u] = set(json.loads(bought)) | self.out_of_stock
        rows = []
        for u, (items, logit) in self.system.top_k(users, self.k, exclude, locales).items():
            probs = self.loaded.model.probability(torch.as_tensor(logit, dtype=torch.float32)).tolist() if items else []
            rows.append({"user_id": u, "product_ids": items, "scores": [round(p, 6) for p in probs], "locale": locales[u],
                         "history_items": len(self.system.history.get(u, ([], []))[0])})
        self.system.history.clear()  # one batch's users at a time: memory stays flat in users
        return pa.Table.from_pylist(rows, schema=_OUT)


_OUT = pa.schema([("user_id", pa.string()), ("product_ids", pa.list_(pa.string())), ("scores", pa.list_(pa.float64())),
                  ("locale", pa.string()), ("history_items", pa.int64())])


def user_rows(store: Store, config: RecommendConfig, max_history: int) -> list[dict[str, Any]]:
    """One row per known user: history ids and ages (JSON), locale, everything bought (JSON)."""
    from ray_app.recs.data import EVENT_COLUMNS, read_table
    from ray_app.recs.model_system import user_histories
    from ray_app.recs.split import ANON_PREFIX, purchases, user_locales

    bought = purchases(read_table(store, config.snapshot, "events", EVENT_COLUMNS).to_pandas())
    if bought.empty:
        raise JobError("no purchase events to build user histories from")
    known = bought[~bought["user_id"].str.startswith(ANON_PREFIX)]
    locale = user_locales(known)
    every = known.groupby("user_id")["product_id"].agg(lambda s: sorted(set(s))).to_dict()
    rows = []
    for user, (ids, ages) in user_histories(known, max_history).items():
        rows.append({"user_id": user, "history": json.dumps(ids), "ages": json.dumps(ages), "locale": locale.get(user, ""),
                     "bought": json.dumps(every[user] if config.exclude_bought else [])})
    return rows


def run(config: RecommendConfig) -> RecommendResult:
    """Histories on the driver, top-N in a Ray Data actor pool, one upsert into `recommendations`."""
    import ray

    from ray_app.registry import resolve
    from ray_app.runtime import init_ray

    started = time.perf_counter()
    version = resolve(config.model, config.models_dir, task="recommender")
    store = Store(config.db)
    rows = user_rows(store, config, int(version.config.get("max_history") or 20))
    init_ray(config.ray_address, config.num_cpus, quiet=config.quiet)
    scoring = time.perf_counter()
    ds = ray.data.from_items(rows).map_batches(
        Recommend, batch_format="pyarrow", batch_size=config.batch_size, concurrency=config.concurrency,
        num_cpus=config.cpus_per_actor, num_gpus=1 if config.use_gpu else None,
        fn_constructor_kwargs={"db": store.uri, "snapshot": config.snapshot, "model": version.name,
                               "models_dir": config.models_dir, "k": config.k, "in_stock_only": config.in_stock_only,
                               "threads": config.cpus_per_actor, "device": "cuda" if config.use_gpu else None})
    parts = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    seconds = time.perf_counter() - scoring
    table = pa.concat_tables(parts) if parts else _OUT.empty_table()
    now = utcnow()
    stamped = rows_to_arrow([{**r, "model_version": version.name, "snapshot": config.snapshot or "", "created_at": now}
                             for r in table.to_pylist()], "recommendations")
    stats = store.upsert("recommendations", stamped)
    cold = sum(1 for r in table.column("history_items").to_pylist() if r == 0)
    return RecommendResult(model_version=version.name, users=table.num_rows, cold_users=cold, k=config.k,
                           table_version=stats.version, seconds=round(time.perf_counter() - started, 2),
                           users_per_s=round(table.num_rows / seconds, 1) if seconds else 0.0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, RecommendConfig, "jobs.recommend", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
