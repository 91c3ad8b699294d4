"""Data quality report of a snapshot: counts, null rates, duplicates, quarantine, labels, drift.

Computed from the pinned table versions only, so the report of a snapshot is reproducible;
the "changes" section compares against the previous snapshot (keys added, removed, changed,
and distribution drift as total-variation distance).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc

from ray_app.ingest.quarantine import reason_kind
from ray_app.store import Store, schema_of
from schemas.records import DATA_TABLES, TABLE_KEYS

# Derived columns (vectors written by jobs.embed) and timestamps are not data changes.
IGNORED_FOR_CHANGES = {"updated_at", "created_at", "vector", "vector_model", "vector_text_hash"}


def null_rates(table: pa.Table) -> dict[str, float]:
    """Share of rows per column that are null, an empty string or an empty list."""
    if table.num_rows == 0:
        return {}
    out = {}
    for name in table.column_names:
        col = table.column(name)
        missing = col.null_count
        if pa.types.is_string(col.type):
            missing += pc.sum(pc.equal(pc.fill_null(col, "x"), "")).as_py() or 0
        elif pa.types.is_list(col.type):
            missing += pc.sum(pc.equal(pc.fill_null(pc.list_value_length(col), 1), 0)).as_py() or 0
        out[name] = round(missing / table.num_rows, 4)
    return out


def _row_hashes(table: pa.Table, keys: list[str]) -> dict[str, str]:
    cols = [c for c in table.column_names if c not in IGNORED_FOR_CHANGES]
    out = {}
    for row in table.select(cols).to_pylist():
        key = "|".join(str(row[k]) for k in keys)
        out[key] = hashlib.sha1(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()
    return out


def tvd(a: Counter, b: Counter) -> float:
    """Total-variation distance between two categorical distributions (0 same, 1 disjoint)."""
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return 0.0 if na == nb else 1.0
    return round(0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b)), 4)


def label_distribution(labels: pa.Table) -> dict[str, Any]:
    rows = labels.select(["task", "value", "source", "spans"]).to_pylist()
    return {
        "by_task_source": dict(Counter(f"{r['task']}/{r['source']}" for r in rows)),
        "intent": dict(Counter(r["value"] for r in rows if r["task"] == "intent").most_common()),
        "relevance": dict(Counter(r["value"] for r in rows if r["task"] == "relevance").most_common()),
        "entity_types": dict(Counter(s["type"] for r in rows if r["task"] == "entity" for s in r["spans"]).most_common()),
    }


def _distributions(tables: dict[str, pa.Table]) -> dict[str, Counter]:
    dist = {}
    products = tables["products"]
    if products.num_rows:
        dist["product_top_category"] = Counter((p[0] if p else "") for p in products.column("category_path").to_pylist())
        dist["product_brand"] = Counter(products.column("brand").to_pylist())
    if tables["events"].num_rows:
        dist["event_type"] = Counter(tables["events"].column("event_type").to_pylist())
    labels = tables["labels"]
    if labels.num_rows:
        dist["intent_labels"] = Counter(v for t, v in zip(labels.column("task").to_pylist(), labels.column("value").to_pylist()) if t == "intent")
    if tables["judgments"].num_rows:
        dist["judgment_grade"] = Counter(tables["judgments"].column("grade").to_pylist())
    return dist


def snapshot_report(store: Store, name: str, previous: Optional[str] = None) -> dict[str, Any]:
    """The full quality report of snapshot `name` (and its changes since `previous`)."""
    versions = store.snapshot_versions(name)
    tables = {t: store.read_snapshot(name, t) for t in DATA_TABLES}
    runs = store.read("ingest_runs").to_pylist()
    quarantine = tables["quarantine"].to_pylist()
    report: dict[str, Any] = {
        "snapshot": name,
        "versions": versions,
        "row_counts": {t: tables[t].num_rows for t in DATA_TABLES},
        "null_rates": {t: null_rates(tables[t]) for t in DATA_TABLES if t != "quarantine"},
        "ingest": {
            "duplicates_removed": dict(Counter({r["table"]: 0 for r in runs}) + Counter(
                {t: sum(r["duplicates"] for r in runs if r["table"] == t and r["version"] <= versions.get(t, 0)) for t in DATA_TABLES})),
            "runs": len([r for r in runs if r["version"] <= versions.get(r["table"], 0)]),
        },
        "quarantine": {
            "total": len(quarantine),
            "by_table": dict(Counter(q["table"] for q in quarantine)),
            "by_reason": dict(Counter(f"{q['table']}: " + reason_kind(q["field"], q["reason"])
                                      for q in quarantine).most_common(20)),
        },
        "labels": label_distribution(tables["labels"]),
    }
    if previous:
        prev_versions = store.snapshot_versions(previous)
        # a table the older snapshot did not pin (created since, like `taxonomy`) was empty then
        prev_tables = {t: store.read_snapshot(previous, t) if t in prev_versions else schema_of(t).empty_table()
                       for t in DATA_TABLES}
        changes = {}
        for t in DATA_TABLES:
            if prev_versions.get(t) == versions.get(t):
                changes[t] = {"added": 0, "removed": 0, "changed": 0, "row_delta": 0}
                continue
            new, old = _row_hashes(tables[t], TABLE_KEYS[t]), _row_hashes(prev_tables[t], TABLE_KEYS[t])
            changes[t] = {"added": len(new.keys() - old.keys()), "removed": len(old.keys() - new.keys()),
                          "changed": sum(1 for k in new.keys() & old.keys() if new[k] != old[k]),
                          "row_delta": tables[t].num_rows - prev_tables[t].num_rows}
        now_dist, prev_dist = _distributions(tables), _distributions(prev_tables)
        report["changes"] = {"against": previous, "tables": changes,
                             "drift_tvd": {k: tvd(now_dist.get(k, Counter()), prev_dist.get(k, Counter()))
                                           for k in sorted(set(now_dist) | set(prev_dist))}}
    return report


def report_markdown(report: dict[str, Any]) -> str:
    """A readable Markdown rendering of snapshot_report()."""
    lines = [f"# Data quality report: snapshot `{report['snapshot']}`", "", "| table | version | rows |", "|---|---:|---:|"]
    for t, n in report["row_counts"].items():
        lines.append(f"| {t} | {report['versions'].get(t, 0)} | {n:,} |")
    lines += ["", "## Null or empty rates (columns above 0%)", ""]
    for t, rates in report["null_rates"].items():
        shown = {c: r for c, r in rates.items() if r > 0}
        if shown:
            lines.append(f"- **{t}**: " + ", ".join(f"{c} {r:.1%}" for c, r in sorted(shown.items(), key=lambda x: -x[1])))
    lines += ["", f"## Ingest: {report['ingest']['runs']} runs; duplicates removed (latest wins)", ""]
    lines += [f"- {t}: {n:,}" for t, n in report["ingest"]["duplicates_removed"].items() if n]
    q = report["quarantine"]
    lines += ["", f"## Quarantine: {q['total']:,} rows", ""] + [f"- {r}: {n:,}" for r, n in q["by_reason"].items()]
    lab = report["labels"]
    lines += ["", "## Labels", "", "- by task/source: " + ", ".join(f"{k} {v:,}" for k, v in lab["by_task_source"].items()),
              "- intents: " + ", ".join(f"{k} {v:,}" for k, v in lab["intent"].items()),
              "- entity types: " + ", ".join(f"{k} {v:,}" for k, v in lab["entity_types"].items()),
              "- relevance grades: " + ", ".join(f"{k} {v:,}" for k, v in lab["relevance"].items())]
    if "changes" in report:
        ch = report["changes"]
        lines += ["", f"## Changes since `{ch['against']}`", "", "| table | added | removed | changed | row delta |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {t} | {c['added']:,} | {c['removed']:,} | {c['changed']:,} | {c['row_delta']:+,} |" for t, c in ch["tables"].items()]
        lines += ["", "Drift (total-variation distance): " + ", ".join(f"{k} {v:.3f}" for k, v in ch["drift_tvd"].items())]
    return "\n".join(lines) + "\n"
