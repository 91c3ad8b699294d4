"""Label queries and query-product pairs: weak labels (catalogue rules + debiased behaviour),
human label import/export (Label Studio JSON, JSONL, CSV), the label quality report, and a
per-query view. Labels go to the `labels` table with deterministic ids, so re-runs upsert.

  python -m jobs.label                          # --action weak: rule + behaviour labels
  python -m jobs.label --action import --path annotations.json
  python -m jobs.label --action export --path review.jsonl
  python -m jobs.label --action report --report-out workspace/reports/labels.json
  python -m jobs.label --action show --query-id Q00001
  python -m jobs.label --action taxonomy --taxonomy taxonomy.yaml   # declare the shop's own taxonomy
  python -m jobs.label --action label-studio-config --path config.xml

Every value is checked against the store's taxonomy (declared with --taxonomy on any action,
else the built-in e-commerce one); docs/labelling.md describes the taxonomy file.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from ray_app.cli import JobError, main_wrapper
from ray_app.labeling.behaviour import EVENT_COLUMNS, aggregate_events, behaviour_label_rows
from ray_app.labeling.human_io import ImportContext, import_records, write_export
from ray_app.labeling.quality import describe, latest_per_source, quality_report, report_summary, resolve_labels
from ray_app.labeling.rules import RuleLabeler, build_lexicons
from ray_app.labeling.studio_config import label_studio_config
from ray_app.privacy import resolve_key
from ray_app.store import Store, conform, rows_to_arrow, schema_of, utcnow
from ray_app.taxonomy import (declare_taxonomy, declared_taxonomy, load_taxonomy_file, store_taxonomy,
                              taxonomy_summary)
from schemas.config import LabelConfig
from schemas.records import ESCI_GAIN
from schemas.taxonomy import Taxonomy, TaxonomyError, builtin_taxonomy

MAX_REJECTS_SHOWN = 100
RULE_BLOCK_ROWS = 5_000  # queries per Ray Data block: blocks are what the actor pool spreads


class LabelResult(BaseModel):
    ok: bool = True
    action: str
    db: str
    written: dict[str, int] = Field(default_factory=dict, description="label rows written per source")
    inserted: int = 0
    updated: int = 0
    deleted_stale: int = 0
    lines_read: int = 0
    imported: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejected_lines: list[dict[str, Any]] = Field(default_factory=list, description=f"first {MAX_REJECTS_SHOWN}: line, reason")
    exported: int = 0
    path: Optional[str] = None
    labels_version: int = 0
    report: dict[str, Any] = Field(default_factory=dict, description="summary of the label quality report")
    report_path: Optional[str] = None
    query: Optional[dict[str, Any]] = None
    taxonomy: dict[str, Any] = Field(default_factory=dict, description="the taxonomy labels were checked against")
    warnings: list[str] = Field(default_factory=list)
    seconds: float = 0.0


def _texts(store: Store) -> dict[str, str]:
    q = store.read("queries", columns=["query_id", "text"])
    return dict(zip(q.column("query_id").to_pylist(), q.column("text").to_pylist()))


def rule_labels(queries: pa.Table, lexicons: dict[str, list[str]], created_at, max_actors: int = 4,
                taxonomy: Optional[Taxonomy] = None) -> pa.Table:
    """Rule labels of all queries with Ray Data: an actor pool of RuleLabelers (lexicon compiled once each)."""
    import ray

    blocks = [queries.slice(i, RULE_BLOCK_ROWS) for i in range(0, queries.num_rows, RULE_BLOCK_ROWS)]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = max(1, min(max_actors, cpus, len(blocks)))
    ds = ray.data.from_arrow(blocks).map_batches(
        RuleLabeler, fn_constructor_kwargs={"lexicons": lexicons, "created_at": created_at,
                                            "taxonomy": taxonomy.model_dump() if taxonomy else None},
        batch_format="pyarrow", batch_size=1024, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors))
    parts = [conform(t, "labels") for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(parts) if parts else schema_of("labels").empty_table()


def _delete_stale(store: Store, keep: set[str]) -> int:
    """Drop weak labels this run no longer produces (a changed catalogue, stricter thresholds)."""
    old = store.read("labels", columns=["label_id", "source"])
    weak = old.filter(pc.is_in(old["source"], pa.array(["rule", "behaviour"])))
    stale = sorted(set(weak.column("label_id").to_pylist()) - keep)
    for i in range(0, len(stale), 500):
        store.delete("labels", "label_id IN (" + ",".join(f"'{s}'" for s in stale[i:i + 500]) + ")")
    return len(stale)


def _write(store: Store, table: pa.Table, result: LabelResult) -> None:
    if table.num_rows:
        stats = store.upsert("labels", table)
        result.inserted, result.updated = stats.inserted, stats.updated
        result.written = {s: table.column("source").to_pylist().count(s) for s in sorted(set(table.column("source").to_pylist()))}


def run_weak(store: Store, config: LabelConfig, result: LabelResult) -> None:
    from ray_app.runtime import init_ray

    queries = store.read("queries", columns=["query_id", "text"])
    if queries.num_rows == 0:
        raise JobError(f"no queries in {store.uri}: ingest queries first (python -m jobs.ingest ...)")
    lexicons = build_lexicons(store.read("products", columns=["brand", "category_path", "attributes", "title"]))
    init_ray(config.ray_address, config.num_cpus, quiet=config.quiet)
    now = utcnow()
    taxonomy = declared_taxonomy(store)  # None: the rules' own classes are the built-in taxonomy
    rules = rule_labels(queries, lexicons, now, taxonomy=taxonomy)
    stats = aggregate_events(store.read("events", columns=EVENT_COLUMNS), config.position_bias_eta)
    rows = behaviour_label_rows(stats, config.min_impressions, config.position_bias_eta, now)
    if taxonomy is not None:
        rows = _on_declared_scale(rows, taxonomy, result)
    behaviour = conform(pa.Table.from_pylist(rows, schema=schema_of("labels")), "labels")
    table = pa.concat_tables([rules, behaviour])
    result.deleted_stale = _delete_stale(store, set(table.column("label_id").to_pylist()))
    _write(store, table, result)


def _on_declared_scale(rows: list[dict[str, Any]], taxonomy: Taxonomy, result: LabelResult) -> list[dict[str, Any]]:
    """Behaviour grades (made on the ESCI scale) as the declared grade of equal gain; dropped when none has it."""
    out = []
    for row in rows:
        grade = taxonomy.grade_for_gain(float(ESCI_GAIN.get(row["value"], -1)))
        if grade is not None:
            out.append({**row, "value": grade})
    if len(out) < len(rows):
        result.warnings.append(f"{len(rows) - len(out)} behaviour labels dropped: the taxonomy's grades "
                               f"{taxonomy.grades} have no grade with their ESCI gain")
    return out


def run_import(store: Store, config: LabelConfig, result: LabelResult) -> None:
    if not config.path:
        raise JobError("--action import needs --path (Label Studio .json, .jsonl or .csv)")
    labels = store.read("labels")
    weak = labels.filter(pc.invert(pc.equal(labels["source"], "human")))
    stored = {(r["target_id"], r["task"], r["source"]): r for r in latest_per_source(weak).to_pylist()}
    products = set(store.read("products", columns=["product_id"]).column("product_id").to_pylist())
    people = labels.filter(pc.equal(labels["source"], "human")).column("annotator").to_pylist()
    ctx = ImportContext(texts=_texts(store), products=products, stored=stored, default_annotator=config.annotator,
                        taxonomy=store_taxonomy(store), pseudonym_key=resolve_key(config.pseudonym_key)[0],
                        known_annotators=set(people))
    try:
        outcome = import_records(config.path, ctx)
    except (OSError, ValueError) as exc:  # missing file, broken JSON document
        raise JobError(f"cannot import {config.path}: {exc}") from exc
    result.path, result.lines_read, result.imported = config.path, outcome.read, outcome.imported
    result.unchanged, result.rejected = outcome.unchanged, len(outcome.rejected)
    result.rejected_lines = outcome.rejected[:MAX_REJECTS_SHOWN]
    _write(store, rows_to_arrow(outcome.rows, "labels") if outcome.rows else schema_of("labels").empty_table(), result)


def run_export(store: Store, config: LabelConfig, result: LabelResult) -> None:
    if not config.path:
        raise JobError("--action export needs --path (.json Label Studio tasks, .jsonl or .csv)")
    labels = store.read("labels")
    weak = labels.filter(pc.invert(pc.equal(labels["source"], "human")))
    products = store.read("products", columns=["product_id", "title"])
    titles = dict(zip(products.column("product_id").to_pylist(), products.column("title").to_pylist()))
    try:
        result.exported = write_export(config.path, labels.to_pylist(), resolve_labels(labels).to_pylist(),
                                       resolve_labels(weak).to_pylist(), _texts(store), titles)
    except (OSError, ValueError) as exc:
        raise JobError(f"cannot export to {config.path}: {exc}") from exc
    result.path = config.path


def run_show(store: Store, config: LabelConfig, result: LabelResult) -> None:
    qid = config.query_id
    texts = _texts(store)
    if not qid or qid not in texts:
        raise JobError(f"--action show needs --query-id of a stored query; {qid!r} is not in {store.uri}")
    q = qid.replace("'", "''")
    labels = store.read("labels", where=f"target_id = '{q}' OR target_id LIKE '{q}::%'")
    labels = labels.filter(pc.or_(pc.equal(labels["target_id"], qid), pc.starts_with(labels["target_id"], qid + "::")))
    resolved = {(r["target_id"], r["task"]): r for r in resolve_labels(labels).to_pylist()}
    print(f"query {qid}: {texts[qid]!r}")
    rows = sorted(labels.to_pylist(), key=lambda r: (r["target_id"], r["task"], r["source"], r["annotator"]))
    for r in rows:
        mark = "*" if resolved.get((r["target_id"], r["task"]), {}).get("label_id") == r["label_id"] else " "
        target = "" if r["target_id"] == qid else r["target_id"].split("::", 1)[1] + " "
        print(f" {mark} {r['task']:<9} {target}{r['source']:<9} {describe(r):<40} conf={r['confidence']:.2f} by {r['annotator']}")
    print("   (* = resolved label)")
    result.query = {"query_id": qid, "text": texts[qid], "labels": len(rows),
                    "resolved": {f"{t}:{k}" if t != qid else k: describe(r) for (t, k), r in sorted(resolved.items())}}


def run_taxonomy(store: Store, config: LabelConfig, result: LabelResult) -> None:
    """Print the taxonomy labels are checked against (declared by --taxonomy before any action)."""
    if not config.quiet:
        tax = store_taxonomy(store)
        print(f"taxonomy {tax.name!r}: {len(tax.intents)} intents (out of scope: {tax.out_of_scope}), "
              f"entity types {tax.entity_types}, grades {tax.grades}", file=sys.stderr)
        print("intents: " + ", ".join(tax.intents), file=sys.stderr)


def run_label_studio_config(store: Store, config: LabelConfig, result: LabelResult) -> None:
    if not config.path:
        raise JobError("--action label-studio-config needs --path (the XML file to write)")
    try:
        Path(config.path).parent.mkdir(parents=True, exist_ok=True)
        Path(config.path).write_text(label_studio_config(store_taxonomy(store)), encoding="utf-8")
    except OSError as exc:
        raise JobError(f"cannot write the Label Studio config to {config.path}: {exc}") from exc
    result.path = config.path


def declare(store: Store, config: LabelConfig, result: LabelResult) -> None:
    """Save --taxonomy into the store (before the action, so the action already uses it)."""
    try:
        taxonomy = load_taxonomy_file(config.taxonomy)
    except TaxonomyError as exc:
        raise JobError(str(exc)) from exc
    result.warnings += declare_taxonomy(store, taxonomy, resolve_key(config.pseudonym_key)[0], source=config.taxonomy)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)


ACTIONS = {"weak": run_weak, "import": run_import, "export": run_export, "report": None, "show": run_show,
           "taxonomy": run_taxonomy, "label-studio-config": run_label_studio_config}


def run(config: LabelConfig) -> LabelResult:
    """Run one labelling action; weak, import and report also compute the quality report."""
    started = time.perf_counter()
    store = Store(config.db)
    result = LabelResult(action=config.action, db=store.uri)
    if config.taxonomy:
        declare(store, config, result)
    declared = declared_taxonomy(store)
    result.taxonomy = taxonomy_summary(declared or builtin_taxonomy(), declared is not None)
    if ACTIONS[config.action] is not None:
        ACTIONS[config.action](store, config, result)
    if config.action in ("weak", "import", "report"):
        report = quality_report(store.read("labels"), store.read("queries", columns=["query_id", "text"]),
                                store.read("judgments", columns=["query_id", "product_id", "grade"]),
                                gains=(declared or builtin_taxonomy()).grades)
        result.report = report_summary(report)
        if config.report_out:
            out = Path(config.report_out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
            result.report_path = str(out)
        if not config.quiet:
            print(f"labels: {result.report['labels_by_source']} | conflicts {result.report['conflicts']}", file=sys.stderr)
    result.labels_version = store.version("labels")
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def main(argv=None) -> int:
    return main_wrapper(run, LabelConfig, "jobs.label", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
