"""The Ray Data ingest pipeline for one target table.

plan work units on the driver: JSONL files are cut into line-aligned byte ranges of about
  `block_rows` lines (every line belongs to exactly one range); other formats are one unit a file
  -> Ray Data: parse + clean + validate each unit in parallel tasks (row number and raw text
     kept; each row ok or quarantined with a reason)
  -> write_lance into a staging dataset (parallel Lance writers)
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
from ray_app.ingest.readers import detect_format, line_range, parse_file, read_bytes
from ray_app.store import Store, rows_to_arrow, schema_of, utcnow
from schemas.ingest import TableIngestStats
from schemas.records import TABLE_KEYS

META_FIELDS = [pa.field("_status", pa.string()), pa.field("_source", pa.string()), pa.field("_row", pa.int64()),
               pa.field("_sub", pa.int64()), pa.field("_raw", pa.string()), pa.field("_reason", pa.string()),
               pa.field("_field", pa.string())]
Transform = Callable[[dict, str], list[dict]]  # (record, source path) -> records
BYTES_PER_ROW_GUESS = 400


def staging_schema(table: str) -> pa.Schema:
    """The table's columns, all nullable (quarantined rows have none), plus bookkeeping columns."""
    return pa.schema([f.with_nullable(True) for f in schema_of(table)] + META_FIELDS)


def plan_units(paths: list[str], forced_format: Optional[str], block_rows: int) -> list[dict[str, Any]]:
    """Work units: byte ranges of plain (not gzipped) local JSONL files, whole files otherwise."""
    from ray_app.ingest.adapters import list_files

    files = []
    for path in paths:  # folders expand to the files in them whose names say a known format
        listed = list_files(path)
        files += listed if len(listed) == 1 and listed[0] == path else [f for f in listed if known_format(f, forced_format)]
    units = []
    for path in files:
        fmt = detect_format(path, forced_format)
        size = _local_size(path)
        chunk = max(1, block_rows) * BYTES_PER_ROW_GUESS
        if fmt == "jsonl" and size is not None and not path.lower().endswith(".gz") and size > chunk:
            units += [{"path": path, "start": s, "end": min(size, s + chunk)} for s in range(0, size, chunk)]
        else:
            units.append({"path": path, "start": 0, "end": -1})
    return units


def known_format(path: str, forced_format: Optional[str] = None) -> bool:
    """True when the path's name (or `forced_format`) says a format the readers take."""
    try:
        detect_format(path, forced_format)
        return True
    except ValueError:
        return False


def _local_size(path: str) -> Optional[int]:
    if "://" in path:
        return None
    try:
        import os

        return os.path.getsize(path)
    except OSError:
        return None


def _quarantine(meta: dict, raw: str, data: Optional[dict], reason: str, field: str) -> dict[str, Any]:
    if not raw and data is not None:
        raw = json.dumps(data, ensure_ascii=False, default=str)
    return {**meta, "_status": "quarantine", "_raw": raw, "_reason": reason, "_field": field}


def _process_units(batch: dict[str, Any], table: str, ctx_kwargs: dict, mapping: dict[str, str],
                   transform: Optional[Transform], forced_format: Optional[str], encoding: Optional[str]) -> pa.Table:
    """Parse, (adapt,) clean and validate every row of the batch's work units."""
    ctx = CleanContext(table=table, **ctx_kwargs)
    out: list[dict[str, Any]] = []
    for path, start, end in zip(batch["path"], batch["start"], batch["end"]):
        payload = read_bytes(str(path))
        first = 1
        if int(end) >= 0:
            payload, first = line_range(payload, int(start), int(end))
        for raw in parse_file(str(path), payload, forced_format, encoding, first_line=first):
            meta = {"_source": raw["_source"], "_row": raw["_row"], "_sub": 0}
            if raw["_error"]:
                out.append(_quarantine(meta, raw["_raw"], None, raw["_error"], ""))
                continue
            records = [raw["_data"]]
            if transform is not None:
                try:
                    records = transform(raw["_data"], str(path))
                except Reject as exc:
                    out.append(_quarantine(meta, raw["_raw"], raw["_data"], exc.reason, exc.field))
                    continue
            for i, record in enumerate(records):
                meta = {**meta, "_sub": i}
                # a record expanded into many (a JSON document of utterances) keeps its own raw text
                rec_raw = "" if len(records) > 1 else raw["_raw"]
                try:
                    row = clean_record(record, ctx, mapping)
                except Reject as exc:
                    out.append(_quarantine(meta, rec_raw, record, exc.reason, exc.field))
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
    units = plan_units(paths, forced_format, block_rows)
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    ds = ds.map_batches(_process_units, batch_format="numpy", batch_size=1,
                        fn_kwargs={"table": table, "ctx_kwargs": ctx_kwargs, "mapping": mapping or {},
                                   "transform": transform, "forced_format": forced_format, "encoding": encoding})
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
