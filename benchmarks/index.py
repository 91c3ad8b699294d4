"""Index benchmarks: embedding throughput, and ANN recall/latency against exact search.

(a) vectors/s of the Ray Data embed job (`jobs.embed`: encoder actor pool, read + plan + merge
    write included) against a plain single-process loop calling `encode_texts` on the same
    product texts with the same model; the Ray job runs as 2 actors x 1 CPU and 1 actor x 2 CPUs.
(b) on >= 100k random-but-clustered unit vectors (dim 384) in LanceDB: recall@10 and per-query
    latency (median, p95) of the IVF_PQ index (parameters from `ray_app.index.index_plan`) at a few
    nprobes / refine_factor settings, of LanceDB's flat scan, and of numpy brute force, against
    the exact top-10 computed with numpy.
The plain loop runs before and after the Ray runs; compare figures taken at a similar load.
Figures go to benchmarks/results/index.json (and stdout). The machine may be shared: the load
average before each part is recorded with the figures.

  python -m benchmarks.index [--products 2000] [--model minilm|tiny-bert] [--vectors 100000] [--queries 200]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_avg, write_results  # noqa: E402
from ray_app.index import build_vector_index, exact_search, index_plan, load_text_encoder, vector_array, vector_search  # noqa: E402
from ray_app.store import Store, rows_to_arrow  # noqa: E402


def synthetic_products(n: int, seed: int = 7) -> list[dict]:
    from ray_app.ingest.clean import CleanContext, clean_record
    from ray_app.synth_catalog import make_catalogue

    ctx = CleanContext(table="products", pseudonym_key="bench")
    rows = {}
    for line in make_catalogue(n, seed, messy=False).lines:
        row = clean_record(json.loads(line), ctx)
        rows[row["product_id"]] = row
    return list(rows.values())[:n]


def bench_embed(args, work: Path) -> dict:
    """(a) plain encode loop vs the Ray Data embed job on the same products and model."""
    from jobs import embed
    from ray_app.runtime import init_ray
    from ray_app.training.data import product_text
    from schemas.evaluation import EmbedConfig

    rows = synthetic_products(args.products)
    store = Store(str(work / "embed-db"))
    store.upsert("products", rows_to_arrow(rows, "products"))
    texts = [product_text(r) for r in rows]
    out: dict = {"products": len(rows), "model": args.model, "batch_size": args.batch_size,
                 "mean_text_chars": round(float(np.mean([len(t) for t in texts])), 1)}
    t0 = time.perf_counter()
    encoder = load_text_encoder(args.model, batch_size=args.batch_size)
    load_s = time.perf_counter() - t0

    def plain_loop() -> dict:
        before = load_avg()
        t0 = time.perf_counter()
        vectors = encoder.encode(texts)
        encode_s = time.perf_counter() - t0
        return {"torch_threads": __import__("torch").get_num_threads(), "model_load_s": round(load_s, 2),
                "encode_s": round(encode_s, 2), "vectors_per_s": round(len(texts) / encode_s, 1),
                "vectors_per_s_incl_load": round(len(texts) / (encode_s + load_s), 1), "dim": int(vectors.shape[1]),
                "load_avg_before": before}

    # plain loop before and after the Ray runs: on a shared machine the load changes between runs
    out["plain_loop_first"] = plain_loop()
    with warnings.catch_warnings():  # Ray fork+execs its processes; lancedb's fork warning does not apply
        warnings.filterwarnings("ignore", message="lancedb fork support")
        init_ray(num_cpus=2, quiet=True)
    for concurrency, cpus in ((2, 1.0), (1, 2.0)):
        config = EmbedConfig(db=store.uri, model=args.model, batch_size=args.batch_size, concurrency=concurrency,
                             cpus_per_actor=cpus, force=True, index="none", fts=False, quiet=True)
        before = load_avg()
        result = embed.run(config)
        out[f"ray_actors_{concurrency}x{int(cpus)}cpu"] = {
            "embedded": result.embedded, "embed_stage_s": result.embed_seconds, "vectors_per_s": result.vectors_per_s,
            "job_s": result.seconds, "vectors_per_s_job": round(result.embedded / result.seconds, 1),
            "load_avg_before": before}
    out["plain_loop_last"] = plain_loop()
    out["note"] = ("ray embed stage = actor start + model load per actor + encode + collect; job adds read, plan and "
                   "the merge write; plain = encode_texts in this process (model already loaded)")
    plain = max(out["plain_loop_first"]["vectors_per_s"], out["plain_loop_last"]["vectors_per_s"])
    best = max(v["vectors_per_s"] for k, v in out.items() if k.startswith("ray_actors"))
    out["ray_best_vs_plain_best"] = round(best / plain, 2)
    return out


def clustered_vectors(n: int, centres: np.ndarray, rng: np.random.Generator, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around random unit centres (noise norm ~ spread), like embeddings of product families."""
    dim = centres.shape[1]
    pick = rng.integers(0, len(centres), size=n)
    vectors = centres[pick] + rng.normal(scale=spread / np.sqrt(dim), size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def latency(fn, queries: np.ndarray) -> tuple[list[list[int]], dict]:
    found, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(fn(q))
        times.append(1000 * (time.perf_counter() - t0))
    return found, {"median_ms": round(float(np.median(times)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3)}


def recall_at(found: list[list[int]], truth: np.ndarray, k: int = 10) -> float:
    return round(float(np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth)])), 4)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class PeakRss:
    """This process's peak resident memory (MiB) while the block runs, sampled every 50 ms."""

    def __enter__(self):
        import threading

        import psutil

        self._proc, self._stop, self.mb = psutil.Process(), threading.Event(), 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.mb = max(self.mb, round(self._proc.memory_info().rss / 2**20, 1))
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench_ann(args, work: Path) -> dict:
    """(b) IVF_PQ recall@10 and latency against exact numpy search on clustered vectors."""
    import lancedb

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data = clustered_vectors(args.vectors, centres, rng)
    queries = clustered_vectors(args.queries, centres, rng)  # same clusters, not in the table
    truth, _ = exact_search(data, queries, 10)
    db_dir = work / "ann-db"
    tbl = lancedb.connect(str(db_dir)).create_table("vectors", pa.table({
        "product_id": pa.array([str(i) for i in range(len(data))]), "vector": vector_array(data)}))
    as_ids = lambda hits: [int(p) for p, _ in hits]  # noqa: E731
    out: dict = {"vectors": len(data), "dim": args.dim, "clusters": args.clusters, "queries": len(queries),
                 "load_avg_before": load_avg(), "metric": "recall@10 vs exact numpy top-10 (cosine)", "results": {},
                 "memory_note": "numpy brute force holds every vector in RAM (float32); the flat scan streams the "
                                "table from disk per query; an index's bytes are its files on disk (LanceDB caches "
                                "them in RAM once opened); build_peak_rss_mb is this process's peak RSS while it builds",
                 "memory": {"vectors_in_ram_mb": round(data.nbytes / 2**20, 1),
                            "table_on_disk_mb": round(dir_bytes(db_dir) / 2**20, 1)}}
    found, lat = latency(lambda q: exact_search(data, q, 10)[0][0].tolist(), queries)
    out["results"]["numpy_brute_force"] = {"recall@10": recall_at(found, truth), **lat}
    flat_queries = queries[: args.flat_queries]  # a flat scan of 1M rows takes seconds per query
    found, lat = latency(lambda q: as_ids(vector_search(tbl, q, 10, refine_factor=None)), flat_queries)  # no index yet
    out["results"]["lancedb_flat_scan"] = {"recall@10": recall_at(found, truth[: len(flat_queries)]), **lat,
                                           "queries": len(flat_queries)}
    plan = index_plan(len(data), args.dim, "ivf_pq")
    before = dir_bytes(db_dir)
    t0 = time.perf_counter()
    with PeakRss() as peak:
        build_vector_index(tbl, plan)
    out["ivf_pq"] = {"params": plan["params"], "build_s": round(time.perf_counter() - t0, 1),
                     "index_on_disk_mb": round((dir_bytes(db_dir) - before) / 2**20, 1), "build_peak_rss_mb": peak.mb}
    for nprobes, refine in args.settings:
        found, lat = latency(lambda q: as_ids(vector_search(tbl, q, 10, nprobes=nprobes, refine_factor=refine)), queries)
        out["results"][f"ivf_pq_nprobes{nprobes}_refine{refine or 0}"] = {"recall@10": recall_at(found, truth), **lat}
    if args.hnsw:
        plan = index_plan(len(data), args.dim, "ivf_hnsw_sq")
        before = dir_bytes(db_dir)
        t0 = time.perf_counter()
        with PeakRss() as peak:
            build_vector_index(tbl, plan)
        out["ivf_hnsw_sq"] = {"params": plan["params"], "build_s": round(time.perf_counter() - t0, 1),
                              "index_on_disk_mb": round((dir_bytes(db_dir) - before) / 2**20, 1),
                              "build_peak_rss_mb": peak.mb}
        found, lat = latency(lambda q: as_ids(vector_search(tbl, q, 10, nprobes=plan["params"]["nprobes"], refine_factor=None)), queries)
        out["results"]["ivf_hnsw_sq"] = {"recall@10": recall_at(found, truth), **lat}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--model", default="minilm", help="minilm or tiny-bert (a smoke run)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--flat-queries", type=int, default=200, help="queries timed on LanceDB's flat scan (slow at 1M)")
    parser.add_argument("--hnsw", action=argparse.BooleanOptionalAction, default=True, help="also measure IVF_HNSW_SQ")
    parser.add_argument("--settings", default="10:0,20:0,20:10,50:10",
                        type=lambda v: [(int(a), int(b) or None) for a, b in (x.split(":") for x in v.split(","))],
                        help="IVF_PQ query settings to time, nprobes:refine_factor,... (0 = no refine)")
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-ann", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "index.json"))
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    summary = {"benchmark": "index", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    if Path(args.out).is_file():  # a partial run (--skip-ann / --skip-embed) keeps the other part's figures
        previous = json.loads(Path(args.out).read_text())
        summary.update({k: previous[k] for k in previous if k == "embed" or k.startswith("ann")})
    try:
        if not args.skip_ann:  # one entry per size: ann (100k, the default) and ann_<n> for others
            key = "ann" if args.vectors == 100_000 else f"ann_{args.vectors}"
            earlier = summary.get(key, {})
            summary[key] = bench_ann(args, work)
            if not args.hnsw and "ivf_hnsw_sq" in earlier:  # --no-hnsw keeps an earlier run's HNSW figures (same seed)
                summary[key]["ivf_hnsw_sq"] = {**earlier["ivf_hnsw_sq"], "from_an_earlier_run": True}
                summary[key]["results"]["ivf_hnsw_sq"] = earlier["results"]["ivf_hnsw_sq"]
        if not args.skip_embed:
            summary["embed"] = bench_embed(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, summary)


if __name__ == "__main__":
    main()
