"""The main job on the embedded default: the whole platform run on a synthetic shop.

  generate -> ingest (products, queries, users, events) -> weak labels (rules + behaviour)
  -> import human annotations -> snapshot + data quality report
  -> train the joint intent+entity model (MiniLM + LoRA, Ray Train) -> embed the catalogue
     (Ray Data actor pool, BM25 + vector index) -> evaluate on the held-out split
  (`--no-models` stops after the snapshot)

Local Ray and LanceDB in a local folder by default (`--db`, `--num-cpus`); the same stages
run on a cluster via `ray job submit --working-dir . -- python -m jobs.main --db s3://...`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from pydantic import BaseModel

from jobs import generate, ingest, label, snapshot
from ray_app.cli import main_wrapper
from ray_app.runtime import init_ray
from ray_app.store import utcnow
from schemas.config import GenerateConfig, IngestConfig, LabelConfig, MainConfig, SnapshotConfig


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
    evaluation: dict = {}
    eval_report: Optional[str] = None


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


def run(config: MainConfig) -> MainResult:
    db = config.db or "data/lancedb"
    common = {"db": db, "ray_address": config.ray_address, "num_cpus": config.num_cpus, "quiet": True}
    demo = Path(config.demo_dir)
    progress = Progress(11 if config.models else 8)
    init_ray(config.ray_address, config.num_cpus, quiet=True)
    progress.run("generate synthetic shop", lambda: generate.run(GenerateConfig(
        out=str(demo), seed=config.seed, products=config.products, queries=config.queries,
        users=config.users, events=config.events)))
    ingested = {}
    for table, file in (("products", "products.jsonl"), ("queries", "queries.csv"), ("users", "users.csv"),
                        ("events", "events.parquet")):
        res = progress.run(f"ingest {table}", lambda t=table, f=file: ingest.run(
            IngestConfig(**common, table=t, path=str(demo / f))))
        ingested[table] = {k: getattr(res, k) for k in ("read", "accepted", "quarantined", "duplicates")}
        t = res.tables[0]
        print(f"      read {t.read:,}  accepted {t.accepted:,}  quarantined {t.quarantined:,}  duplicates {t.duplicates:,}"
              f"  -> {table} v{t.version}", file=sys.stderr)
    weak = progress.run("weak labels (rules + behaviour)", lambda: label.run(LabelConfig(**common, action="weak")))
    human = progress.run("import human annotations", lambda: label.run(
        LabelConfig(**common, action="import", path=str(demo / "human_labels.jsonl"))))
    name = f"demo-{utcnow():%Y%m%d-%H%M%S}"
    snap = progress.run("snapshot + quality report", lambda: snapshot.run(
        SnapshotConfig(**common, name=name, note="main job", report_dir=config.report_dir)))
    summary = human.report or weak.report or {}
    result = MainResult(db=db, snapshot=snap.name, ingest=ingested,
                        labels={"weak": weak.written, "human": human.written, "report": _short(summary)},
                        report=snap.report_path or "", seconds=progress.seconds)
    if config.models:
        _models(config, common, snap.name, progress, result)
    print(f"\nsnapshot {snap.name}: " + ", ".join(f"{t} {n:,}" for t, n in snap.row_counts.items()), file=sys.stderr)
    print(f"data quality report: {snap.report_path}", file=sys.stderr)
    if result.eval_report:
        print(f"model {result.model_version}; evaluation report: {result.eval_report}", file=sys.stderr)
    return result


def _models(config: MainConfig, common: dict, snapshot_name: str, progress: Progress, result: MainResult) -> None:
    """Small training, indexing and evaluation on the snapshot (minutes on 2 CPUs)."""
    from jobs import embed, evaluate, train
    from schemas.evaluation import EmbedConfig, EvaluateConfig
    from schemas.training import TrainConfig

    trained = progress.run("train intent+entity (MiniLM + LoRA, Ray Train)", lambda: train.run(TrainConfig(
        **common, task="intent_entity", snapshot=snapshot_name, epochs=config.train_epochs, num_workers=1,
        cpus_per_worker=float(config.num_cpus or 2), lr=1e-3, lora_r=16, lora_alpha=32, batch_size=16,
        models_dir=config.models_dir, alias="candidate", storage_path="artifacts/ray_results")))
    progress.run("embed catalogue + indexes", lambda: embed.run(EmbedConfig(**common, model="minilm", batch_size=64)))
    evaluated = progress.run("evaluate", lambda: evaluate.run(EvaluateConfig(
        **common, snapshot=snapshot_name, intent_model=trained.model_version, models_dir=config.models_dir,
        report_dir=config.report_dir)))
    result.model_version, result.train_metrics = trained.model_version, trained.metrics
    result.evaluation = getattr(evaluated, "query_understanding", {}) or {}
    result.eval_report = getattr(evaluated, "report_path", None)
    result.seconds = dict(progress.seconds)


def _short(report: dict) -> dict:
    return {k: report[k] for k in ("coverage", "agreement") if k in report}


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, MainConfig, "jobs.main", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
