"""Batch recommendation throughput: `jobs.recommend` (Ray Data, an actor pool that loads the model
and the catalogue's item vectors once per actor) against a plain single-process loop doing the
same work with the same model (histories -> user vectors -> scores over every product -> top-N,
the same rules), in one run, on the same users.

Setup: the store and model are built here unless given: Online Retail (`--retail`, default
../shared/data/online-retail when present, else the synthetic shop of jobs.generate) ingested and
snapshotted, then a recommender trained with `--text-tower frozen` for one epoch on a capped
number of examples (throughput does not depend on how good the model is, only on its size).
Figures: users/s (median of `--repeats`), the ratio Ray / plain loop, and the machine's load.
Results: benchmarks/results/recommend.json.

  python -m benchmarks.recommend [--retail PATH] [--workspace DIR] [--k 50] [--concurrency 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_avg, write_results  # noqa: E402


def _job(module, args: list[str]) -> dict:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = module.main(args)
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    if code != 0:
        raise SystemExit(f"{module.__name__} failed: {summary}")
    return summary


def build(workspace: str, retail: str | None) -> None:
    """Ingest, snapshot and a quickly trained recommender@production, unless the workspace has them."""
    from jobs import generate, ingest, snapshot, train

    ws = ["--workspace", workspace, "--quiet"]
    if Path(workspace, "models").exists():
        return
    if retail:
        _job(ingest, ["--source", "online-retail", "--path", retail, *ws])
    else:
        demo = str(Path(workspace) / "demo")
        _job(generate, ["--out", demo, *ws])
        for table, name in (("products", "products.jsonl"), ("events", "events.parquet")):
            _job(ingest, ["--table", table, "--path", str(Path(demo) / name), *ws])
    _job(snapshot, ["--name", "bench", *ws])
    _job(train, ["--task", "recommender", "--snapshot", "bench", "--text-tower", "frozen", "--epochs", "1",
                 "--max-train-examples", "2000", "--num-workers", "1", "--cpus-per-worker", "2", "--alias", "production", *ws])


def plain_loop(workspace: str, k: int, batch_size: int, threads: int) -> tuple[float, int]:
    """The same work in one process: load once, score every user in batches; (seconds, users)."""
    import torch

    from jobs.recommend import Recommend, user_rows
    from ray_app.registry import resolve
    from ray_app.store import Store
    from schemas.recs import RecommendConfig

    torch.set_num_threads(threads)
    config = RecommendConfig(workspace=workspace, k=k)
    version = resolve(config.model, config.models_dir, task="recommender")
    store = Store(config.db)
    rows = user_rows(store, config, int(version.config.get("max_history") or 20))
    import pyarrow as pa

    started = time.perf_counter()
    worker = Recommend(store.uri, None, version.name, config.models_dir, k, True, threads)
    for start in range(0, len(rows), batch_size):
        worker(pa.Table.from_pylist(rows[start:start + batch_size]))
    return time.perf_counter() - started, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_retail = ROOT.parent / "shared" / "data" / "online-retail"
    parser.add_argument("--retail", default=str(default_retail) if default_retail.exists() else None)
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recommend.json"))
    args = parser.parse_args()
    workspace = args.workspace or tempfile.mkdtemp(prefix="bench-recommend-")
    load_before = load_avg()
    build(workspace, args.retail)
    from jobs import recommend

    ray_runs, plain_runs, users = [], [], 0
    for _ in range(args.repeats):  # interleaved, so a load spike hits both
        summary = _job(recommend, ["--workspace", workspace, "--k", str(args.k), "--batch-size", str(args.batch_size),
                                   "--concurrency", str(args.concurrency), "--cpus-per-actor", "1", "--quiet"])
        ray_runs.append(summary["users_per_s"])
        seconds, users = plain_loop(workspace, args.k, args.batch_size, threads=args.concurrency)
        plain_runs.append(round(users / seconds, 1))
    ray_med, plain_med = statistics.median(ray_runs), statistics.median(plain_runs)
    write_results(args.out, {
        "benchmark": "recommend", "data": "online-retail" if args.retail else "synthetic", "users": users, "k": args.k,
        "ray": {"users_per_s": ray_runs, "median": ray_med, "actors": args.concurrency, "cpus_per_actor": 1},
        "plain_loop": {"users_per_s": plain_runs, "median": plain_med, "torch_threads": args.concurrency},
        "ratio_ray_over_plain": round(ray_med / plain_med, 3) if plain_med else None,
        "note": "Ray's figure counts scoring only (histories are built on the driver before, as in the loop); "
                "both load the model and encode the catalogue once per actor / once, inside the timing",
        "load_avg_before": load_before, "load_avg_after": load_avg(), "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
