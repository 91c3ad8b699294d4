"""What the cross-encoder's serving knobs cost and buy on ESCI150: re-ranking the hybrid first stage
(BM25 + untuned MiniLM, RRF, built by jobs.evaluate's own `build_systems`) on the 65 test queries,
full-catalogue protocol, with every variant side by side in one run:

- depth 50 and 20; max_length the ranker's own (128), 64 and 32;
- fp32 torch (`score_pairs`, serving's path), int8 dynamic quantisation of the Linear layers
  (`torch.ao.quantization.quantize_dynamic`), ONNX Runtime fp32 (the whole CrossEncoderRanker
  exported with `torch.onnx.export(dynamo=False)`) and ONNX Runtime with its own int8 dynamic
  quantisation; torch threads = ORT intra-op threads = 2 (`--threads`).

Per variant: full-catalogue NDCG@10 of plain `rerank` and of `rerank+rrf` (fused with the first
stage's order, as served), the paired bootstrap difference against fp32 at the ranker's own
max_length at the same depth and against fp32 depth 50, ms per query (median over queries of one
scoring call: tokenisation + forward over the query's top `depth`), per-candidate ms, achieved
GFLOP/s (FLOPs estimated from the padded shapes, benchmarks/serve_models.py) and its share of a
1024^3 fp32 matmul's GFLOP/s measured just before and after each query's round, and the speed-up
over the fp32 reference (median of per-query ratios). The first stage alone is the floor. The
machine is shared: for each query every variant scores in turn (the order rotated from one query
to the next), so ratios compare like with like; load averages and the machine's busy share are
recorded.

The ranker (trained on CPU for this benchmark: ESCI150 train split, 14 of its 85 queries carved off
for validation, 1 epoch, 19 min on 2 shared cores; at --batch-size 4 the training worker grew to
16 GB and was OOM-killed on the 23 GB machine; the workspace's store is a copy of an ESCI150
ingest + jobs.embed):

  python -m jobs.snapshot --workspace /tmp/rc-ws --name esci
  python -m jobs.train --workspace /tmp/rc-ws --task ranker --snapshot esci --ranker-loss listwise \\
      --epochs 1 --max-length 128 --lora-r 16 --lora-alpha 32 --lr 3e-4 --batch-size 2 \\
      --validation-fraction 0.15 --num-workers 1 --cpus-per-worker 2 --num-cpus 2

  OMP_WAIT_POLICY=PASSIVE python -m benchmarks.rerank_cost --workspace /tmp/rc-ws --snapshot esci \\
      [--ranker ranker@latest] [--queries 65] [--out benchmarks/results/rerank_cost.json]

OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads sleep instead of spinning when they wait (ORT's
spinning is switched off to match); on a shared 2-core machine under load, the default spin made a
20-candidate, 32-token forward with 2 threads about 4x slower than with 1 thread (1.7 s vs 0.44 s;
PASSIVE: 0.34 s), which would measure the scheduler, not the model.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_results  # noqa: E402
from benchmarks.rerank_variants import PRECISIONS, Variant, build_variants  # noqa: E402
from benchmarks.serve_load import machine, machine_busy  # noqa: E402
from benchmarks.serve_models import matmul_rate  # noqa: E402


def first_stage(workspace: str, snapshot: Optional[str], max_queries: Optional[int], log) -> dict[str, Any]:
    """jobs.evaluate's catalogue, judged test queries and hybrid system (BM25 + untuned MiniLM, RRF)."""
    from jobs.evaluate import build_systems, eval_queries, judged_lists
    from ray_app.eval_data import open_catalogue
    from ray_app.store import Store
    from schemas.evaluation import EvaluateConfig

    config = EvaluateConfig(workspace=workspace, dataset="esci", split="test", snapshot=snapshot, quiet=True,
                            max_queries=max_queries)
    store = Store(config.db)
    cat = open_catalogue(store, config.snapshot, config.fts_columns)
    queries_all = eval_queries(store, config)
    judged, unscored = judged_lists(store, config, queries_all, set(cat.texts))
    queries = [q for q in queries_all if q["query_id"] in judged][:config.max_queries]
    skipped: dict[str, str] = {}
    notes = [n for n in (cat.note,) if n]
    hybrid = build_systems(config, cat.tbl, cat.products, cat.texts, log, skipped, notes).get("hybrid")
    if hybrid is None:
        raise SystemExit(f"rerank_cost: no hybrid first stage in {config.db}: {skipped}")
    hybrid.prepare(queries)
    return {"config": config, "catalogue": cat, "queries": queries, "judged": judged, "unscored": unscored,
            "hybrid": hybrid, "notes": notes}


def measure(variants: list[Variant], stage: dict[str, Any], log) -> dict[str, Any]:
    """Every variant re-ranks every query, interleaved; per-query metrics, matmul references and loads."""
    from ray_app.evaluation import catalogue_metrics
    from ray_app.search import Rerank, RerankFusion

    config, hybrid, texts = stage["config"], stage["hybrid"], stage["catalogue"].texts
    k, recall_k = config.k, config.recall_k
    systems = {}
    for v in variants:
        rerank = Rerank(v, hybrid, texts, v.depth, "hybrid")
        systems[v.name] = (rerank, RerankFusion(rerank, config.rrf_k))
    first = stage["queries"][0]
    head = [texts[p] for p in hybrid.retrieve(first, max(v.depth for v in variants))]
    for v in variants:  # warm-up outside the figures: first calls allocate, ORT plans its kernels
        v.pairs([first["text"]] * v.depth, head[:v.depth])
    per_query: dict[str, list[dict[str, float]]] = {"hybrid": []}
    refs, loads = [], []
    for i, q in enumerate(stage["queries"]):
        grades = stage["judged"][q["query_id"]]
        per_query["hybrid"].append(catalogue_metrics(hybrid.retrieve(q, recall_k), grades, k, recall_k))
        before = matmul_rate(1024, 3)["gflops_per_s"]
        for v in variants[i % len(variants):] + variants[:i % len(variants)]:
            calls = len(v.ms)
            for kind, system in zip(("rerank", "rerank+rrf"), systems[v.name]):  # the fused one reuses the scores
                ranked = system.retrieve(q, recall_k)
                per_query.setdefault(f"{kind}:{v.name}", []).append(catalogue_metrics(ranked, grades, k, recall_k))
            if len(v.ms) == calls:  # nothing to score (no candidates): keep one entry per query
                v.ms.append(float("nan"))
                v.gflop.append(float("nan"))
        refs.append((before + matmul_rate(1024, 3)["gflops_per_s"]) / 2)
        loads.append(round(os.getloadavg()[0], 2))
        log(f"rerank_cost: query {i + 1}/{len(stage['queries'])} load {loads[-1]} matmul {refs[-1]:.0f} GFLOP/s")
    return {"per_query": per_query, "matmul_gflops_per_s": refs, "load_1min": loads}


def _median(values: list[float]) -> float:
    kept = [x for x in values if x == x]
    return round(statistics.median(kept), 3) if kept else float("nan")


def _agreement(v: Variant, ref: Variant) -> dict[str, float]:
    """How far a variant's scores are from fp32's at the same max_length, over the pairs both scored."""
    common = [key for key in v.seen if key in ref.seen]
    diffs = [abs(v.seen[key] - ref.seen[key]) for key in common] or [float("nan")]
    return {"pairs": len(common), "max_abs_diff": round(max(diffs), 5), "mean_abs_diff": round(sum(diffs) / len(diffs), 5)}


def summarise(variants: list[Variant], runs: dict[str, Any], own_length: int, resamples: int) -> dict[str, Any]:
    """Means, bootstrap differences, timings, rates and speed-ups per variant."""
    from ray_app.evaluation import mean_metrics, paired_bootstrap

    per_query, refs = runs["per_query"], runs["matmul_gflops_per_s"]
    ndcg = {name: [r["ndcg@10"] for r in rows] for name, rows in per_query.items()}
    by_name = {v.name: v for v in variants}
    out: dict[str, Any] = {"hybrid": mean_metrics(per_query["hybrid"])}
    top = by_name.get(f"fp32@50/{own_length}")
    for v in variants:
        ref = by_name.get(f"fp32@{v.depth}/{own_length}")
        same_length = by_name.get(f"fp32@{v.depth}/{v.max_length}")
        cell: dict[str, Any] = {"precision": v.precision, "depth": v.depth, "max_length": v.max_length}
        for kind in ("rerank", "rerank+rrf"):
            mine = ndcg[f"{kind}:{v.name}"]
            cell[kind] = mean_metrics(per_query[f"{kind}:{v.name}"])
            cell[kind]["minus_hybrid"] = paired_bootstrap(mine, ndcg["hybrid"], resamples)
            for label, other in (("minus_fp32_same_depth", ref), ("minus_fp32_depth50", top)):
                if other is not None and other is not v:
                    cell[kind][label] = paired_bootstrap(mine, ndcg[f"{kind}:{other.name}"], resamples)
        rates = [g / (ms / 1000) for g, ms in zip(v.gflop, v.ms)]
        cell.update(ms_per_query=_median(v.ms), ms_per_query_min=round(min(x for x in v.ms if x == x), 2),
                    per_candidate_ms=round(_median(v.ms) / v.depth, 3), gflop_per_query=_median(v.gflop),
                    gflops_per_s=_median(rates), share_of_matmul=_median([r / m for r, m in zip(rates, refs)]))
        for label, other in (("speedup_vs_fp32_same_depth", ref), ("speedup_vs_fp32_depth50", top)):
            if other is not None and other is not v:
                cell[label] = _median([a / b for a, b in zip(other.ms, v.ms)])
        if same_length is not None and same_length is not v:
            cell["scores_vs_fp32_same_length"] = _agreement(v, same_length)
        out[v.name] = cell
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True, help="a workspace with an ESCI150 store (ingest + embed) and a ranker")
    parser.add_argument("--snapshot", default=None, help="read queries, judgments and products as this snapshot pinned them")
    parser.add_argument("--ranker", default="ranker@latest")
    parser.add_argument("--queries", type=int, default=None, help="first N judged test queries (default all 65)")
    parser.add_argument("--depths", type=int, nargs="+", default=[50, 20])
    parser.add_argument("--max-lengths", type=int, nargs="+", default=None, help="default: the ranker's own, 64, 32")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rerank_cost.json"))
    args = parser.parse_args()
    import onnxruntime
    import torch

    from ray_app.registry import Registry

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started, busy0, cpu0 = time.perf_counter(), machine_busy(), time.process_time()
    info = {**machine(), "onnxruntime": onnxruntime.__version__, "torch_threads": args.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp spins, then sleeps)")}
    torch.set_num_threads(args.threads)
    stage = first_stage(args.workspace, args.snapshot, args.queries, log)
    loaded = Registry(stage["config"].models_dir).load_model(args.ranker, task="ranker")
    lengths = list(dict.fromkeys(args.max_lengths or [loaded.max_length, 64, 32]))
    with tempfile.TemporaryDirectory() as onnx_dir:
        variants, missing = build_variants(loaded, args.precisions, sorted(args.depths, reverse=True), lengths,
                                           Path(onnx_dir), args.threads, log)
        runs = measure(variants, stage, log)
    busy1, cpu1 = machine_busy(), time.process_time()
    wall = busy1[1] - busy0[1]
    busy_share, own_share = (busy1[0] - busy0[0]) / (wall * os.cpu_count()), (cpu1 - cpu0) / (wall * os.cpu_count())
    loads = runs["load_1min"]
    v = loaded.version
    notes = stage["notes"] + [f"{p} not measured: {why}" for p, why in missing.items()] + [
        f"machine {'LOADED' if max(loads) > os.cpu_count() else 'not saturated'}: 1-minute load median "
        f"{statistics.median(loads)}, max {max(loads)} on {os.cpu_count()} cores; the machine's CPUs were "
        f"{100 * busy_share:.0f}% busy, {100 * own_share:.0f}% by this process: read ratios and medians",
        "ms per query: one scoring call (tokenisation + forward over the query's top depth), first stage excluded; "
        "no product-vector cache (every product encoded alone on every call, as for products new to a replica)",
        "torch runs with OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "unset") + "; ONNX Runtime with "
        "intra-op spinning off: on a machine loaded past its cores, spinning threads of a 2-thread pool wait on "
        "each other's time slices (short forwards became several times slower with the default policy)",
        "FLOPs from the fp32 backbone's padded shapes (int8 and ONNX do the same multiply-adds); share_of_matmul: "
        "achieved GFLOP/s over a 1024^3 fp32 torch matmul's, measured before and after each query's round"]
    summary = {
        "benchmark": "rerank_cost", "dataset": "ESCI150 test split, full catalogue (6,764 products), judged queries",
        "queries": len(stage["queries"]), "unscored": stage["unscored"], "snapshot": args.snapshot,
        "machine": info, "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "load_1min_during": {"median": statistics.median(loads), "max": max(loads), "min": min(loads)},
        "machine_busy_share": round(busy_share, 3), "own_cpu_share": round(own_share, 3),
        "matmul_1024_gflops_per_s": {"median": _median(runs["matmul_gflops_per_s"]),
                                     "min": min(runs["matmul_gflops_per_s"]), "max": max(runs["matmul_gflops_per_s"])},
        "ranker": {"version": v.name, "requested": args.ranker, "pooling": loaded.model.pooling,
                   "max_length": loaded.max_length, "snapshot": v.snapshot, "base_model": v.base_model,
                   "metrics": v.metrics, "config": {key: v.config.get(key) for key in (
                       "ranker_loss", "epochs", "lr", "lora_r", "lora_alpha", "batch_size", "list_size",
                       "batch_negatives", "validation_fraction", "seed")}},
        "first_stage": stage["hybrid"].about, "depths": sorted(args.depths, reverse=True), "max_lengths": lengths,
        "precisions": [p for p in args.precisions if p not in missing], "bootstrap_resamples": args.bootstrap,
        "systems": summarise(variants, runs, loaded.max_length, args.bootstrap),
        "notes": notes, "seconds": round(time.perf_counter() - started, 1)}
    write_results(args.out, summary)


if __name__ == "__main__":
    main()
