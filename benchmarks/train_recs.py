"""The recommender's training cost: Ray Train (1 and 2 workers, the project's build_trainer and
train_loop_per_worker) against a plain PyTorch loop doing the same work without Ray (same model,
collate, item cache, optimizer, schedule, validation and checkpoint per epoch), on Online Retail's
time split (purchases before the cut), the text tower frozen (`--text-tower frozen`, as the README's
recommended CPU run). Timing and memory as benchmarks/train.py measures them (`steady`: median
interval between epoch ends for epochs >= 1; CPU seconds of the process tree).

  python -m jobs.ingest --source online-retail --path ../shared/data/online-retail --workspace /tmp/or_ws
  python -m jobs.snapshot --name retail --workspace /tmp/or_ws
  python -m benchmarks.train_recs --workspace /tmp/or_ws --snapshot retail [--max-train-examples 8000] [--epochs 3]

Writes benchmarks/results/train_recs.json.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import load_avg, write_results
from benchmarks.train import measure, plain_loop, ray_run, start_ray


def main() -> None:
    import ray

    from ray_app.store import Store
    from ray_app.training.data import load_task_data
    from ray_app.training.trainer import loop_config, recs_options
    from schemas.training import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default="/tmp/or_ws")
    ap.add_argument("--snapshot", default="retail")
    ap.add_argument("--base-model", default="minilm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-train-examples", type=int, default=8000)
    ap.add_argument("--runs", default="plain_1t,ray_1w,ray_2w")
    ap.add_argument("--out", default="benchmarks/results/train_recs.json")
    args = ap.parse_args()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    workspace = Path(args.workspace).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-train-recs-"))
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    load_start, started = load_avg(), time.perf_counter()

    def config(workers: int) -> TrainConfig:
        return TrainConfig(task="recommender", snapshot=args.snapshot, db=str(workspace / "lancedb"), base_model=args.base_model,
                           text_tower="frozen", epochs=args.epochs, max_train_examples=args.max_train_examples,
                           num_workers=workers, patience=0, keep_checkpoints=args.epochs, max_failures=0, quiet=True,
                           storage_path=str(work / "ray_results"), models_dir=str(work / "models"))

    try:
        base = config(1)
        data = load_task_data(Store(base.db), base.snapshot, "recommender", base.validation_fraction, base.seed,
                              base.hard_negatives, base.max_train_examples, recs=recs_options(base))
        n_train = len(data.splits["train"])
        results: dict[str, Any] = {}
        if "plain_1t" in runs:
            cfg = loop_config(base, data)
            results["plain_1t"] = measure("plain_1t", lambda: plain_loop(cfg, data, 1), n_train, 0.5)
            results["plain_1t"]["optimizer_steps_per_epoch"] = math.ceil(n_train / cfg["batch_size"])
        for name in [r for r in runs if r.startswith("ray_")]:
            start_ray()
            c = config(int(name[-2]))
            results[name] = measure(name, lambda c=c: ray_run(c, data), n_train, 0.5)
            results[name].update(num_workers=c.num_workers, optimizer_steps_per_epoch=math.ceil(n_train // c.num_workers / c.batch()))
            ray.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    def ratio(a: str, b: str, key: str):
        x, y = (results.get(a) or {}).get(key), (results.get(b) or {}).get(key)
        return round(x / y, 2) if x and y else None

    summary = {"benchmark": "train_recs", "task": "recommender (text tower frozen)", "data": {
        "snapshot": args.snapshot, "examples": data.counts(), "notes": data.notes, "items": len(data.label_spaces.get("items", []))},
        "config": {"base_model": args.base_model, "epochs": args.epochs, "batch_size_per_worker": base.batch(),
                   "max_train_examples": args.max_train_examples, "torch_threads": "1 per worker, 1 in the plain loop"},
        "results": results,
        "ratios": {f"{a}_vs_{b}_{k}": ratio(a, b, k) for a, b in (("ray_1w", "plain_1t"), ("ray_2w", "plain_1t"), ("ray_2w", "ray_1w"))
                   for k in ("samples_per_s_steady", "samples_per_s_total", "samples_per_cpu_s_steady")},
        "load_avg_1m": {"start": load_start, "end": load_avg()}, "benchmark_seconds": round(time.perf_counter() - started, 1)}
    write_results(args.out, summary)


if __name__ == "__main__":
    main()
