"""Per-request model cost on this machine's cores with plain torch (no Serve, no HTTP), for
benchmarks/serve.py: MiniLM on one 16-token query and on 16 queries batched, the cross-encoder on
20 and 50 candidates, a plain fp32 matmul as the reference rate, and int8 dynamic quantisation of
the ranker's Linear layers (its speed-up, and its NDCG change on the demo's judged test queries).

FLOPs are estimated from each forward pass's padded tensor shapes: 2 x (parameters of the
transformer layers; embedding lookups do no multiply-adds) per token, plus 4 x layers x seq^2 x
hidden per sequence for the attention scores and their weighted sum. Softmax, GELU, layer norms
and the pooling are left out (a few percent).
"""
from __future__ import annotations

from dataclasses import replace
import statistics
import time
from typing import Any, Callable

import torch

from ray_app.models.scoring import quantised_int8


def timed(fn: Callable[[], Any], reps: int, warmup: int = 2) -> dict[str, float]:
    """Median and min wall time of `fn` in ms over `reps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2), "reps": reps}


def matmul_rate(n: int, reps: int) -> dict[str, Any]:
    """GFLOP/s of a plain torch fp32 (n x n) @ (n x n) matmul (2 n^3 FLOPs) at the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = timed(lambda: a @ b, reps)
    return {"n": n, **t, "gflops_per_s": round(2 * n ** 3 / (t["median_ms"] / 1000) / 1e9, 2)}


def layer_params(backbone: torch.nn.Module) -> int:
    """Parameters of the transformer layers (what every token multiplies through)."""
    return sum(p.numel() for p in backbone.encoder.parameters())


def flops(backbone: torch.nn.Module, shapes: list[tuple[int, int]]) -> float:
    """Estimated forward FLOPs over sequences of (batch, padded length) (see the module docstring)."""
    cfg, params = backbone.config, layer_params(backbone)
    return float(sum(2 * params * b * s + 4 * cfg.num_hidden_layers * b * s * s * cfg.hidden_size for b, s in shapes))


def measured(fn: Callable[[], Any], fl: float, reps: int, warmup: int = 2) -> dict[str, Any]:
    """`fn` timed, its GFLOP/s, and that as a share of a 1024^3 matmul measured just before and just
    after it (the machine is shared: a reference taken minutes apart would compare different loads)."""
    before = matmul_rate(1024, 5)
    t = timed(fn, reps, warmup)
    after = matmul_rate(1024, 5)
    reference = (before["gflops_per_s"] + after["gflops_per_s"]) / 2
    rate, best = fl / (t["median_ms"] / 1000) / 1e9, fl / (t["min_ms"] / 1000) / 1e9
    return {**t, "gflop": round(fl / 1e9, 3), "gflops_per_s": round(rate, 2),
            "matmul_gflops_per_s_around": round(reference, 2), "share_of_matmul": round(rate / reference, 3),
            "share_of_matmul_best": round(best / max(before["gflops_per_s"], after["gflops_per_s"]), 3)}


def encoder_cost(model, tokenizer, queries: list[str], reps: int) -> dict[str, Any]:
    """MiniLM forward on 1 query and on 16 queries, each padded to 16 tokens."""
    out = {}
    for n in (1, 16):
        enc = tokenizer(queries[:n], padding="max_length", truncation=True, max_length=16, return_tensors="pt")
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        with torch.inference_mode():
            cell = measured(lambda: model(**inputs), flops(model, [(n, 16)]), reps)
        out[f"{n}x16_tokens"] = {**cell, "per_query_ms": round(cell["median_ms"] / n, 2)}
    return out


def ranker_shapes(enc: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """The (batch, length) of every encoder pass one cross-encoder forward makes (pairs; residual: products, queries)."""
    shapes = [tuple(enc["input_ids"].shape)]
    for prefix in ("d_", "q_"):
        if prefix + "input_ids" in enc:
            shapes.append(tuple(enc[prefix + "input_ids"].shape))
    return shapes


def ranker_forward_cost(model, fp32_backbone, tokenizer, query: str, docs: list[str], max_length: int,
                        reps: int) -> dict[str, Any]:
    """One cross-encoder forward over (query, doc) pairs, tokenised beforehand (model cost only). FLOPs
    come from the fp32 backbone (an int8 model's multiply-adds are the same count, in int8)."""
    from ray_app.models.heads import ranker_inputs

    enc = ranker_inputs(tokenizer, [query] * len(docs), docs, max_length, model.pooling)
    model.eval()
    shapes = ranker_shapes(enc)
    with torch.inference_mode():
        cell = measured(lambda: model(**enc), flops(fp32_backbone, shapes), reps)
    return {**cell, "shapes": [list(s) for s in shapes], "per_candidate_ms": round(cell["median_ms"] / len(docs), 2)}


def speedup(slow: dict[str, float], fast: dict[str, float]) -> dict[str, float]:
    """slow / fast by medians and by minima (on a shared machine the minima are the steadier figure)."""
    return {"median": round(slow["median_ms"] / fast["median_ms"], 2), "min": round(slow["min_ms"] / fast["min_ms"], 2)}


def model_costs(ranker, query: str, docs: list[str], queries: list[str], threads: list[int], reps: int) -> dict[str, Any]:
    """Part 1 and the int8 speed-up: ms, GFLOP/s and share of a matmul's rate, per torch thread count,
    and how far int8's scores are from fp32's on the same 50 candidates."""
    from ray_app.models.encoder import load_encoder
    from ray_app.search.rerank import score_pairs

    encoder, tokenizer = load_encoder("minilm")
    encoder.eval()
    int8 = quantised_int8(ranker) if ranker is not None else None
    cold = replace(ranker, product_cache=None) if ranker is not None else None
    cold8 = replace(int8, product_cache=None) if ranker is not None else None
    before = torch.get_num_threads()
    out: dict[str, Any] = {"minilm_layer_params": layer_params(encoder), "by_threads": {}}
    if ranker is not None:
        out.update(ranker_version=ranker.version.name, ranker_pooling=ranker.model.pooling,
                   ranker_max_length=ranker.max_length, ranker_layer_params=layer_params(ranker.model.backbone))
    try:
        for n in threads:
            torch.set_num_threads(n)
            row: dict[str, Any] = {"matmul_fp32": matmul_rate(1024, max(5, reps)),
                                   "minilm": encoder_cost(encoder, tokenizer, queries, 3 * reps)}
            if ranker is not None:
                slow = max(2, reps // 3)  # a 50-candidate pass takes seconds on one core
                backbone = ranker.model.backbone
                for depth in (20, 50):
                    head = docs[:depth]
                    cell = {"fp32_64_tokens": ranker_forward_cost(ranker.model, backbone, ranker.tokenizer, query, head, 64, slow),
                            "int8_64_tokens": ranker_forward_cost(int8.model, backbone, int8.tokenizer, query, head, 64, slow)}
                    cell["int8_speedup_64_tokens"] = speedup(cell["fp32_64_tokens"], cell["int8_64_tokens"])
                    if ranker.max_length != 64:  # what serving runs: the ranker's own max_length (shapes say how long)
                        cell[f"fp32_max_length_{ranker.max_length}"] = ranker_forward_cost(
                            ranker.model, backbone, ranker.tokenizer, query, head, ranker.max_length, slow)
                    # served path: every product new to the replica (cold) and all seen before (warm cache)
                    cell["score_pairs_served"] = timed(lambda: score_pairs(cold, [query] * len(head), head), slow, 1)
                    cell["score_pairs_served_int8"] = timed(lambda: score_pairs(cold8, [query] * len(head), head), slow, 1)
                    cell["int8_speedup_served"] = speedup(cell["score_pairs_served"], cell["score_pairs_served_int8"])
                    score_pairs(ranker, [query] * len(head), head)
                    cell["score_pairs_served_cached"] = timed(lambda: score_pairs(ranker, [query] * len(head), head), slow, 1)
                    cell["product_cache_speedup"] = speedup(cell["score_pairs_served"], cell["score_pairs_served_cached"])
                    row[f"ranker_{depth}_candidates"] = cell
            out["by_threads"][str(n)] = row
        if ranker is not None:
            fp32, q8 = score_pairs(ranker, [query] * len(docs), docs), score_pairs(int8, [query] * len(docs), docs)
            top = lambda s: set(sorted(range(len(s)), key=lambda i: -s[i])[:10])  # noqa: E731
            out["int8_vs_fp32_scores_50_candidates"] = {
                "max_abs_diff": round(max(abs(a - b) for a, b in zip(fp32, q8)), 4),
                "score_range_fp32": [round(min(fp32), 3), round(max(fp32), 3)],
                "top10_overlap": len(top(fp32) & top(q8)) / 10}
    finally:
        torch.set_num_threads(before)
    return out


def int8_quality(workspace: str, ranker, depths: list[int], max_queries: int | None, log) -> dict[str, Any]:
    """Full-catalogue NDCG@10 of the fp32 and the int8 ranker re-ranking the hybrid's top `depth`
    (BM25 + MiniLM, RRF, as jobs.evaluate builds it), plain and fused with the first stage (as
    served), on the demo's judged test queries: jobs.evaluate's judged lists and metrics, the live
    (served) products table. The judged-list protocol is left out: it scores every judged product
    with the model again, which doubles a run that is already minutes of cross-encoder passes."""
    from jobs.evaluate import eval_queries, judged_lists
    from ray_app.eval_data import open_catalogue
    from ray_app.evaluation import catalogue_metrics, mean_metrics, paired_bootstrap
    from ray_app.index import fts_columns_indexed, load_text_encoder
    from ray_app.search import BM25, Dense, Hybrid, Rerank, RerankFusion
    from ray_app.store import Store
    from schemas.evaluation import EvaluateConfig
    from schemas.fusion import FusionSpec

    config = EvaluateConfig(workspace=workspace, split="test", quiet=True)
    store = Store(config.db)
    cat = open_catalogue(store, None, config.fts_columns)
    queries_all = eval_queries(store, config)
    judged, _ = judged_lists(store, config, queries_all, set(cat.texts))
    queries = [q for q in queries_all if q["query_id"] in judged][:max_queries]
    fts = [c for c in config.fts_columns if c in fts_columns_indexed(cat.tbl)]
    hybrid = Hybrid(BM25(cat.tbl, fts), Dense(load_text_encoder("minilm"), cat.products, cat.texts, cat.tbl, False, log),
                    FusionSpec(rrf_k=config.rrf_k))
    hybrid.prepare(queries)
    systems: dict[str, Any] = {"hybrid": hybrid}
    for label, model in (("fp32", ranker), ("int8", quantised_int8(ranker))):
        for depth in depths:
            rerank = systems[f"rerank@{depth}:{label}"] = Rerank(model, hybrid, cat.texts, depth, "hybrid")
            systems[f"rerank+rrf@{depth}:{label}"] = RerankFusion(rerank, config.rrf_k)
    per_query: dict[str, list[dict[str, float]]] = {}
    out: dict[str, Any] = {"dataset": "demo shop (synthetic, jobs.generate seed 7): judged test-split queries, "
                                      "full-catalogue protocol, live products table",
                           "queries": len(queries), "ranker": ranker.version.name, "systems": {}}
    for name, system in systems.items():
        started = time.perf_counter()
        per_query[name] = [catalogue_metrics(system.retrieve(q, config.recall_k), judged[q["query_id"]], config.k,
                                             config.recall_k) for q in queries]
        out["systems"][name] = {**mean_metrics(per_query[name]),
                                "ms_per_query": round(1000 * (time.perf_counter() - started) / max(1, len(queries)), 1)}
        log(f"int8 quality: {name}: {out['systems'][name]}")
    for depth in depths:
        for kind in ("rerank", "rerank+rrf"):
            a, b = (f"{kind}@{depth}:fp32", f"{kind}@{depth}:int8")
            out[f"{kind}@{depth}_int8_minus_fp32"] = paired_bootstrap(
                [r["ndcg@10"] for r in per_query[b]], [r["ndcg@10"] for r in per_query[a]])
    return out
