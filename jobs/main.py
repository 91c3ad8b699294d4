"""The main job on the embedded default: the whole platform run on a synthetic shop.

  generate -> ingest (products, queries, users, events, judgments) -> weak labels (rules + behaviour)
  -> import human annotations (train/validation queries) and the gold labels of the test split
  -> snapshot + data quality report
  -> train the joint intent+entity model (MiniLM + LoRA, Ray Train) -> embed the catalogue
     (Ray Data actor pool, BM25 + vector index) -> train the cross-encoder ranker on the behaviour
     labels -> evaluate on the held-out test split: the intent model against the generator's gold
     labels, BM25 / the encoder / hybrid / the re-ranker against its judgments
  -> gate the ranker on the validation split (promoted only if re-ranking is not worse than the
     hybrid first stage; else it runs in shadow mode) -> build the suggestions -> promote the
     models to `production` -> start the search app on Ray
     Serve, answer a search, an understand and a suggest request over HTTP, print what to curl
     (`--keep-serving` keeps it up until Ctrl-C; `--no-serve` stops after the evaluation)
  (`--no-models` stops after the snapshot)

Local Ray, and every output (LanceDB, demo files, reports, checkpoints, models, logs) under one
workspace folder (`--workspace`, $SHOPSEARCH_WORKSPACE, default ./workspace; `--db`/$SHOPSEARCH_DB
and `--models-dir`/$SHOPSEARCH_MODELS move those two); the same stages run on a cluster via
`ray job submit --working-dir . -- python -m jobs.main --workspace /shared/shop --db s3://...`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from pydantic import BaseModel

from jobs import generate, ingest, label, snapshot
from ray_app.cli import JobError, main_wrapper
from ray_app.object_store import read_text
from ray_app.runtime import init_ray
from ray_app.store import utcnow
from schemas.config import GenerateConfig, IngestConfig, LabelConfig, MainConfig, SnapshotConfig, join


class MainResult(BaseModel):
    ok: bool = True
    db: str
    snapshot: str
    ingest: dict[str, dict[str, int]]
    labels: dict
    report: str
    seconds: dict[str, float]
    model_version: Optional[str] = None
    train_metrics: dict[str, float] = {}
    evaluation: dict = {}  # query understanding of the trained model on the test split
    scored_against: dict[str, dict[str, int]] = {}  # per task, labels by source:annotator (human:gold in the demo)
    search: dict = {}  # BM25, encoder, hybrid on the judged test queries: {"judged_list": .., "full_catalogue": ..}
    eval_report: Optional[str] = None
    ranker_version: Optional[str] = None
    ranker_gate: dict = {}  # validation NDCG@10 of the hybrid and of re-ranking, and whether the ranker was promoted
    suggestions: int = 0
    served: dict = {}  # the app's URL and its answers to one search, understand and suggest request


class Progress:
    """One line per stage on stderr: `[2/6] ingest products ... done in 4.1s`."""

    def __init__(self, total: int):
        self.total, self.step, self.seconds = total, 0, {}

    def run(self, name: str, fn: Callable):
        self.step += 1
        print(f"[{self.step}/{self.total}] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        out = fn()
        self.seconds[name] = round(time.perf_counter() - start, 2)
        print(f"[{self.step}/{self.total}] {name} done in {self.seconds[name]:.1f}s", file=sys.stderr, flush=True)
        return out


def stage_settings(config: MainConfig) -> dict[str, Any]:
    """The fields every stage's config shares: one db and one workspace, so all outputs land under it."""
    return {"db": config.db, "workspace": config.workspace, "ray_address": config.ray_address,
            "num_cpus": config.num_cpus, "quiet": True, "verbose": config.verbose}


def run(config: MainConfig) -> MainResult:
    common = stage_settings(config)
    db = str(config.db)
    demo = str(config.demo_dir)  # a local folder, or s3://.../demo with a workspace on object storage
    progress = Progress((17 if config.serve else 14) if config.models else 10)
    init_ray(config.ray_address, config.num_cpus, quiet=True, verbose=config.verbose)
    progress.run("generate synthetic shop", lambda: generate.run(GenerateConfig(
        workspace=config.workspace, out=demo, seed=config.seed, products=config.products, queries=config.queries,
        users=config.users, events=config.events)))
    ingested = {}
    for table, file in (("products", "products.jsonl"), ("queries", "queries.csv"), ("users", "users.csv"),
                        ("events", "events.parquet"), ("judgments", "judgments.csv")):
        res = progress.run(f"ingest {table}", lambda t=table, f=file: ingest.run(
            IngestConfig(**common, table=t, path=join(demo, f))))
        t = next((s for s in res.tables if s.table == table), res.tables[0])
        ingested[table] = {k: getattr(t, k) for k in ("read", "accepted", "quarantined", "duplicates")}
        print(f"      read {t.read:,}  accepted {t.accepted:,}  quarantined {t.quarantined:,}  duplicates {t.duplicates:,}"
              f"  -> {table} v{t.version}", file=sys.stderr)
    weak = progress.run("weak labels (rules + behaviour)", lambda: label.run(LabelConfig(**common, action="weak")))
    human = progress.run("import human annotations", lambda: label.run(
        LabelConfig(**common, action="import", path=join(demo, "human_labels.jsonl"))))
    gold_file = join(demo, "gold_test_labels.jsonl")
    check_held_out(db, gold_file)
    gold = progress.run("import gold labels of the test split", lambda: label.run(
        LabelConfig(**common, action="import", path=gold_file, annotator="gold")))
    name = f"demo-{utcnow():%Y%m%d-%H%M%S}"
    snap = progress.run("snapshot + quality report", lambda: snapshot.run(
        SnapshotConfig(**common, name=name, note="main job", report_dir=config.report_dir)))
    summary = gold.report or human.report or weak.report or {}
    result = MainResult(db=db, snapshot=snap.name, ingest=ingested,
                        labels={"weak": weak.written, "human": human.written, "gold": gold.written,
                                "report": _short(summary)},
                        report=snap.report_path or "", seconds=progress.seconds)
    if config.models:
        _models(config, common, snap.name, progress, result)
    print(f"\nsnapshot {snap.name}: " + ", ".join(f"{t} {n:,}" for t, n in snap.row_counts.items()), file=sys.stderr)
    print(f"data quality report: {snap.report_path}", file=sys.stderr)
    if result.eval_report:
        print(_figures(result), file=sys.stderr)
        print(f"models {result.model_version}, {result.ranker_version}; evaluation report: {result.eval_report}",
              file=sys.stderr)
    if config.models and config.serve:
        _serve(config, progress, result)
    return result


def _serve(config: MainConfig, progress: Progress, result: MainResult) -> None:
    """Suggestions, promotion, then the search app on Serve answering over HTTP."""
    from jobs import suggest
    from ray_app.registry import Registry
    from schemas.config import SuggestConfig
    from schemas.serving import ServeAppConfig
    from serve import run as serve_run

    result.ranker_gate = progress.run("ranker gate (validation split)", lambda: ranker_gate(config, result))
    print(f"      {result.ranker_gate['reason']}", file=sys.stderr)
    built = progress.run("build suggestions", lambda: suggest.run(SuggestConfig(**stage_settings(config))))
    result.suggestions = built.suggestions
    registry = Registry(config.models_dir)
    registry.promote(result.model_version, "production")  # scored on gold test labels above: the demo's only model of it
    promoted = result.ranker_gate["promoted"]
    if promoted:
        registry.promote(result.ranker_version, "production")
    app = ServeAppConfig(workspace=config.workspace, db=config.db, models_dir=config.models_dir,
                         understanding_model="intent_entity@production",
                         ranker_model="ranker@production",  # unset if the gate said no: the first stage's order
                         shadow_model=None if promoted else result.ranker_version,
                         rules=str(Path(__file__).resolve().parents[1] / "serve" / "rules.yaml"))
    query = _demo_query(str(config.db))
    base = progress.run("start the search app (Ray Serve) + answer over HTTP", lambda: serve_run.start(
        app, "127.0.0.1", config.port, timeout_s=600))
    result.served = {"url": base, **serve_run.smoke(base, query)}
    print(f"\nsearch app up at {base} (Ray Serve: understand -> retrieve -> rank -> rules)", file=sys.stderr)
    print(json.dumps(result.served["search"], default=str), file=sys.stderr)
    print("try:\n" + serve_run.curl_lines(base, query), file=sys.stderr)
    if config.keep_serving:
        print("serving until Ctrl-C (--keep-serving)", file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        print("stopping the app (run with --keep-serving to keep it up, or: serve run serve/config.yaml)", file=sys.stderr)


def ranker_gate(config: MainConfig, result: MainResult) -> dict[str, Any]:
    """Promote the ranker only where it helps: full-catalogue NDCG@10 on the validation split (never
    the test split the report shows) of re-ranking fused with the first stage, at the depth the app
    serves, against the hybrid first stage alone. `--ranker-gate always` skips the measurement."""
    from jobs import evaluate
    from schemas.evaluation import EvaluateConfig
    from schemas.serving import ServeAppConfig

    version = result.ranker_version
    if config.ranker_gate == "always":
        return {"promoted": True, "reason": f"{version} promoted without a gate (--ranker-gate always)"}
    depth = ServeAppConfig.model_fields["rerank_depth"].default
    evaluated = evaluate.run(EvaluateConfig(
        **stage_settings(config), snapshot=result.snapshot, split="validation", models_dir=config.models_dir,
        ranker=[version], rerank_depth=depth, compare_to="hybrid", report_dir=config.report_dir))
    full = evaluated.full_catalogue
    hybrid, ranked = full.get("hybrid", {}).get("ndcg@10"), full.get(f"rerank+rrf:{version}", {}).get("ndcg@10")
    if hybrid is None or ranked is None:
        raise JobError(f"ranker gate: the validation run scored no hybrid or rerank+rrf:{version} ({sorted(full)})")
    promoted = ranked >= hybrid
    queries = full["hybrid"].get("queries", 0)
    verdict = (f"{version} promoted to production" if promoted else
               f"{version} not promoted: ranker@production is left as it was (unset in a new workspace, so the "
               f"app serves the hybrid's order) with {version} in shadow mode (its agreement in /healthz); a "
               f"later `jobs.registry --action promote` reaches the running app; --ranker-gate always promotes it")
    return {"promoted": promoted, "split": "validation", "queries": queries, "rerank_depth": depth,
            "hybrid_ndcg@10": hybrid, "rerank+rrf_ndcg@10": ranked, "report": evaluated.out_path,
            "reason": f"ranker gate on {queries} validation queries, full-catalogue NDCG@10: re-ranking (top {depth}, "
                      f"fused) {ranked:.4f} vs hybrid {hybrid:.4f}: {verdict}"}


def _demo_query(db: str) -> str:
    """A test-split query of the demo shop with at least two words, to show the app answering."""
    from ray_app.store import Store

    rows = Store(db).read("queries", columns=["text", "split"]).to_pylist()
    texts = sorted(r["text"] for r in rows if r["split"] == "test" and len(r["text"].split()) >= 2)
    return texts[0] if texts else "running shoes"


def check_held_out(db: str, gold_file: str) -> int:
    """How many queries the gold file labels, after checking every one is in the store's test split:
    training reads train and validation, so test-only gold labels can never become training data."""
    from ray_app.store import Store

    stored = Store(db).read("queries", columns=["query_id", "split"]).to_pylist()
    split = {q["query_id"]: q["split"] for q in stored}
    named = {json.loads(line)["target_id"] for line in read_text(gold_file).splitlines() if line.strip()}
    leaking = sorted(q for q in named if split.get(q) != "test")
    if leaking:
        raise JobError(f"{gold_file}: {len(leaking)} of {len(named)} gold-labelled queries are not in the store's test "
                       f"split (e.g. {', '.join(leaking[:3])}): their gold labels would reach training")
    return len(named)


def _figures(result: MainResult) -> str:
    """The evaluation's headline figures for stderr, saying what each is scored against."""
    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    qu, lines = result.evaluation, []
    against = ", ".join(f"{who} {n:,}" for who, n in result.scored_against.get("intent", {}).items())
    if qu:
        lines.append(f"intent model on the test split, against {against or 'no labels'}: intent accuracy "
                     f"{fmt(qu.get('intent_accuracy'))}, entity F1 {fmt(qu.get('entity_f1'))}")
    full = result.search.get("full_catalogue") or {}
    if full:
        n = next(iter(full.values())).get("queries", 0)
        lines.append(f"search on {n} judged test queries (the generator's judgments), full-catalogue NDCG@10: "
                     + ", ".join(f"{name} {fmt(fig.get('ndcg@10'))}" for name, fig in full.items()))
    return "\n".join(lines)


def _models(config: MainConfig, common: dict, snapshot_name: str, progress: Progress, result: MainResult) -> None:
    """Small training, indexing and evaluation on the snapshot (minutes on 2 CPUs)."""
    from jobs import embed, evaluate, train
    from schemas.evaluation import EmbedConfig, EvaluateConfig
    from schemas.training import TrainConfig

    trained = progress.run("train intent+entity (MiniLM + LoRA, Ray Train)", lambda: train.run(TrainConfig(
        **common, task="intent_entity", snapshot=snapshot_name, epochs=config.train_epochs, num_workers=1,
        cpus_per_worker=float(config.num_cpus or 2), lr=1e-3, lora_r=16, lora_alpha=32, batch_size=16,
        models_dir=config.models_dir, alias="candidate")))
    progress.run("embed catalogue + indexes", lambda: embed.run(EmbedConfig(**common, model="minilm", batch_size=64)))
    ranker = progress.run("train the ranker (cross-encoder, MiniLM + LoRA, behaviour labels)", lambda: train.run(TrainConfig(
        **common, task="ranker", snapshot=snapshot_name, epochs=1, num_workers=1,
        cpus_per_worker=float(config.num_cpus or 2), max_train_examples=config.ranker_examples, max_length=64,
        models_dir=config.models_dir, alias="candidate")))
    result.ranker_version = ranker.model_version
    evaluated = progress.run("evaluate", lambda: evaluate.run(EvaluateConfig(
        **common, snapshot=snapshot_name, intent_model=trained.model_version, models_dir=config.models_dir,
        ranker=[ranker.model_version], report_dir=config.report_dir)))
    result.model_version, result.train_metrics = trained.model_version, trained.metrics
    result.evaluation = getattr(evaluated, "query_understanding", {}) or {}
    result.search = {"judged_list": evaluated.judged_list, "full_catalogue": evaluated.full_catalogue}
    figures = json.loads(read_text(evaluated.out_path)) if evaluated.out_path else {}
    result.scored_against = (figures.get("intent_model") or {}).get("scored_against") or {}
    result.eval_report = getattr(evaluated, "report_path", None)
    result.seconds = dict(progress.seconds)


def _short(report: dict) -> dict:
    return {k: report[k] for k in ("coverage", "agreement") if k in report}


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, MainConfig, "jobs.main", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
