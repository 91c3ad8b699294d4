"""Ingest throughput: the Ray Data pipeline vs a plain single-process pandas + LanceDB loop.

Both paths do the same work on the same generated rows (200k+ product rows in JSONL shards, with
HTML descriptions, price strings and ~1% bad rows): parse, clean + validate every row with the
same `clean_record`, de-duplicate by key (latest wins), one merge_insert into LanceDB, quarantine
rows kept. The Ray path runs with 1 and then 2 CPUs. Each configuration is repeated and the
median rows/s reported; figures go to benchmarks/results/ingest.json.

  python -m benchmarks.ingest [--rows 200000] [--shards 8] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_results  # noqa: E402

from ray_app.ingest.clean import CleanContext, Reject, clean_record  # noqa: E402
from ray_app.ingest.pipeline import ingest_table  # noqa: E402
from ray_app.runtime import init_ray  # noqa: E402
from ray_app.store import Store, rows_to_arrow  # noqa: E402

WORDS = "red blue black light soft cotton wool leather running trail winter summer classic pro max mini ultra".split()


def make_shards(folder: Path, rows: int, shards: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    per = rows // shards
    for s in range(shards):
        lines = []
        for i in range(s * per, (s + 1) * per):
            words = " ".join(rng.choice(WORDS, 4))
            row = {"product_id": f"P{i:07d}", "title": f"Brand{i % 97} {words}", "brand": f"Brand{i % 97}",
                   "description": f"<p>{words} &amp; more</p><ul><li>{words}</li></ul>",
                   "category_path": f"Dept{i % 7} > Cat{i % 31}", "price": f"${rng.uniform(1, 900):,.2f}",
                   "rating": round(float(rng.uniform(1, 5)), 1), "stock": int(rng.integers(0, 50)),
                   "attributes": {"colour": str(rng.choice(WORDS[:3])), "size": str(int(rng.integers(1, 14)))}}
            if i % 100 == 0:
                row["price"] = "call us"  # 1% bad rows -> quarantine
            lines.append(json.dumps(row))
        (folder / f"products-{s:03d}.jsonl").write_text("\n".join(lines) + "\n")


def pandas_baseline(folder: Path, db: str) -> int:
    """Single process: pandas reads, the same clean_record per row, pandas dedup, one merge_insert."""
    ctx = CleanContext(table="products", pseudonym_key="bench")
    store = Store(db)
    ok, bad = [], []
    for path in sorted(folder.glob("*.jsonl")):
        frame = pd.read_json(path, lines=True, dtype=False)
        for n, rec in enumerate(frame.to_dict("records"), start=1):
            try:
                ok.append({**clean_record(rec, ctx), "_src": path.name, "_row": n})
            except Reject as exc:
                bad.append({"quarantine_id": f"{path.name}:{n}", "table": "products", "source": str(path), "row_number": n,
                            "raw": json.dumps(rec, default=str), "reason": exc.reason, "field": exc.field, "run_id": "pandas",
                            "created_at": ctx.now})
    accepted = pd.DataFrame(ok).drop_duplicates("product_id", keep="last").drop(columns=["_src", "_row"])
    table = pa.Table.from_pandas(accepted, preserve_index=False)
    store.upsert("products", table)
    if bad:
        store.upsert("quarantine", rows_to_arrow(bad, "quarantine"))
    return len(ok) + len(bad)


def ray_path(folder: Path, db: str) -> int:
    stats = ingest_table(Store(db), "products", [str(folder)], {"pseudonym_key": "bench"})
    return stats.read


def timed(fn, folder: Path, work: Path, repeats: int) -> list[float]:
    times = []
    for r in range(repeats):
        db = work / f"db-{fn.__name__}-{r}"
        start = time.perf_counter()
        n = fn(folder, str(db))
        times.append(time.perf_counter() - start)
        shutil.rmtree(db, ignore_errors=True)
    return times, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ingest.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    data = work / "input"
    data.mkdir()
    make_shards(data, args.rows, args.shards)
    results = {}
    times, n = timed(pandas_baseline, data, work, args.repeats)
    results["pandas_single_process"] = {"rows": n, "seconds": times}
    for cpus in (1, 2):
        init_ray(num_cpus=cpus, quiet=True)
        ray_path(data, str(work / "warmup"))  # worker start-up is not ingest throughput
        times, n = timed(ray_path, data, work, args.repeats)
        results[f"ray_data_{cpus}cpu"] = {"rows": n, "seconds": times}
        ray.shutdown()
    for r in results.values():
        r["median_seconds"] = round(statistics.median(r["seconds"]), 3)
        r["rows_per_second"] = round(r["rows"] / r["median_seconds"])
        r["seconds"] = [round(t, 3) for t in r["seconds"]]
    base = results["pandas_single_process"]["rows_per_second"]
    summary = {
        "benchmark": "ingest", "rows": args.rows, "shards": args.shards, "repeats": args.repeats,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "results": results,
        "ratios": {"ray_1cpu_vs_pandas": round(results["ray_data_1cpu"]["rows_per_second"] / base, 2),
                   "ray_2cpu_vs_pandas": round(results["ray_data_2cpu"]["rows_per_second"] / base, 2),
                   "ray_2cpu_vs_1cpu": round(results["ray_data_2cpu"]["rows_per_second"] / results["ray_data_1cpu"]["rows_per_second"], 2)},
    }
    write_results(args.out, summary)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
