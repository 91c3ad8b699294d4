"""Fit the hybrid first stage's fusion on validation queries and register it (task `fusion`).

  python -m jobs.fuse --snapshot S --retriever minilm [--split validation] [--alias candidate]

Fixed reciprocal-rank fusion is not safe on every catalogue: where the encoder alone beats BM25
by a wide margin, fusing them at equal weight can land below the encoder. This job reads the
split's judged queries as `jobs.evaluate` does (the snapshot's products, the same BM25 and encoder
search), computes BM25's and the encoder's top `--depth` once per query, and scores every setting
of a grid on the full-catalogue NDCG@k: method (rrf, minmax, zscore) x the dense list's share of
the weight (0 to 1 in `--weight-step`s; 0 and 1 are BM25 and the encoder alone) x rrf_k (rrf only).
The best mean wins; ties (at the 4 decimals reported) go to the share closest to 0.5, then rrf
before minmax before zscore, then the rrf_k closest to 60: the setting nearest today's default.
When the snapshot has no validation split it is carved from train by the query hash `jobs.train`
uses (the retriever version's own fraction and seed when it records them), and the output says so.
The chosen spec becomes registry version `fusion-v<n>` (artifact fusion.json; lineage: the encoder,
the snapshot, the query count, every setting tried with its figure); `jobs.evaluate --fusion NAME`
scores it beside its parts, and serving applies it with `ray_app.search.fuse`.
Prints the best settings tried; last stdout line: JSON summary.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from jobs.evaluate import build_systems, empty_split_error, eval_queries, judged_lists
from ray_app.cli import JobError, main_wrapper
from ray_app.eval_data import open_catalogue
from ray_app.evaluation import catalogue_metrics, mean_metrics
from ray_app.registry import Registry, RegistryError
from ray_app.search import Dense, fuse
from ray_app.store import Store, StoreError
from ray_app.training.data import assign_splits
from schemas.evaluation import EvaluateConfig, FuseConfig, FuseResult
from schemas.fusion import FUSION_FILE, FUSION_METHODS, FUSION_TASK, FusionSpec

SELECTION = ("highest mean validation NDCG@k (4 decimals); ties: dense share closest to 0.5, then rrf, minmax, "
             "zscore, then rrf_k closest to 60")


def candidate_specs(config: FuseConfig) -> list[FusionSpec]:
    """The grid: method x dense share (0..1 by weight_step, weights summing to 1) x rrf_k (rrf only)."""
    steps = int(round(1 / config.weight_step))
    shares = sorted({round(min(1.0, i * config.weight_step), 6) for i in range(steps + 1)} | {1.0})
    specs = []
    for method in dict.fromkeys(config.methods):
        for share in shares:
            for k in (dict.fromkeys(config.rrf_ks) if method == "rrf" else [60]):
                specs.append(FusionSpec(method=method, weights={"bm25": round(1 - share, 6), "dense": share}, rrf_k=k))
    return specs


def preference(spec: FusionSpec, figure: float) -> tuple:
    """Sort key of the selection rule (SELECTION): best figure first, then nearest the default."""
    return (-round(figure, 4), abs(spec.dense_share() - 0.5), FUSION_METHODS.index(spec.method), abs(spec.rrf_k - 60))


def carve_settings(config: FuseConfig) -> tuple[float, int]:
    """Validation fraction and seed of the carve: the flags, else the retriever version's training config."""
    try:
        trained = Registry(config.models_dir).resolve(config.retriever, task="retriever").config
    except RegistryError:  # a packaged encoder or a folder: no training run to match
        trained = {}
    fraction = config.validation_fraction or trained.get("validation_fraction") or 0.1
    seed = config.seed if config.seed is not None else trained.get("seed", 13)
    return float(fraction), int(seed)


def carve(store: Store, config: FuseConfig, queries: list[dict[str, Any]]) -> Optional[str]:
    """Carve validation from train in place (the queries' `split`) when the snapshot has none: the note
    saying so, or None when nothing was carved."""
    try:
        judged_split = {j["query_id"]: j["split"] for j in
                        store.read_snapshot(config.snapshot, "judgments", columns=["query_id", "split"]).to_pylist()}
    except StoreError as exc:
        raise JobError(str(exc)) from exc
    split_of = {q["query_id"]: q["split"] or judged_split.get(q["query_id"]) or "" for q in queries}
    if config.split != "validation" or "validation" in split_of.values():
        return None
    fraction, seed = carve_settings(config)
    assigned, notes = assign_splits(split_of, fraction, seed)
    if not notes:  # too few train queries to carve any: the empty split is reported by the caller
        return None
    for q in queries:
        q["split"] = assigned[q["query_id"]]
    return f"{notes[0]} (validation_fraction {fraction:g}, seed {seed}: the carve jobs.train makes)"


def run(config: FuseConfig) -> FuseResult:
    started = time.perf_counter()
    log = (lambda msg: None) if config.quiet else (lambda msg: print(msg, file=sys.stderr))
    store = Store(config.db)
    if not store.exists("products"):
        raise JobError(f"no products table in {store.uri}; run jobs.ingest and jobs.embed first")
    ev = EvaluateConfig(workspace=config.workspace, db=config.db, snapshot=config.snapshot, dataset=config.dataset,
                        split=config.split, baseline=config.retriever, models_dir=config.models_dir, ranker=[],
                        fts_columns=config.fts_columns, k=config.k, recall_k=config.depth, batch_size=config.batch_size)
    try:
        catalogue = open_catalogue(store, config.snapshot, config.fts_columns)
        table_versions = store.snapshot_versions(config.snapshot)
    except StoreError as exc:
        raise JobError(str(exc)) from exc
    if config.retriever.lower() == "none":
        raise JobError("--retriever: fusion needs an encoder to fuse with BM25 (minilm, a retriever version...)")
    queries_all = eval_queries(store, ev)
    carved = carve(store, config, queries_all)
    notes = [n for n in (catalogue.note, carved) if n]
    judged, _ = judged_lists(store, ev, queries_all, set(catalogue.texts))
    queries = [q for q in queries_all if q["query_id"] in judged]
    if not queries:
        raise empty_split_error(store, ev, queries_all)
    for note in notes:
        log(f"fuse: {note}")
    skipped: dict[str, str] = {}
    systems = build_systems(ev, catalogue.tbl, catalogue.products, catalogue.texts, log, skipped, notes)
    if "bm25" not in systems:
        raise JobError(f"cannot fit a fusion without BM25: {skipped['bm25']}")
    bm25, dense = systems["bm25"], next(s for s in systems.values() if isinstance(s, Dense))
    dense.prepare(queries)
    lists = {q["query_id"]: {"bm25": bm25.search(q["text"], config.depth),
                             "dense": dense.search(dense.qvec[q["query_id"]], config.depth)} for q in queries}
    metric = f"ndcg@{config.k}"

    def score(spec: FusionSpec) -> float:
        per_query = [catalogue_metrics([p for p, _ in fuse(lists[qid], spec, config.depth)], judged[qid],
                                       config.k, config.depth) for qid in lists]
        return mean_metrics(per_query)[metric]

    figures = {"rrf_default": score(FusionSpec()), "bm25_only": score(FusionSpec(weights={"bm25": 1, "dense": 0})),
               "dense_only": score(FusionSpec(weights={"bm25": 0, "dense": 1}))}
    if figures["rrf_default"] != figures["rrf_default"]:  # NaN: no query has a relevant judgment
        raise JobError(f"no {config.split} query has a judgment with gain > 0: {metric} is undefined, nothing to fit")
    trials = sorted(((spec, score(spec)) for spec in candidate_specs(config)), key=lambda t: preference(*t))
    chosen, figure = trials[0]
    rows = [{"spec": s.describe(), "method": s.method, **s.weights, "rrf_k": s.rrf_k, metric: f} for s, f in trials]

    def save(folder: Path) -> dict[str, Any]:
        (folder / FUSION_FILE).write_text(chosen.model_dump_json(indent=2))
        return {}

    registry = Registry(config.models_dir)
    version = registry.add(FUSION_TASK, save, base_model=dense.encoder.key, lora=False, snapshot=config.snapshot,
                           table_versions=table_versions,
                           config={"spec": chosen.model_dump(), "fitted_for": dense.encoder.key,
                                   "requested_retriever": config.retriever, "split": config.split,
                                   "carved": carved is not None, "validation_queries": len(queries),
                                   "dataset": config.dataset, "depth": config.depth, "k": config.k,
                                   "fts_columns": bm25.columns, "selection": SELECTION, "trials": rows},
                           metrics={f"val_{metric}": figure, **{f"val_{metric}_{n}": f for n, f in figures.items()}})
    if config.alias:
        version = registry.promote(version.name, config.alias)
    if not config.quiet:
        print(f"fuse: {len(trials)} settings on {len(queries)} {config.split} queries of snapshot {config.snapshot!r}, "
              f"BM25 + {dense.encoder.key}, full-catalogue {metric} (best first):")
        for row in rows[:config.top]:
            print(f"  {row[metric]:.4f}  {row['spec']}")
        print("  " + ", ".join(f"{n.replace('_', ' ')} {f:.4f}" for n, f in figures.items()))
        print(f"fuse: chosen {chosen.describe()} -> {version.name}" + (f" ({config.alias})" if config.alias else ""))
    return FuseResult(fusion_version=version.name, alias=config.alias, spec=chosen.model_dump(), about=chosen.describe(),
                      fitted_for=dense.encoder.key, snapshot=config.snapshot, split=config.split,
                      carved=carved is not None, queries=len(queries), metric=metric, chosen=figure,
                      **figures, tried=len(trials), top=rows[:config.top], notes=notes,
                      seconds=round(time.perf_counter() - started, 2))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, FuseConfig, "jobs.fuse", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
