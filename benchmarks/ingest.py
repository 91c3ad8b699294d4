"""Ingest throughput and memory: the Ray Data pipeline vs a plain single-process pandas + LanceDB loop.

Both paths do the same work on the same generated product rows (HTML descriptions, price strings,
~1% bad rows, ~2% repeated ids), from ONE file per format (JSONL, CSV, Parquet), so the pipeline
has to split the file itself (byte ranges at line starts, Parquet row groups): parse, clean +
validate every row with the same `clean_record`, de-duplicate by key (latest wins), one
merge_insert into LanceDB, quarantine rows kept. The Ray path runs with each of --cpus. Every
configuration is repeated, the median rows/s reported, with the peak resident memory of the driver
and of the driver plus Ray's worker processes (sampled every 0.2 s), so memory can be read against
rows. Figures go to benchmarks/results/ingest.json.

  python -m benchmarks.ingest [--rows 100000,400000] [--formats jsonl,csv,parquet] [--cpus 1,2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_avg, write_results  # noqa: E402

from ray_app.ingest.clean import CleanContext, Reject, clean_record  # noqa: E402
from ray_app.ingest.pipeline import ingest_table  # noqa: E402
from ray_app.runtime import init_ray  # noqa: E402
from ray_app.store import Store, rows_to_arrow  # noqa: E402

WORDS = "red blue black light soft cotton wool leather running trail winter summer classic pro max mini ultra".split()
COLUMNS = ["product_id", "title", "brand", "description", "category_path", "price", "rating", "stock", "attributes"]


def make_rows(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)[rng.integers(0, len(WORDS), size=(rows, 4))]
    text = [" ".join(w) for w in words]
    ids = np.arange(rows)
    ids[rng.random(rows) < 0.02] //= 2  # ~2% repeat an earlier id: de-duplication has work
    prices = [f"${p:,.2f}" for p in rng.uniform(1, 900, rows)]
    for i in range(0, rows, 100):
        prices[i] = "call us"  # 1% bad rows -> quarantine
    colours, sizes = np.array(WORDS[:3])[rng.integers(0, 3, rows)], rng.integers(1, 14, rows)
    return pd.DataFrame({
        "product_id": [f"P{i:08d}" for i in ids], "title": [f"Brand{i % 97} {t}" for i, t in zip(ids, text)],
        "brand": [f"Brand{i % 97}" for i in ids],
        "description": [f"<p>{t} &amp; more</p><ul><li>{t}</li></ul>" for t in text],
        "category_path": [f"Dept{i % 7} > Cat{i % 31}" for i in ids], "price": prices,
        "rating": np.round(rng.uniform(1, 5, rows), 1), "stock": rng.integers(0, 50, rows),
        "attributes": [json.dumps({"colour": c, "size": str(s)}) for c, s in zip(colours, sizes)]})


def write_file(frame: pd.DataFrame, folder: Path, fmt: str) -> Path:
    path = folder / f"products.{fmt}"
    if fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=20_000)
    return path


def read_pandas(path: Path) -> pd.DataFrame:
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_parquet(path)


def pandas_baseline(path: Path, db: str) -> int:
    """Single process: pandas reads, the same clean_record per row, pandas dedup, one merge_insert."""
    ctx = CleanContext(table="products", pseudonym_key="bench")
    store = Store(db)
    ok, bad = [], []
    frame = read_pandas(path)
    for n, rec in enumerate(frame.to_dict("records"), start=1):
        try:
            ok.append({**clean_record(rec, ctx), "_row": n})
        except Reject as exc:
            bad.append({"quarantine_id": f"{path.name}:{n}", "table": "products", "source": str(path), "row_number": n,
                        "raw": json.dumps(rec, default=str), "reason": exc.reason, "field": exc.field, "run_id": "pandas",
                        "created_at": ctx.now})
    accepted = pd.DataFrame(ok).drop_duplicates("product_id", keep="last").drop(columns=["_row"])
    store.upsert("products", pa.Table.from_pandas(accepted, preserve_index=False))
    if bad:
        store.upsert("quarantine", rows_to_arrow(bad, "quarantine"))
    return len(ok) + len(bad)


def ray_path(path: Path, db: str) -> int:
    return ingest_table(Store(db), "products", [str(path)], {"pseudonym_key": "bench"}).read


class PeakMemory:
    """Peak RSS of this process, and of it plus Ray's worker processes (`ray::...`), sampled."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.driver, self.total = interval, 0, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            driver = me.memory_info().rss
            workers = 0
            for p in psutil.process_iter(["name"]):
                try:
                    if (p.info["name"] or "").startswith("ray::"):
                        workers += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.driver, self.total = max(self.driver, driver), max(self.total, driver + workers)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn, path: Path, work: Path, repeats: int) -> dict:
    seconds, driver, total, n = [], [], [], 0
    for r in range(repeats):
        db = work / f"db-{fn.__name__}-{r}"
        with PeakMemory() as mem:
            start = time.perf_counter()
            n = fn(path, str(db))
            seconds.append(time.perf_counter() - start)
        driver.append(mem.driver)
        total.append(mem.total)
        shutil.rmtree(db, ignore_errors=True)
    median = statistics.median(seconds)
    return {"rows": n, "seconds": [round(s, 2) for s in seconds], "median_seconds": round(median, 2),
            "rows_per_second": round(n / median), "peak_rss_mb_driver": round(max(driver) / 2**20),
            "peak_rss_mb_driver_and_workers": round(max(total) / 2**20)}


def run_one(config: str, rows: int, fmt: str, repeats: int) -> dict:
    """One configuration in this (fresh) process: its file, a warm-up, the timed repeats. Each runs
    in a process of its own so that peak memory is that configuration's alone."""
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        folder = work / "input"
        folder.mkdir()
        path = write_file(make_rows(rows), folder, fmt)
        if config == "pandas_single_process":
            return timed(pandas_baseline, path, work, repeats)
        init_ray(num_cpus=int(config.removeprefix("ray_data_").removesuffix("cpu")), quiet=True)
        warm = work / "warm"
        warm.mkdir()
        ray_path(write_file(make_rows(2_000, seed=1), warm, fmt), str(work / "warmup"))  # worker start-up is not throughput
        return timed(ray_path, path, work, repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    import subprocess

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,400000", help="comma-separated row counts")
    parser.add_argument("--formats", default="jsonl,csv,parquet")
    parser.add_argument("--cpus", default="1,2", help="comma-separated num_cpus of the local Ray")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", nargs=3, metavar=("CONFIG", "ROWS", "FORMAT"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ingest.json"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.one[2], args.repeats)))
        return
    sizes, formats = [int(r) for r in args.rows.split(",")], args.formats.split(",")
    configs = ["pandas_single_process"] + [f"ray_data_{c}cpu" for c in args.cpus.split(",")]
    results: dict[str, dict] = {}
    load_before = load_avg()
    for rows in sizes:
        for fmt in formats:
            for config in configs:
                out = subprocess.run([sys.executable, "-m", "benchmarks.ingest", "--one", config, str(rows), fmt,
                                      "--repeats", str(args.repeats)], cwd=ROOT, capture_output=True, text=True, check=True)
                results.setdefault(f"{fmt}-{rows}", {})[config] = json.loads(out.stdout.strip().splitlines()[-1])
                print(fmt, rows, config, results[f"{fmt}-{rows}"][config]["median_seconds"], file=sys.stderr, flush=True)
    ratios = {}
    for key, r in results.items():
        base = r["pandas_single_process"]["rows_per_second"]
        ratios[key] = {f"{name}_vs_pandas": round(v["rows_per_second"] / base, 2) for name, v in r.items() if name != "pandas_single_process"}
    summary = {
        "benchmark": "ingest", "rows": sizes, "formats": formats, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_before": load_before,
                    "load_avg_after": load_avg()},
        "results": results, "ratios": ratios,
        "notes": ["one input file per format: the Ray path splits it (JSONL/CSV byte ranges at line starts, Parquet "
                  "row groups of 20k rows); the pandas path reads it whole",
                  "each configuration runs in a fresh process (its file generated there, then a warm-up ingest), so "
                  "its peak memory is its own; peak_rss_mb_driver_and_workers adds every `ray::` process (idle "
                  "pooled workers included), not the raylet or GCS"]}
    write_results(args.out, summary)


if __name__ == "__main__":
    main()
