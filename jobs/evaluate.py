"""Offline evaluation: ranking, retrieval and query understanding, all systems side by side.

  python -m jobs.evaluate --db DIR [--dataset esci] [--split test] [--snapshot NAME]
         [--baseline minilm|none] [--retriever retriever@production] [--ranker ranker@production ...]
         [--intent-model intent_entity@production] [--rerank-depth 50] [--ann] [--out eval.json]
         [--fusion fusion@production]

Systems (one run, the same queries): BM25 (LanceDB FTS over title and brand), the
untuned bi-encoder (`--baseline`, all-MiniLM-L6-v2 by default), the fine-tuned bi-encoder
(`--retriever`), hybrid (reciprocal-rank fusion of BM25 and the best bi-encoder), and the
fine-tuned cross-encoder (`--ranker`) re-ranking the top `--rerank-depth` of the hybrid (or of the
retriever with --rerank-base retriever); with --rerank-fusion also the re-ranking stage that fuses
the cross-encoder's order with the candidates' first-stage order (RRF); with --fusion also
`hybrid:<version>`, the hybrid fused by fitted settings from the registry (`jobs.fuse`).
Protocols are described in `ray_app/evaluation.py`.
Vector search is exact brute force by default (models compare without index error); product
vectors come from the table when they were made by the same model from the same text, else they
are encoded here. With --snapshot every table is read as the snapshot pinned it, products
included (searched with the live table's indexes where they are exact for the snapshot's rows,
see `ray_app/eval_data.py`); run jobs.embed first: it builds the BM25 indexes. Judgments
that cannot be scored (their product or query is not in the snapshot) are counted under
`unscored` in the JSON, the report and the summary, never dropped silently. Writes
<report-dir>/eval-<UTC time>.md with a PNG figure per ranking protocol beside it, and the figures
as JSON (--out); last stdout line: JSON summary. Each judgment is scored with the gain stored with
it (its declared grade scale, named in the report and the summary); a split holding no judged query
(with no --intent-model to score instead) exits 1 naming the queries each split holds.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import pyarrow as pa

from ray_app.cli import JobError, main_wrapper
from ray_app.evaluation import (Graded, catalogue_metrics, compare_systems, entity_type_metrics, judged_list_metrics,
                                judged_metrics, mean_metrics, query_understanding_metrics, render_report)
from ray_app.search import BM25, Dense, Hybrid, Rerank, RerankFusion
from ray_app.eval_data import open_catalogue, split_judged_lists, unscored_note
from ray_app.index import fts_columns_indexed, load_text_encoder
from ray_app.labeling.resolve import RANK_COLUMNS, resolve
from ray_app.store import Store, StoreError, utcnow
from schemas.grades import ESCI, GradeScale
from schemas.evaluation import EvaluateConfig, EvaluateResult
from schemas.fusion import FusionSpec

def _read(store: Store, config: EvaluateConfig, table: str, columns: list[str]) -> list[dict[str, Any]]:
    try:
        if config.snapshot:
            return store.read_snapshot(config.snapshot, table, columns=columns).to_pylist()
        return store.read(table, columns=columns).to_pylist()
    except StoreError as exc:
        raise JobError(str(exc)) from exc


def eval_queries(store: Store, config: EvaluateConfig) -> list[dict[str, Any]]:
    rows = _read(store, config, "queries", ["query_id", "text", "split", "dataset"])
    return sorted((q for q in rows if (not config.dataset or q["dataset"] == config.dataset)), key=lambda q: q["query_id"])


def judged_lists(store: Store, config: EvaluateConfig, queries: list[dict],
                 catalogue: set[str]) -> tuple[dict[str, dict[str, Graded]], dict[str, int]]:
    """query_id -> {product_id: judgment with its stored gain} of the split's queries, and what could not be scored."""
    known = {q["query_id"] for q in _read(store, config, "queries", ["query_id"])}  # of any dataset
    judgments = _read(store, config, "judgments", ["query_id", "product_id", "grade", "gain", "scale", "split"])
    scales: dict[str, GradeScale] = {}
    for j in judgments:  # each judgment is scored with the gain stored with it, on its declared scale
        spec = j["scale"] or ESCI.spec
        scale = scales.get(spec) or scales.setdefault(spec, GradeScale.parse(spec))
        j["grade"] = Graded.of(j["grade"], j["gain"], scale)
    return split_judged_lists(judgments, known, queries, config.split, catalogue)


def grade_scales(judged: dict[str, dict[str, Graded]]) -> list[str]:
    """The specs of the grade scales the evaluated judgments were graded on."""
    return sorted({g.scale for graded in judged.values() for g in graded.values()})


def empty_split_error(store: Store, config: EvaluateConfig, queries: list[dict[str, Any]]) -> JobError:
    """The error of an evaluation with nothing to score in its split, with what each split holds."""
    judged = {j["query_id"]: j["split"] for j in _read(store, config, "judgments", ["query_id", "split"])}
    per_split: dict[str, list[int]] = {}
    for q in queries:
        counts = per_split.setdefault(q["split"] or judged.get(q["query_id"]) or "(none)", [0, 0])
        counts[0] += 1
        counts[1] += q["query_id"] in judged
    held = ", ".join(f"{name}: {n:,} queries, {j:,} judged" for name, (n, j) in sorted(per_split.items())) or "no queries at all"
    where = (f" of dataset {config.dataset!r}" if config.dataset else "") + (f" in snapshot {config.snapshot!r}" if config.snapshot else "")
    return JobError(f"no judged query in split {config.split!r}{where} to evaluate; the splits hold {held}. "
                    "Pick one with --split, or assign splits at ingest (jobs.ingest --test-fraction 0.2 --seed 13)")


def evaluate_ranking(systems: dict[str, Any], queries: list[dict], judged: dict[str, dict[str, str]],
                     config: EvaluateConfig, log) -> tuple[dict, dict, dict]:
    """Mean figures per system for both protocols, and the per-query figures behind them
    ({"judged_list": {system: [..]}, "full_catalogue": {...}}, queries in the same order)."""
    judged_out, full_out = {}, {}
    per_query_figs: dict[str, dict[str, list]] = {"judged_list": {}, "full_catalogue": {}}
    for name, system in systems.items():
        started = time.perf_counter()
        system.prepare(queries)
        full = [catalogue_metrics(system.retrieve(q, config.recall_k), judged[q["query_id"]], config.k, config.recall_k)
                for q in queries]
        seconds_per_query = (time.perf_counter() - started) / max(1, len(queries))
        full_out[name] = {**mean_metrics(full), "ms_per_query": round(1000 * seconds_per_query, 2)}
        listed = [judged_list_metrics(g, system.judged(q, sorted(g)), config.k)
                  for q in queries for g in [judged[q["query_id"]]]]
        judged_out[name] = mean_metrics(listed)
        per_query_figs["judged_list"][name], per_query_figs["full_catalogue"][name] = listed, full
        log(f"evaluate: {name}: judged {judged_out[name]} | full catalogue {full_out[name]}")
    return judged_out, full_out, per_query_figs


def evaluate_intent(store: Store, config: EvaluateConfig,
                    queries: list[dict]) -> tuple[dict[str, float], dict[str, dict], dict[str, Any]]:
    """Query-understanding figures of --intent-model on the split, and the per-entity-type breakdown."""
    from ray_app.registry import Registry

    in_split = {q["query_id"]: q for q in queries if q["split"] == config.split}
    labels = [lab for lab in _read(store, config, "labels", ["target_type", "target_id", "task", "value", "spans",
                                                              "annotator", *RANK_COLUMNS])
              if lab["target_type"] == "query" and lab["task"] in ("intent", "entity") and lab["target_id"] in in_split]
    resolved = resolve(labels)
    gold = []
    for qid in sorted({lab["target_id"] for lab in labels}):
        intent, entity = resolved.get((qid, "intent")), resolved.get((qid, "entity"))
        gold.append({"text": in_split[qid]["text"], "intent": intent["value"] if intent else "",
                     "spans": None if entity is None else entity["spans"]})
    if not gold:
        raise JobError(f"--intent-model: no labelled queries in split {config.split!r}")
    model = Registry(config.models_dir).load_model(config.intent_model, task="intent_entity")
    pred = model.predict([g["text"] for g in gold])
    v = model.version
    which = {"version": v.name, "requested": config.intent_model, "snapshot": v.snapshot, "base_model": v.base_model,
             "created_at": str(v.created_at), "scored_against": scored_against(resolved)}
    return query_understanding_metrics(gold, pred), entity_type_metrics(gold, pred), which


def scored_against(resolved: dict[tuple, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per task, how many of the labels scored against came from each source:annotator (rule labels
    make a score of imitation, not of truth: the report must say which it is)."""
    who = [(task, f"{lab['source']}:{lab['annotator']}" if lab.get("annotator") else lab["source"])
           for (_, task), lab in resolved.items()]
    return {task: dict(sorted(Counter(w for t, w in who if t == task).items())) for task in ("intent", "entity")}


def _clean(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: (_clean(v) if isinstance(v, dict) else None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in figures.items()}


def build_systems(config: EvaluateConfig, tbl, products: pa.Table, texts: dict[str, str], log,
                  skipped: dict[str, str], notes: list[str]) -> dict[str, Any]:
    """The systems compared, in report order; those without a model are noted in `skipped`."""
    systems: dict[str, Any] = {}
    fts_cols = [c for c in config.fts_columns if c in fts_columns_indexed(tbl)]
    if fts_cols:
        systems["bm25"] = BM25(tbl, fts_cols)
        if len(fts_cols) < len(config.fts_columns):
            notes.append(f"BM25 searches {', '.join(fts_cols)} only: the other --fts-columns have no FTS index")
    else:
        skipped["bm25"] = f"no FTS index on {', '.join(config.fts_columns)}: run python -m jobs.embed first"
    dense: dict[str, Dense] = {}
    for role, name in (("baseline", config.baseline), ("retriever", config.retriever)):
        if not name or name.lower() == "none":
            skipped[role] = f"not given (--{role} NAME)"
            continue
        encoder = load_text_encoder(name, config.models_dir, batch_size=config.batch_size)
        dense[role] = systems[encoder.key] = Dense(encoder, products, texts, tbl, config.ann, log)
    best = dense.get("retriever") or dense.get("baseline")
    if "bm25" in systems and best is not None:
        systems["hybrid"] = Hybrid(systems["bm25"], best, FusionSpec(rrf_k=config.rrf_k))
    if config.fusion:
        fitted_hybrid(config, systems, best, skipped, notes)
    if not config.ranker:
        skipped["ranker"] = "not given (--ranker NAME)"
        return systems
    from ray_app.registry import Registry

    base = "retriever" if config.rerank_base == "retriever" else "hybrid"
    base_system = dense.get("retriever") if base == "retriever" else systems.get("hybrid")
    registry = Registry(config.models_dir)
    for name in config.ranker:  # several rankers re-rank the same candidates
        ranker = registry.load_model(name, task="ranker")
        if base_system is None:
            skipped[f"rerank:{ranker.version.name}"] = f"no {base} candidates to re-rank"
        else:
            rerank = systems[f"rerank:{ranker.version.name}"] = Rerank(ranker, base_system, texts, config.rerank_depth, base)
            if config.rerank_fusion:
                systems[f"rerank+rrf:{ranker.version.name}"] = RerankFusion(rerank, config.rrf_k)
    return systems


def fitted_hybrid(config: EvaluateConfig, systems: dict[str, Any], best: Optional[Dense], skipped: dict[str, str],
                  notes: list[str]) -> None:
    """Add `hybrid:<fusion version>`: BM25 and the best bi-encoder fused as --fusion's registry version says."""
    from ray_app.registry import Registry

    spec, version = Registry(config.models_dir).load_fusion(config.fusion)
    name = f"hybrid:{version.name}"
    if "bm25" not in systems or best is None:
        skipped[name] = "needs BM25 and a bi-encoder"
        return
    systems[name] = fitted = Hybrid(systems["bm25"], best, spec)
    fitted.about = (f"{spec.describe()}: fusion of BM25 and {best.encoder.key}, registry {version.name} "
                    f"(--fusion {config.fusion}; fitted for {version.base_model} on snapshot {version.snapshot})")
    if version.base_model != best.encoder.key:
        notes.append(f"{name} was fitted for {version.base_model}, here it fuses BM25 with {best.encoder.key}")


def draw_plots(report_dir: Path, stem: str, judged_out: dict, full_out: dict, comparisons: dict,
               config: EvaluateConfig, notes: list[str]) -> dict[str, str]:
    """One PNG per ranking protocol next to the report; {protocol: file name}. A figure that
    cannot be drawn is a note in the report, not a failed evaluation."""
    from ray_app.plots import protocol_figure

    plots: dict[str, str] = {}
    for key, figures, metric, label, title in (
            ("judged_list", judged_out, judged_metrics(judged_out, config.k)[0],
             "NDCG (ESCI gains)" if judged_metrics(judged_out, config.k)[0] == "ndcg_esci" else f"NDCG@{config.k}",
             "Judged-list re-ranking"),
            ("full_catalogue", full_out, f"ndcg@{config.k}", f"NDCG@{config.k}", "Full-catalogue retrieval")):
        if not figures:
            continue
        name = f"{stem}-{key.replace('_', '-')}.png"
        try:
            protocol_figure(report_dir / name, f"{title} ({config.split} split)", figures, metric, label,
                            comparisons.get(key), comparisons.get("reference"))
        except Exception as exc:  # noqa: BLE001 - plotting must not lose the figures already computed
            notes.append(f"plot {name} not drawn: {type(exc).__name__}: {exc}")
        else:
            plots[key] = name
    return plots


def run(config: EvaluateConfig) -> EvaluateResult:
    started = time.perf_counter()
    log = (lambda msg: None) if config.quiet else (lambda msg: print(msg, file=sys.stderr))
    store = Store(config.db)
    if not store.exists("products"):
        raise JobError(f"no products table in {store.uri}; run jobs.ingest and jobs.embed first")
    try:
        catalogue = open_catalogue(store, config.snapshot, config.fts_columns)
    except StoreError as exc:
        raise JobError(str(exc)) from exc
    tbl, products, texts = catalogue.tbl, catalogue.products, catalogue.texts
    queries_all = eval_queries(store, config)
    judged, unscored = judged_lists(store, config, queries_all, set(texts))
    queries = [q for q in queries_all if q["query_id"] in judged][:config.max_queries]
    in_split = any(q["split"] == config.split for q in queries_all)
    if not queries and (not config.intent_model or not in_split):  # nothing to score: say why, never "queries: 0, ok"
        raise empty_split_error(store, config, queries_all)
    skipped: dict[str, str] = {}
    notes: list[str] = [n for n in (catalogue.note, unscored_note(unscored, config.split, config.snapshot)) if n]
    for note in notes:
        log(f"evaluate: {note}")
    judged_out: dict[str, Any] = {}
    full_out: dict[str, Any] = {}
    systems: dict[str, Any] = {}
    comparisons: dict[str, Any] = {}
    if queries:
        systems = build_systems(config, tbl, products, texts, log, skipped, notes)
        judged_out, full_out, per_query = evaluate_ranking(systems, queries, judged, config, log)
        if config.compare_to != "none" and config.compare_to in systems and len(systems) > 1:
            comparisons = {"reference": config.compare_to, "resamples": config.bootstrap,
                           "judged_list": compare_systems(per_query["judged_list"], config.compare_to,
                                                          judged_metrics(judged_out, config.k), config.bootstrap),
                           "full_catalogue": compare_systems(per_query["full_catalogue"], config.compare_to,
                                                             [f"ndcg@{config.k}", f"recall@{config.recall_k}"], config.bootstrap)}
        elif config.compare_to != "none" and config.compare_to not in systems:
            notes.append(f"no comparison: --compare-to {config.compare_to} is not among the systems evaluated")
    else:  # only the intent model is scored (the split has queries, none judged)
        notes.append(f"no judged queries in split {config.split!r}" + (f" of dataset {config.dataset!r}" if config.dataset else ""))
    qu: dict[str, float] = {}
    by_type: dict[str, dict] = {}
    intent_model: dict[str, Any] = {}
    if config.intent_model:
        qu, by_type, intent_model = evaluate_intent(store, config, queries_all)
    else:
        skipped["intent_model"] = "not given (--intent-model NAME)"
    stamp = utcnow()
    stem = f"eval-{stamp:%Y%m%d-%H%M%S}"
    from ray_app.object_store import Output, write_text

    with Output(config.report_dir) as reports:  # a local folder, or s3:// (written locally, copied up)
        plots = draw_plots(reports.folder, stem, judged_out, full_out, comparisons, config, notes)
        payload = _clean({"created_at": f"{stamp:%Y-%m-%d %H:%M:%S} UTC", "db": store.uri, "products": len(texts),
                          "products_version": catalogue.version, "unscored": unscored, "split": config.split,
                          "dataset": config.dataset,
                          "snapshot": config.snapshot, "queries": len(queries), "grade_scales": grade_scales(judged),
                          "k": config.k, "recall_k": config.recall_k,
                          "judged_list": judged_out, "full_catalogue": full_out, "comparisons": comparisons,
                          "query_understanding": qu, "intent_model": intent_model, "entity_types": by_type, "plots": plots,
                          "systems": {n: s.about for n, s in systems.items()}, "skipped": skipped, "notes": notes,
                          "config": config.model_dump(mode="json")})
        if config.out:
            out_path = write_text(config.out, json.dumps(payload, indent=2))
        else:
            out_file = reports.folder / f"{stem}.json"
            out_file.write_text(json.dumps(payload, indent=2))
            out_path = reports.uri(out_file)
        report_file = reports.folder / f"{stem}.md"
        report_file.write_text(render_report(payload))
        report_path = reports.uri(report_file)
    return EvaluateResult(queries=len(queries), products=len(texts), products_version=catalogue.version,
                          unscored=unscored, grade_scales=payload["grade_scales"],
                          judged_list=payload["judged_list"], full_catalogue=payload["full_catalogue"],
                          query_understanding=payload["query_understanding"],
                          intent_model=payload["intent_model"].get("version"), skipped=skipped, notes=notes,
                          report_path=report_path, out_path=out_path,
                          seconds=round(time.perf_counter() - started, 2))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, EvaluateConfig, "jobs.evaluate", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
