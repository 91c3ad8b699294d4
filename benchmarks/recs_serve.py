"""The recommendation endpoint and the feedback path under load, each beside an in-process baseline.

  python -m benchmarks.recs_serve [--workspace /tmp/personal-shop] [--seconds 15]

On the synthetic shop (built by benchmarks/personal_search.py or jobs.main) with a recommender
trained on its snapshot (`jobs.train --task recommender --text-tower frozen`, trained here when the
registry has none) and every user's list precomputed (`jobs.recommend`):

- `GET /v1/recommend/home` over HTTP through Serve (ingress -> Recommender -> rules) at concurrency
  1 and 16, closed loop: p50/p99 and answers/s; baseline: the same Recommender class called in this
  process (no HTTP, no Serve), one caller and 16 threads;
- `POST /v1/events`, batches of 100 events at concurrency 16: events/s acknowledged (each after its
  commit); baselines in this process: one writer upserting the same batches into LanceDB one commit
  per batch, and one commit per event (what the writer's batching avoids);
- the delay until an acknowledged event is visible: to a fresh read of the events table, and to the
  shopper's next home list (strategy `session`), medians over 10 events.

Writes benchmarks/results/recs_serve.json. The machine's load is recorded beside the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from benchmarks.common import load_avg, write_results
from benchmarks.loadgen import closed_loop, percentiles

KEY = "bench-" + uuid.uuid4().hex  # made for this run; never stored


def ensure_model(workspace: Path) -> dict[str, Any]:
    """recommender@production and its precomputed lists (trained here when missing)."""
    from jobs import recommend, train
    from ray_app.registry import Registry, RegistryError
    from ray_app.store import Store
    from schemas.recs import RecommendConfig
    from schemas.training import TrainConfig

    registry = Registry(str(workspace / "models"))
    out: dict[str, Any] = {}
    try:
        version = registry.resolve("recommender@production", "recommender").name
    except RegistryError:
        snapshot = sorted(Store(str(workspace / "lancedb")).list_snapshots(), key=lambda s: s.created_at)[-1].name
        t0 = time.perf_counter()
        res = train.run(TrainConfig(task="recommender", snapshot=snapshot, workspace=str(workspace), text_tower="frozen",
                                    epochs=1, max_train_examples=4000, num_workers=1, alias="production", quiet=True))
        version = res.model_version
        out["trained"] = {"snapshot": snapshot, "seconds": round(time.perf_counter() - t0, 1), "metrics": res.metrics}
    res = recommend.run(RecommendConfig(workspace=str(workspace), model=version, k=50, quiet=True))
    out.update(model=version, precomputed_users=res.users)
    return out


def shoppers(workspace: Path) -> list[str]:
    import pandas as pd

    return pd.read_csv(workspace / "demo" / "users.csv")["user_id"].astype(str).tolist()


def events_batch(n: int, tag: str) -> list[dict[str, Any]]:
    now = datetime.now(timezone.utc).isoformat()
    return [{"event_id": f"{tag}-{uuid.uuid4().hex}", "event_type": "impression", "product_id": f"P{1 + i % 4000:06d}",
             "user_id": f"bench-user-{i % 300}", "session_id": f"bench-{tag}", "position": i % 20 + 1, "timestamp": now}
            for i in range(n)]


def in_process_home(config, users: list[str], seconds: float) -> dict[str, Any]:
    """The Recommender class itself, called in this process: one caller, then 16 threads."""
    from ray_app.privacy import pseudonymise, resolve_key
    from serve.recommender import Recommender

    key, _ = resolve_key()
    rec = Recommender.func_or_class(config.stage())
    rec.watcher.stop()
    ids = [pseudonymise(u, key) for u in users]
    out = {}
    for concurrency in (1, 16):
        latencies: list[float] = []
        lock, stop = threading.Lock(), time.perf_counter() + seconds

        def caller(w: int) -> None:
            i = w
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                rec.home(ids[i % len(ids)], None, None, 30)
                with lock:
                    latencies.append(1000 * (time.perf_counter() - t0))
                i += concurrency

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(caller, range(concurrency)))
        out[f"c{concurrency}"] = {"answers_per_s": round(len(latencies) / seconds, 2), "latency_ms": percentiles(latencies)}
    return out


def in_process_writes(db: str, seconds: float) -> dict[str, Any]:
    from ray_app.store import Store, rows_to_arrow

    store = Store(db)
    out = {}
    for name, size in (("commit_per_batch_of_100", 100), ("commit_per_event", 1)):
        n, stop = 0, time.perf_counter() + (seconds if size > 1 else seconds / 3)
        t0 = time.perf_counter()
        while time.perf_counter() < stop:
            rows = [dict(e, user_id="u_bench", session_id="s_bench") for e in events_batch(size, "inproc")]
            store.upsert("events", rows_to_arrow(rows, "events"), insert_only=True)
            n += size
        out[name] = {"events_per_s": round(n / (time.perf_counter() - t0), 1), "events": n}
    return out


def visibility(base: str, db: str, samples: int = 10) -> dict[str, Any]:
    from ray_app.store import Store

    store, table_ms, home_ms = Store(db), [], []
    for i in range(samples):
        shopper = f"fresh-{uuid.uuid4().hex[:8]}"
        event = {"event_id": f"vis-{uuid.uuid4().hex}", "event_type": "click", "product_id": "P000001", "user_id": shopper,
                 "timestamp": datetime.now(timezone.utc).isoformat()}
        r = requests.post(f"{base}/v1/events", json={"events": [event]}, headers={"X-API-Key": KEY}, timeout=60)
        acked = time.perf_counter()
        assert r.status_code == 200, r.text
        while not store.read("events", columns=["event_id"], where=f"event_id = '{event['event_id']}'").num_rows:
            time.sleep(0.005)
        table_ms.append(1000 * (time.perf_counter() - acked))
        while requests.get(f"{base}/v1/recommend/home", params={"user_id": shopper}, timeout=60).json()["strategy"] != "session":
            time.sleep(0.05)
        home_ms.append(1000 * (time.perf_counter() - acked))
    return {"to_a_fresh_table_read_ms": {"median": round(statistics.median(table_ms), 1), "max": round(max(table_ms), 1)},
            "to_the_shoppers_home_list_ms": {"median": round(statistics.median(home_ms), 1), "max": round(max(home_ms), 1)},
            "samples": samples}


def main() -> None:
    from ray import serve

    from schemas.serving import ServeAppConfig
    from serve.run import start

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default="/tmp/personal-shop")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--port", type=int, default=8411)
    ap.add_argument("--out", default="benchmarks/results/recs_serve.json")
    args = ap.parse_args()
    workspace = Path(args.workspace).resolve()
    db = str(workspace / "lancedb")
    summary: dict[str, Any] = {"benchmark": "recs_serve", "load_avg_1m_start": load_avg()}
    summary["model"] = ensure_model(workspace)
    users = shoppers(workspace)
    keys = Path(tempfile.mkdtemp()) / "keys.txt"
    keys.write_text(KEY + "\n")
    config = ServeAppConfig(workspace=str(workspace), db=db, models_dir=str(workspace / "models"), encoder="minilm",
                            understanding_model="none", ranker_model="none", refresh_s=1.0, recs_stats_refresh_s=600,
                            api_keys_file=str(keys), suggest=False,
                            deployments={"Recommender": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}},
                                         "EventWriter": {"num_replicas": 1}, "SearchIngress": {"num_replicas": 1},
                                         "Retriever": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
                                         "QueryUnderstanding": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
                                         })
    base = start(config, "127.0.0.1", args.port, timeout_s=600)
    try:
        bodies = [{"user_id": u, "size": 10} for u in users]
        home = {}
        for concurrency in (1, 16):
            home[f"c{concurrency}"] = asyncio.run(closed_loop(f"{base}/v1/recommend/home", bodies, concurrency, args.seconds,
                                                              warmup=3, method="GET"))
        batches = [{"events": events_batch(100, f"load{i}")} for i in range(400)]
        events = asyncio.run(closed_loop(f"{base}/v1/events", batches, 16, args.seconds, warmup=3, headers={"X-API-Key": KEY}))
        events["events_per_s"] = round(events["throughput_rps"] * 100, 1)
        summary["visibility"] = visibility(base, db)
    finally:
        serve.shutdown()
    summary["home_over_http"] = {k: {"answers_per_s": v["throughput_rps"], "latency_ms": v["latency_ms"],
                                     "errors": v["errors"]} for k, v in home.items()}
    summary["home_in_process"] = in_process_home(config, users, args.seconds)
    summary["events_over_http"] = {"concurrency": 16, "batch": 100, "events_per_s": events["events_per_s"],
                                   "latency_ms": events["latency_ms"], "errors": events["errors"]}
    summary["events_in_process"] = in_process_writes(db, args.seconds)
    summary["ratios"] = {
        "home_p50_http_vs_in_process_c1": round(summary["home_over_http"]["c1"]["latency_ms"]["p50"]
                                                / summary["home_in_process"]["c1"]["latency_ms"]["p50"], 2),
        "events_http_batched_vs_in_process_commit_per_event": round(
            events["events_per_s"] / summary["events_in_process"]["commit_per_event"]["events_per_s"], 1),
        "events_http_batched_vs_in_process_commit_per_batch": round(
            events["events_per_s"] / summary["events_in_process"]["commit_per_batch_of_100"]["events_per_s"], 2)}
    summary["load_avg_1m_end"] = load_avg()
    write_results(args.out, summary)


if __name__ == "__main__":
    main()
