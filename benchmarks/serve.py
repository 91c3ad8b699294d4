"""Serving benchmark: the Ray Serve graph against a single-process FastAPI/uvicorn app running the
same library code with the same models, side by side in one run, on a trained workspace.

1. Model cost with plain torch on these cores (benchmarks/serve_models.py): MiniLM on one 16-token
   query and 16 batched, the cross-encoder on 20 and 50 candidates (64 tokens, and the ranker's
   own max_length), a plain fp32 matmul's FLOP/s as the reference, int8 dynamic quantisation.
2. Closed-loop HTTP load (benchmarks/loadgen.py, its own process pinned with taskset) at each
   concurrency against (a) the Serve graph (serve.run.start, one replica per deployment) and (b)
   benchmarks/single_process.py, with and without the cross-encoder; the two servers alternate at
   each level so that both see about the same machine. Throughput, p50/p95/p99, errors, degraded
   answers, the servers' `timings_ms` medians, load averages and CPU seconds per level.
3. Re-ranking depth 20 vs 50 (from 1.) and int8's full-catalogue NDCG@10 change on the demo's
   judged test queries.
4. Cold start (serve.run to the first full search answer) and Suggest p50/p99 over demo prefixes.

  python -m benchmarks.serve --workspace /tmp/mainrun [--seconds 30] [--concurrency 1,4,16,64] \\
      [--out benchmarks/results/serve.json]

Ports 8300 (Serve) and 8301 (single process) by default. Everything started here is shut down.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_results  # noqa: E402
from benchmarks.serve_load import (FirstSearch, derived, load_avg, machine, ratios, run_level,  # noqa: E402
                                   start_single, stop, suggest_latency)

RULES = str(ROOT / "serve" / "rules.yaml")


def demo_texts(workspace: str, n: int = 500) -> tuple[list[str], list[str]]:
    """(up to n distinct demo query texts in a fixed shuffled order, 50 product texts) from the store."""
    from ray_app.eval_data import _texts
    from ray_app.store import Store

    store = Store(str(Path(workspace) / "lancedb"))
    texts = sorted({q["text"] for q in store.read("queries", columns=["text"]).to_pylist() if q["text"]})
    random.Random(0).shuffle(texts)
    products = _texts(store.table("products").search().limit(None).to_arrow())
    docs = [products[p] for p in random.Random(1).sample(sorted(products), 50)]
    return texts[:n], docs


def prefixes_of(queries: list[str], n: int) -> list[str]:
    """Up to n distinct typed prefixes (2+ characters) of the queries, in typing order."""
    out: dict[str, None] = {}
    for q in queries:
        for end in range(2, len(q) + 1):
            out.setdefault(q[:end])
            if len(out) >= n:
                return list(out)
    return list(out)


def replica_threads() -> dict[str, Any]:
    """OMP_NUM_THREADS of every Serve replica process of this driver (what Ray gave each)."""
    import psutil

    out: dict[str, Any] = {}
    for p in psutil.Process().children(recursive=True):
        try:
            title = " ".join(p.cmdline())
            if "ServeReplica" in title:
                out[title.split(":")[-1].split()[0]] = p.environ().get("OMP_NUM_THREADS")
        except (psutil.Error, IndexError):
            pass
    return out


MODES = {"with_ranker": "none", "with_ranker_int8": "int8", "no_ranker": None}  # mode -> ranker_quantize (None: no ranker)


def deploy_serve(workspace: str, port: int, ranker_model: str, query: str, quantize: str = "none") -> dict[str, Any]:
    """Deploy the app (one replica per deployment); time to healthy and to the first full answer."""
    from schemas.serving import ServeAppConfig
    from serve.app import DEPLOYMENTS
    from serve.run import start

    config = ServeAppConfig(workspace=workspace, ranker_model=ranker_model, rules=RULES, ranker_quantize=quantize,
                            deployments={d: {"num_replicas": 1} for d in DEPLOYMENTS})
    first = FirstSearch(f"http://127.0.0.1:{port}", query)
    t0 = time.perf_counter()
    start(config, "127.0.0.1", port, timeout_s=600)
    healthy = round(time.perf_counter() - t0, 2)
    return {"serve_run_to_healthz_s": healthy, **first.wait(), "healthz_poll_interval_s": 1.0}


def load_levels(args, work: Path, queries_file: str, query: str, prefixes: list[str], ray_init_s: float) -> dict[str, Any]:
    """Part 2 and 4 for both modes (with and without the cross-encoder); shuts down what it starts."""
    from ray import serve

    from serve.app import APP_NAME

    serve_url, single_url = f"http://127.0.0.1:{args.port}", f"http://127.0.0.1:{args.port + 1}"
    loadgen_cpu = None if args.loadgen_cpu < 0 else args.loadgen_cpu
    out: dict[str, Any] = {"ray_init_s": ray_init_s}
    single = None
    try:
        for mode in args.modes:
            quantize = MODES[mode] or "none"
            ranker_model = args.ranker_model if MODES[mode] else "none"
            print(f"[serve bench] {mode}: deploying the Serve graph", file=sys.stderr, flush=True)
            res: dict[str, Any] = {"ranker_model": ranker_model, "ranker_quantize": quantize, "cold_start": {}}
            res["cold_start"]["serve"] = {"load_avg_before": load_avg(),
                                          **deploy_serve(args.workspace, args.port, ranker_model, query, quantize)}
            res["serve_replica_omp_threads"] = replica_threads()
            res["cold_start"]["single"] = {"load_avg_before": load_avg()}
            single, cold = start_single(args.workspace, args.port + 1, ranker_model, args.torch_threads,
                                        args.server_cpus, query, work / f"single-{mode}.log", quantize)
            res["cold_start"]["single"].update({"spawn_to_first_full_answer_s": cold["to_first_full_answer_s"], **cold})
            trees = {"serve": (os.getpid(), [single.pid], False), "single": (single.pid, [], True)}
            res["levels"] = {}
            for c in args.concurrency:
                pair = {}
                for name, url in (("serve", serve_url), ("single", single_url)):
                    print(f"[serve bench] {mode} c={c} {name}", file=sys.stderr, flush=True)
                    pair[name] = run_level(f"{url}/v1/search", queries_file, c, args.seconds, args.warmup, loadgen_cpu,
                                           trees, name)
                res["levels"][str(c)] = pair
            res["serve_over_single"] = ratios(res["levels"])
            if mode == "with_ranker" and prefixes:
                res["suggest_http"] = {"serve": suggest_latency(serve_url, prefixes),
                                       "single": suggest_latency(single_url, prefixes)}
            stop(single)
            single = None
            serve.delete(APP_NAME)
            out[mode] = res
    finally:
        if single is not None:
            stop(single)
        serve.shutdown()
    return out


def in_process_suggest(workspace: str, prefixes: list[str]) -> dict[str, Any]:
    """SuggestIndex.complete alone (no HTTP): the library's share of a suggest request."""
    import numpy as np

    from ray_app.search.suggest import SuggestIndex
    from ray_app.store import Store

    index = SuggestIndex.from_store(Store(str(Path(workspace) / "lancedb")))
    times = []
    for p in prefixes:
        t0 = time.perf_counter()
        index.complete(p, None, 10)
        times.append(1000 * (time.perf_counter() - t0))
    return {"prefixes": len(prefixes), "p50_ms": round(float(np.percentile(times, 50)), 3),
            "p99_ms": round(float(np.percentile(times, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True, help="a trained workspace (jobs.main): lancedb/ and models/")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds per level (at least)")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--modes", default=",".join(MODES), help=f"load modes, from {', '.join(MODES)}")
    parser.add_argument("--ranker-model", default="ranker@production")
    parser.add_argument("--port", type=int, default=8300, help="Serve's port; the single process takes port + 1")
    parser.add_argument("--torch-threads", type=int, default=2, help="the single process's torch threads")
    parser.add_argument("--server-cpus", default=None, help="taskset list for the servers (default: every core)")
    parser.add_argument("--loadgen-cpu", type=int, default=None, help="the load generator's core (default: the last; -1: unpinned)")
    parser.add_argument("--reps", type=int, default=15, help="repetitions of each model-cost measurement")
    parser.add_argument("--prefixes", type=int, default=300)
    parser.add_argument("--int8-queries", type=int, default=None, help="judged test queries for int8's NDCG (default all)")
    parser.add_argument("--skip-int8-eval", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args()
    args.workspace = str(Path(args.workspace).resolve())
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"--modes: unknown {', '.join(unknown)}; known: {', '.join(MODES)}")
    cores = os.cpu_count() or 1
    args.server_cpus = args.server_cpus or f"0-{cores - 1}"
    if args.loadgen_cpu is None:
        args.loadgen_cpu = cores - 1 if cores > 1 else -1
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.sched_setaffinity(0, {int(c) for part in args.server_cpus.split(",") for c in
                             (range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1))})
    from ray_app.registry import Registry

    from benchmarks.serve_models import int8_quality, model_costs

    queries, docs = demo_texts(args.workspace)
    query = next(q for q in queries if len(q.split()) >= 2)
    ranker = Registry(str(Path(args.workspace) / "models")).load_model(args.ranker_model, task="ranker")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    queries_file = str(work / "queries.json")
    Path(queries_file).write_text(json.dumps(queries))
    prefixes = prefixes_of(queries, args.prefixes)
    summary: dict[str, Any] = {"benchmark": "serve", "machine": machine(), "settings": {
        "workspace": args.workspace, "seconds": args.seconds, "warmup_min_s": args.warmup, "concurrency": args.concurrency,
        "ranker_model": f"{args.ranker_model} = {ranker.version.name}", "rerank_depth_served": 20,
        "queries": len(queries), "server_cpus": args.server_cpus, "loadgen_cpu": args.loadgen_cpu,
        "single_process_torch_threads": args.torch_threads, "single_process_model_workers": 1,
        "serve_replicas": "1 per deployment (num_replicas: 1); Ray started with num_cpus = the machine's cores",
        "rules": "serve/rules.yaml (both)"}}
    print(f"[serve bench] model cost (load {load_avg()})", file=sys.stderr, flush=True)
    summary["model_cost"] = {"load_avg_before": load_avg(),
                             **model_costs(ranker, query, docs, queries, [1, 2], args.reps), "load_avg_after": load_avg()}
    summary["suggest_in_process"] = in_process_suggest(args.workspace, prefixes)
    from ray_app.runtime import init_ray
    import ray

    t0 = time.perf_counter()
    init_ray(num_cpus=cores)
    try:
        summary["load"] = load_levels(args, work, queries_file, query, prefixes, round(time.perf_counter() - t0, 2))
    finally:
        ray.shutdown()
    if not args.skip_int8_eval:
        print(f"[serve bench] int8 NDCG (load {load_avg()})", file=sys.stderr, flush=True)
        summary["int8_quality"] = {"load_avg_before": load_avg(), **int8_quality(
            args.workspace, ranker, [20], args.int8_queries, lambda m: print(m, file=sys.stderr, flush=True))}
    summary["notes"] = NOTES
    summary["derived"] = derived(summary)
    write_results(args.out, summary)


NOTES = [
    "FLOPs: 2 x (parameters of the transformer layers, embeddings excluded: lookups) x padded tokens + 4 x layers x "
    "seq^2 x hidden per sequence (attention scores and weighted sum); softmax, GELU, norms, pooling left out. "
    "share_of_matmul = model GFLOP/s / GFLOP/s of a 1024^3 fp32 torch matmul at the same thread count.",
    "The residual cross-encoder runs the encoder three times per request: on each (query, product) pair, on each "
    "product alone and on the query alone; its FLOPs count all three (shapes in the file).",
    "Serve: one replica per deployment; model replicas reserve num_cpus 0.5 and set torch threads to their "
    "assigned CPUs (int(0.5) -> at least 1), so QueryUnderstanding, Retriever and Ranker run 1 torch thread each "
    "and share the cores with the ingress, Suggest, proxy, controller and Ray's own processes. The single process "
    "runs torch with --torch-threads threads and one model-work thread (requests in turn, no cross-request batching).",
    "Load generator: its own process, pinned with taskset to --loadgen-cpu; the servers are pinned to --server-cpus "
    "(on a 2-core machine both cores, so the generator shares one of them: its CPU seconds are in each level).",
    "Throughput counts answers completed in the window; latency is theirs. A degraded answer (ranker timed out or "
    "overloaded: the first stage's order) is a 200 and counts in throughput; full_answer_* count only answers "
    "without `degraded`.",
    "cpu_s: CPU seconds over the whole level (warm-up, window, drain) of each server's process tree (Serve: every "
    "Ray process of this driver, including the idle graph while the single process is measured); "
    "machine_busy_cores: all CPU work on the machine, other people's included. derived.serve_cores_while_single_ran: "
    "the Serve graph's CPU (cores) during each single-process level; above its idle level it is work Serve was "
    "still doing for its own level's requests (a ranker batch goes on after its callers timed out).",
    "int8: torch.ao.quantization.quantize_dynamic on every nn.Linear of the ranker (qint8 weights, activations "
    "quantised per batch); quality on the synthetic demo shop only. Mode with_ranker_int8 serves it in both servers "
    "(ranker_quantize: int8).",
    "Product cache: a loaded ranker keeps each product's encoding-alone (ray_app/models/scoring.py), in the Serve "
    "Ranker and in the single process alike; model_cost's score_pairs_served is with every product new (cold), "
    "score_pairs_served_cached with all of them seen before.",
]


if __name__ == "__main__":
    main()
