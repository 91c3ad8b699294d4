"""The Ray Data ingest pipeline for one target table.

read files (Ray Data, any filesystem pyarrow knows: local, s3://, gs://)
  -> parse into raw rows (row number + raw text kept)           [map_batches, per file]
  -> rebalance into blocks of `block_rows`                       [streaming repartition]
  -> clean + validate each row (ok or quarantine with a reason)  [map_batches, parallel]
  -> write_lance into a staging dataset                          [parallel Lance writers]
then on the driver: de-duplicate by key (latest row wins), one merge_insert commit into the
table (one new version; a crash before it leaves the table untouched, so a re-run is clean),
the quarantined rows into `quarantine` (ids derived from source + row + reason: re-runs don't
duplicate them), and a ledger row in `ingest_runs`: read = accepted + quarantined + duplicates.
"""
from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from typing import Any, Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray

from ray_app.ids import stable_id
from ray_app.ingest.clean import CleanContext, Reject, clean_record
from ray_app.ingest.readers import FILE_EXTENSIONS, parse_file
from ray_app.store import Store, rows_to_arrow, schema_of, utcnow
from schemas.ingest import TableIngestStats
from schemas.records import TABLE_KEYS

META_FIELDS = [pa.field("_status", pa.string()), pa.field("_source", pa.string()), pa.field("_row", pa.int64()),
               pa.field("_sub", pa.int64()), pa.field("_raw", pa.string()), pa.field("_reason", pa.string()),
               pa.field("_field", pa.string())]
Transform = Callable[[dict, str], list[dict]]  # (record, source path) -> records


def staging_schema(table: str) -> pa.Schema:
    """The table's columns, all nullable (quarantined rows have none), plus bookkeeping columns."""
    return pa.schema([f.with_nullable(True) for f in schema_of(table)] + META_FIELDS)


def _parse_batch(batch: pa.Table, forced_format: Optional[str], transform: Optional[Transform],
                 encoding: Optional[str]) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for path, payload in zip(batch.column("path").to_pylist(), batch.column("bytes").to_pylist()):
        for raw in parse_file(path, payload, forced_format, encoding):
            if transform is None or raw["_error"]:
                rows.append({**raw, "_sub": 0})
                continue
            try:
                produced = transform(json.loads(raw["_json"]), path)
            except Reject as exc:
                rows.append({**raw, "_sub": 0, "_error": str(exc)})
                continue
            for i, rec in enumerate(produced):
                text = json.dumps(rec, ensure_ascii=False, default=str)
                # One record expanded into many (a JSON document of utterances): each keeps its own raw text.
                rows.append({**raw, "_sub": i, "_json": text, "_raw": text if len(produced) > 1 else raw["_raw"]})
    return pa.Table.from_pylist(rows, schema=pa.schema([("_source", pa.string()), ("_row", pa.int64()), ("_raw", pa.string()),
                                                         ("_json", pa.string()), ("_error", pa.string()), ("_sub", pa.int64())]))


def _clean_batch(batch: pa.Table, table: str, ctx_kwargs: dict, mapping: dict[str, str]) -> pa.Table:
    ctx = CleanContext(table=table, **ctx_kwargs)
    out: list[dict[str, Any]] = []
    for raw in batch.to_pylist():
        meta = {"_source": raw["_source"], "_row": raw["_row"], "_sub": raw["_sub"]}
        if raw["_error"]:
            out.append({**meta, "_status": "quarantine", "_raw": raw["_raw"], "_reason": raw["_error"], "_field": ""})
            continue
        try:
            row = clean_record(json.loads(raw["_json"]), ctx, mapping)
        except Reject as exc:
            out.append({**meta, "_status": "quarantine", "_raw": raw["_raw"], "_reason": exc.reason, "_field": exc.field})
            continue
        out.append({**row, **meta, "_status": "ok", "_raw": "", "_reason": "", "_field": ""})
    return pa.Table.from_pylist(out, schema=staging_schema(table))


def _dedup_latest(ok: pa.Table, keys: list[str]) -> tuple[pa.Table, int]:
    """Keep the last row per key in read order (source, row, sub); return rows and #dropped."""
    if ok.num_rows == 0:
        return ok, 0
    ok = ok.sort_by([("_source", "ascending"), ("_row", "ascending"), ("_sub", "ascending")])
    ok = ok.append_column("_pos", pa.array(range(ok.num_rows), pa.int64()))
    last = ok.group_by(keys).aggregate([("_pos", "max")]).column("_pos_max")
    kept = ok.take(pc.take(last, pc.sort_indices(last)))  # the last position of each key, in read order
    return kept.drop_columns(["_pos"]), ok.num_rows - kept.num_rows


def reason_kind(field: str, reason: str) -> str:
    """A short category for summaries: 'price: expected a number', 'broken encoding', ..."""
    head = reason.split(":")[0] if not field else reason.split(",")[0].split("(")[0]
    head = " ".join(head.split()[:5])
    return f"{field}: {head}" if field else head


def ingest_table(store: Store, table: str, paths: list[str], ctx_kwargs: dict, mapping: Optional[dict[str, str]] = None,
                 transform: Optional[Transform] = None, forced_format: Optional[str] = None, block_rows: int = 20_000,
                 source_label: str = "", encoding: Optional[str] = None) -> TableIngestStats:
    """Run the pipeline for one table; returns the ledger entry it wrote."""
    started = utcnow()
    run_id = uuid.uuid4().hex[:16]
    staging_root = f"{store.uri.rstrip('/')}/_staging"
    staging = f"{staging_root}/{table}-{run_id}.lance"
    _remove(staging_root)  # leftovers of a crashed run: never merged, safe to drop
    ds = ray.data.read_binary_files(paths, include_paths=True, file_extensions=FILE_EXTENSIONS)
    ds = ds.map_batches(_parse_batch, batch_format="pyarrow", batch_size=1,
                        fn_kwargs={"forced_format": forced_format, "transform": transform, "encoding": encoding})
    ds = ds.repartition(target_num_rows_per_block=block_rows)
    ds = ds.map_batches(_clean_batch, batch_format="pyarrow", batch_size=None,
                        fn_kwargs={"table": table, "ctx_kwargs": ctx_kwargs, "mapping": mapping or {}})
    ds.write_lance(staging, schema=staging_schema(table), storage_options=store.storage_options)
    import lance

    staged = lance.dataset(staging, storage_options=store.storage_options).to_table()
    read = staged.num_rows
    is_ok = pc.equal(staged.column("_status"), "ok")
    ok, bad = staged.filter(is_ok), staged.filter(pc.invert(is_ok))
    accepted, duplicates = _dedup_latest(ok, TABLE_KEYS[table])
    stats = store.upsert(table, accepted) if accepted.num_rows else None
    now = utcnow()
    quarantine_rows = [{
        "quarantine_id": stable_id("q", table, r["_source"], r["_row"], r["_sub"], r["_reason"], r["_raw"]),
        "table": table, "source": r["_source"], "row_number": r["_row"], "raw": r["_raw"], "reason": r["_reason"],
        "field": r["_field"], "run_id": run_id, "created_at": now,
    } for r in bad.select(["_source", "_row", "_sub", "_raw", "_reason", "_field"]).to_pylist()]
    if quarantine_rows:
        store.upsert("quarantine", rows_to_arrow(quarantine_rows, "quarantine"))
    reasons = Counter(reason_kind(r["field"], r["reason"]) for r in quarantine_rows)
    version = stats.version if stats else store.table(table).version
    result = TableIngestStats(table=table, source=source_label or ",".join(paths), read=read, accepted=accepted.num_rows,
                              quarantined=len(quarantine_rows), duplicates=duplicates,
                              inserted=stats.inserted if stats else 0, updated=stats.updated if stats else 0,
                              version=version, quarantine_reasons=dict(reasons.most_common()), run_id=run_id)
    store.upsert("ingest_runs", rows_to_arrow([{**result.model_dump(exclude={"quarantine_reasons"}),
                                               "started_at": started, "finished_at": utcnow()}], "ingest_runs"))
    _remove(staging)
    return result


def _remove(uri: str) -> None:
    """Delete a staging dataset on a local disk or an object store."""
    if "://" not in uri:
        shutil.rmtree(uri, ignore_errors=True)
        return
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        fs.delete_dir(path)
    except (OSError, pa.ArrowException):
        pass  # a leftover staging folder is harmless: it is never read by the tables
