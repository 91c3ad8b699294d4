"""A/B arms of the ranking stage served two ways, measured side by side in one run: every arm held
by every Ranker replica (serve.ranker, the shipped design) against Serve's model multiplexing
(benchmarks/multiplex_ranker.py), through DeploymentHandles only (no HTTP, so the figures are the
ranking stage's).

The workspace is copied under /tmp and a second ranker version of the same base (ranker-v1's LoRA
adapter with lora_B halved: different scores, the same cost) is registered there as `candidate`.
A fixed set of (query, 20 candidate texts) requests from the demo store is split 90/10 between
production and candidate by a stable hash of a synthetic user id (serve.ranking.assign_arm) and
sent closed-loop at each concurrency. Each variant is deployed, checked (same orders as the first
variant, the version each arm asked for), measured and deleted in turn; a second pass runs them in
the reverse order, since the machine is shared.

  python -m benchmarks.serve_multiplex [--workspace /tmp/serve-bench/ws] [--seconds 15] \\
      [--concurrency 4,16] [--passes 2] [--out benchmarks/results/serve_multiplex.json]
"""
from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_results  # noqa: E402
from benchmarks.handle_loadgen import closed_loop  # noqa: E402
from benchmarks.serve_load import load_avg, machine  # noqa: E402

APP = "ranker-multiplex-bench"
CANDIDATES = 20
VARIANTS = {  # name -> (what it is, replicas, max models per replica; None: all arms held)
    "all_held_1r": ("serve.ranker.Ranker, 1 replica holding both arms; a batch mixes arms, one forward per arm", 1, None),
    "multiplexed_1r_2m": ("@serve.multiplexed, 1 replica, max_num_models_per_replica=2 (both arms stay loaded)", 1, 2),
    "multiplexed_2r_1m": ("@serve.multiplexed, 2 replicas, max_num_models_per_replica=1: one arm per replica, "
                          "Serve routes by model id", 2, 1),
    "all_held_2r": ("serve.ranker.Ranker, 2 replicas each holding both arms (the same CPUs as multiplexed_2r_1m)", 2, None),
    "multiplexed_1r_1m": ("@serve.multiplexed, 1 replica, max 1 model: every switch of arm evicts and reloads", 1, 1),
}


def prepare_workspace(source: Path, work: Path) -> tuple[Path, dict[str, str]]:
    """A copy of `source` with a second ranker version (candidate); {arm: version}."""
    from safetensors.torch import load_file, save_file

    from ray_app.registry import Registry

    ws = work / "ws"
    shutil.copytree(source, ws, ignore=shutil.ignore_patterns(".registry.lock"))
    registry = Registry(ws / "models")
    base = registry.resolve("ranker@production")
    entry = base.model_dump(exclude={"name", "task", "version", "path", "created_at", "aliases"})

    def save(folder: Path) -> dict[str, Any]:
        shutil.copytree(base.path, folder, dirs_exist_ok=True)
        weights = folder / "adapter" / "adapter_model.safetensors"
        tensors = load_file(str(weights))
        save_file({k: v * 0.5 if "lora_B" in k else v for k, v in tensors.items()}, str(weights))
        return {}

    entry["config"] = {**entry["config"], "derived_from": base.name, "lora_B_scale": 0.5,
                       "purpose": "benchmarks/serve_multiplex.py: a second version of the same base"}
    entry["metrics"] = {}
    candidate = registry.add("ranker", save, **entry)
    registry.promote(candidate.name, "candidate")
    return ws, {"production": base.name, "candidate": candidate.name}


def build_requests(ws: Path, n: int, experiment, versions: dict[str, str]) -> list[dict[str, Any]]:
    """n (query, first-stage candidates) requests: a demo query's judged products (best first),
    filled to 20 from a fixed sample; each with a synthetic user's arm and that arm's version."""
    from ray_app.eval_data import _texts
    from ray_app.store import Store
    from serve.ranking import assign_arm

    store = Store(str(ws / "lancedb"))
    texts = _texts(store.table("products").search().limit(None).to_arrow())
    queries = {q["query_id"]: q["text"] for q in store.read("queries", columns=["query_id", "text"]).to_pylist() if q["text"]}
    judged: dict[str, list[tuple[float, str]]] = {}
    for j in store.read("judgments", columns=["query_id", "product_id", "gain"]).to_pylist():
        if j["query_id"] in queries and j["product_id"] in texts:
            judged.setdefault(j["query_id"], []).append((-j["gain"], j["product_id"]))
    rng, pool = random.Random(0), sorted(texts)
    ids = sorted(judged)
    rng.shuffle(ids)
    out = []
    for k in range(n):
        qid = ids[k % len(ids)]
        pids = [p for _, p in sorted(judged[qid])][:CANDIDATES]
        pids += [p for p in rng.sample(pool, 3 * CANDIDATES) if p not in pids][:CANDIDATES - len(pids)]
        first = {"candidates": [{"product_id": p, "text": texts[p], "score": round(1 / (60 + r), 6)}
                                for r, p in enumerate(pids, start=1)]}
        arm = assign_arm(f"bench-user-{k}", experiment)
        out.append({"query": queries[qid], "first": first, "arm": arm, "version": versions[arm]})
    return out


def deploy(name: str, config: dict[str, Any], args) -> tuple[Callable, Callable]:
    """Deploy a variant; (call(request) -> awaitable answer, stats(since, until) -> per-replica stats)."""
    from ray import serve

    from benchmarks.multiplex_ranker import MeasuredRanker, MultiplexedRanker
    from serve.ranker import Ranker

    _, replicas, max_models = VARIANTS[name]
    batching = {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_s}
    if max_models is None:
        app = Ranker.options(func_or_class=MeasuredRanker, num_replicas=replicas, autoscaling_config=None,
                             user_config=batching).bind(config)
    else:
        app = MultiplexedRanker.options(num_replicas=replicas).bind(config, max_models, *batching.values())
    handle = serve.run(app, name=APP, route_prefix=None)
    if max_models is None:
        def call(r):
            return handle.rank.remote(r["query"], r["first"], r["arm"], 0.0)
        by_model = [handle] * 8
    else:
        per_version = {v: handle.options(multiplexed_model_id=v) for v in args.versions.values()}

        def call(r):
            return per_version[r["version"]].rank.remote(r["query"], r["first"])
        by_model = list(per_version.values()) + [handle] * 8  # the holders of each id, then any replica

    async def stats(since: float, until: float) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for h in by_model:  # Serve routes a call to one replica: ask until every replica answered
            s = await h.bench_stats.remote(since, until)
            seen.setdefault(s["replica"], s)
        return sorted(seen.values(), key=lambda s: s["replica"])

    return call, stats


async def run_variant(name: str, config: dict[str, Any], requests: list[dict], reference: dict[tuple, list], args) -> dict[str, Any]:
    """Deploy, check, measure every level and delete one variant."""
    from ray import serve

    t0, load0 = time.perf_counter(), load_avg()
    call, stats = deploy(name, config, args)
    res: dict[str, Any] = {"what": VARIANTS[name][0], "deploy_s": round(time.perf_counter() - t0, 1), "load_avg_at_deploy": load0}
    try:
        # One request of each arm first, in turn, so that a multiplexed model id is loaded (and
        # known to the router) before load arrives, as after a rollout.
        for arm in ("production", "candidate"):
            await call(next(r for r in requests if r["arm"] == arm))
            await asyncio.sleep(0.5)
        # Correctness: the first 4 requests under both arms give the first variant's orders, and
        # the arms' orders differ (so a request scored by the wrong model would show)
        orders = {}
        for i in range(4):
            for arm, version in args.versions.items():
                answer = await call({**requests[i], "arm": arm, "version": version})
                orders[(i, arm)] = [p for p, _ in answer["order"]]
        res["same_order_as_first_variant"] = f"{sum(reference.setdefault(k, o) == o for k, o in orders.items())}/{len(orders)}"
        res["arms_give_different_orders"] = f"{sum(orders[(i, 'production')] != orders[(i, 'candidate')] for i in range(4))}/4"
        res["levels"] = {}
        for c in args.concurrency:
            print(f"[multiplex bench] {name} c={c} (load {load_avg()})", file=sys.stderr, flush=True)
            level = await closed_loop(call, requests, c, args.seconds, args.warmup)
            level["replicas"] = await stats(*level["window_epoch_s"])
            res["levels"][str(c)] = level
    finally:
        serve.delete(APP)
    return res


def table(passes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (pass, variant, level): the figures the README quotes."""
    rows = []
    for p, run in enumerate(passes, start=1):
        for name, res in run.items():
            for c, lv in res["levels"].items():
                reps = lv["replicas"]
                forwards = sum(r["forwards"] for r in reps)
                rows.append({"pass": p, "variant": name, "concurrency": int(c), "rps": round(lv["throughput_rps"], 2),
                             "p50_ms": lv["latency_ms"]["p50"], "p95_ms": lv["latency_ms"]["p95"],
                             "p99_ms": lv["latency_ms"]["p99"], "errors": sum(lv["errors"].values()),
                             "requests_per_forward": round(sum(r["requests"] for r in reps) / forwards, 2) if forwards else None,
                             "model_loads_in_window": sum(r["model_loads_in_window"] for r in reps),
                             "rss_mb": [r["rss_mb"] for r in reps], "load_avg_1m": lv["load_avg_before"][0]})
    return rows


def by_variant(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per variant and concurrency: the mean over passes of throughput and latency percentiles."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key in sorted({(r["variant"], r["concurrency"]) for r in rows}, key=lambda k: (list(VARIANTS).index(k[0]), k[1])):
        group = [r for r in rows if (r["variant"], r["concurrency"]) == key]
        mean = {f: round(sum(r[f] or 0 for r in group) / len(group), 2) for f in ("rps", "p50_ms", "p95_ms", "p99_ms")}
        out.setdefault(key[0], {})[str(key[1])] = {**mean, "passes": len(group), "errors": sum(r["errors"] for r in group),
                                                  "model_loads_in_window": sum(r["model_loads_in_window"] for r in group)}
    return out


async def run_all(args, config: dict[str, Any], requests: list[dict]) -> list[dict[str, Any]]:
    passes, reference = [], {}
    for p in range(args.passes):
        names = args.variants if p % 2 == 0 else list(reversed(args.variants))
        names = [n for n in names if p == 0 or n not in args.once]
        run = {}
        for name in names:
            run[name] = await run_variant(name, config, requests, reference, args)
        passes.append(run)
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default="/tmp/serve-bench/ws",
                        help="a trained workspace (lancedb/, models/ with ranker@production); copied, never changed")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--concurrency", default="4,16")
    parser.add_argument("--passes", type=int, default=2, help="passes over the variants, every other one in reverse order")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--once", default="multiplexed_1r_1m", help="variants measured in the first pass only")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-batch-size", type=int, default=2, help="both designs (the Ranker's shipped user_config)")
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--port", type=int, default=8350, help="Serve's HTTP port (the proxy; the benchmark uses handles)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_multiplex.json"))
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    args.once = {v for v in args.once.split(",") if v}
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
    import ray
    from ray import serve

    from ray_app.runtime import init_ray
    from schemas.serving import Arm, Experiment, ServeAppConfig

    work = Path(tempfile.mkdtemp(prefix="serve-multiplex-"))
    ws, args.versions = prepare_workspace(Path(args.workspace).resolve(), work)
    experiment = Experiment(name="multiplex-bench", arms={"production": Arm(model="ranker@production", share=0.9),
                                                          "candidate": Arm(model="ranker@candidate", share=0.1)})
    config = ServeAppConfig(workspace=str(ws), experiment=experiment, torch_threads=1, suggest=False).stage()
    requests = build_requests(ws, args.requests, experiment, args.versions)
    summary: dict[str, Any] = {"benchmark": "serve_multiplex", "machine": machine(), "settings": {
        "workspace": f"copy of {Path(args.workspace).resolve()} at {ws}", "arms": args.versions, "split": "90/10 by "
        "serve.ranking.assign_arm of synthetic user ids", "requests": len(requests), "candidates_per_request": CANDIDATES,
        "candidate_share_of_requests": round(sum(r["arm"] == "candidate" for r in requests) / len(requests), 3),
        "seconds": args.seconds, "warmup_min_s": args.warmup, "concurrency": args.concurrency, "passes": args.passes,
        "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_s, "torch_threads_per_replica": 1,
        "ray_num_cpus": 2, "replica_num_cpus": 0.5, "max_ongoing_requests": 16, "max_queued_requests": 32},
        "variants": {n: VARIANTS[n][0] for n in args.variants}}
    init_ray(num_cpus=2)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        passes = asyncio.run(run_all(args, config, requests))
    finally:
        serve.shutdown()
        ray.shutdown()
    summary["table"] = table(passes)
    summary["mean_over_passes"] = by_variant(summary["table"])
    summary["passes"] = passes
    summary["load_avg_end"] = load_avg()
    summary["notes"] = NOTES
    write_results(args.out, summary)
    shutil.rmtree(work, ignore_errors=True)


NOTES = [
    "Ray 2.60 batching with multiplexing (ray/serve/batching.py _split_batch_by_model_id, _process_sub_batches): "
    "@serve.batch collects up to max_batch_size requests of any model id, then splits the batch by "
    "multiplexed_model_id and runs the sub-batches concurrently (asyncio tasks under one max_concurrent_batches "
    "permit); serve.get_multiplexed_model_id() inside the batch method returns the sub-batch's id. So a batch "
    "fills per model only: the 10% arm's calls hold fewer requests, and two models' forwards can run at once.",
    "Routing (ray/serve/_private/request_router): a request with a model id goes to a replica that has it; when "
    "none has it, or the holder rejected it (at max_ongoing_requests), to the replica with the fewest models, "
    "which loads it (evicting its LRU model past max_num_models_per_replica); after "
    "RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S (1 s) to any replica. Replicas push their model ids every 0.1 s.",
    "all_held: the shipped serve.ranker.Ranker code, subclassed only to log batch calls and loads; it runs the arms "
    "of a batch one after another, one forward each (max_concurrent_forwards 1). requests_per_forward = requests / "
    "model forward calls (score_pairs calls), the batch that actually reached a model.",
    "Every loaded arm is a full MiniLM cross-encoder with its LoRA merged (about 90 MB of fp32 weights), so a replica "
    "holding two arms holds two encoders; rss_mb is psutil RSS of each replica process at the end of the level.",
    "Each LoadedModel keeps its own product-vector cache (ray_app/models/scoring.py); the fixed request set warms it "
    "in every variant; an evicted model (multiplexed_1r_1m) loses it.",
    "A request costs about a second of one core here (MiniLM cross-encoder, 20 pairs of up to 128 tokens, 1 torch "
    "thread), so a level of --seconds 12 holds 8-17 answers: p95/p99 are close to the maximum and throughput moves "
    "in steps of 1/seconds rps; read differences under ~0.2 rps as noise, and compare passes (table) before means.",
    "Load is generated in the driver process (asyncio, DeploymentHandles) on the same 2 cores as the replicas; "
    "driver_cpu_s is its CPU time per level. The machine is shared: load_avg_before/after per level.",
]


if __name__ == "__main__":
    main()
