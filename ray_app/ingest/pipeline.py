"""The Ray Data ingest pipeline for the tables one set of files fills (one table; or two, as an
invoice log fills products and events, or a judgments file its queries and judgments).

plan work units on the driver: JSONL and CSV files are cut into line-aligned byte ranges of about
  `block_rows` lines (one streaming pass counts lines, and quotes for CSV, so every line and every
  quoted multi-line record belongs to exactly one range, and each range knows its first line's
  number); Parquet files into runs of row groups; each task reads only its range or row groups.
  Gzipped JSONL/CSV files are decompressed once first and split the same way; JSON documents are
  one unit a file
  -> Ray Data (`from_items` of the units + `map_batches`): parse each unit ONCE, then clean +
     validate its rows for every table, in parallel tasks (row number and raw text kept; each row
     ok or quarantined with a reason; rows tagged and sorted by a hash of their key)
  -> each task writes a Lance fragment per table into this run's own staging dataset of that
     table, which the driver commits once every task is done (what write_lance does, for one
     dataset: here one pass fills several)
then, table by table, ray_app.ingest.resolve, on the driver for a small feed and per key-hash range in Ray tasks
for a large one (ray_app.ingest.buckets): number repeated events, de-duplicate by key (latest
row wins; a product's other titles kept as variants), link returns to the purchases they cancel,
complete partial rows from the stored ones, then one merge_insert commit into the table, streamed
from a scan (one new version; a crash before it leaves the table untouched, so a re-run is clean),
the quarantined rows into `quarantine` (ids derived from source + row + reason: re-runs don't
duplicate them; identifiers in rows of `users`, `events` and `labels` pseudonymised, the row
as read sealed), and a ledger row in `ingest_runs`: read = accepted + quarantined + duplicates.
"""
from __future__ import annotations

import gc
import json
import re
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray

from ray_app.ids import stable_id
from ray_app.object_store import is_uri
from ray_app.ingest.clean import AUTO_KEY, IGNORED_KEY, PRESENT_KEY, CleanContext, Reject, clean_record
from ray_app.ingest.readers import (decode_utf8, detect_format, file_size, line_starts, parse_file, parse_parquet_groups,
                                    read_bytes, read_range)
from ray_app.ingest.buckets import OK, commit_fragments, resolve_bucketed, with_bucket, write_fragments
from ray_app.ingest.resolve import QUARANTINE_COLUMNS, resolve
from ray_app.ingest.quarantine import PERSONAL_TABLES, reason_kind, redact_personal
from ray_app.store import Store, rows_to_arrow, schema_of, utcnow
from schemas.ingest import TableIngestStats
from schemas.records import TABLE_KEYS

META_FIELDS = [pa.field("_status", pa.string()), pa.field("_source", pa.string()), pa.field("_row", pa.int64()),
               pa.field("_sub", pa.int64()), pa.field("_raw", pa.string()), pa.field("_reason", pa.string()),
               pa.field("_field", pa.string()), pa.field("_sealed", pa.string()), pa.field(AUTO_KEY, pa.bool_()),
               pa.field(PRESENT_KEY, pa.list_(pa.string())), pa.field(IGNORED_KEY, pa.list_(pa.string())),
               pa.field("_bucket", pa.int32())]  # the hash of the row's key (ray_app.ingest.buckets)
Transform = Callable[[dict, str], list[dict]]  # (record, source path) -> records
BYTES_PER_ROW_GUESS = 400  # until a file's first lines say otherwise (and for gzip, before it is decompressed)
# A parse task's range holds about `block_rows` rows, and at most this many bytes: a task of
# 50k invoice lines or events runs ~3 s (Ray Data waits up to 0.1 s to see a task end and starts
# the next, so 1 s tasks lost ~10% of the CPUs), while 50k product pages of 4 KiB would hold
# 200 MB of text and its dicts in one worker; 32 MiB of them is 8k rows.
UNIT_BYTES = 32 << 20
RESOLVE_ROWS = 250_000  # accepted rows above which a feed is resolved in Ray tasks, and rows per task
STALE_STAGING_S = 24 * 3600  # a staging dataset this old belongs to a crashed run, never to a live one


def staging_schema(table: str) -> pa.Schema:
    """The table's columns, all nullable (quarantined rows have none), plus bookkeeping columns."""
    return pa.schema([f.with_nullable(True) for f in schema_of(table)] + META_FIELDS)


def plan_units(paths: list[str], forced_format: Optional[str], block_rows: int,
               spill_dir: Optional[str] = None, parallelism: int = 1) -> list[dict[str, Any]]:
    """Work units (every key in every unit, as Ray Data's blocks need): `kind` "whole" (a file),
    "lines" (bytes [start, end) whose first line is `first_line`; CSV ranges also read the header,
    bytes [0, header_end)) or "row_groups" (Parquet row groups [start, end), first row `first_line`).
    `path` names the file (rows' source); `read_from` is where its bytes are: a gzipped JSONL or
    CSV file is decompressed into `spill_dir` (one streaming pass) so that it splits like any other.
    A file's ranges come in a multiple of `parallelism` (the CPUs the tasks share), so that 11
    ranges on 2 CPUs do not leave one idle for the last: 12 slightly smaller ones instead."""
    from ray_app.ingest.adapters import list_files

    files = []
    for path in paths:  # folders expand to the files in them whose names say a known format
        listed = list_files(path)
        files += listed if len(listed) == 1 and listed[0] == path else [f for f in listed if known_format(f, forced_format)]
    units = []
    block_rows = max(1, block_rows)
    for n, path in enumerate(files):
        fmt = detect_format(path, forced_format)
        whole = {"path": path, "read_from": path, "kind": "whole", "start": 0, "end": -1, "first_line": 1, "header_end": 0}
        if fmt == "parquet":
            units += [{**u, "read_from": path} for u in _row_group_units(path, block_rows)] or [whole]
            continue
        size = file_size(path)
        chunk = block_rows * BYTES_PER_ROW_GUESS
        if fmt not in ("jsonl", "csv") or size is None:
            units.append(whole)
            continue
        source = path
        if _gzipped(path):  # compressed ~5x: worth a spill when it would make more than one range
            plain = f"{spill_dir.rstrip('/')}/{n}-{PurePosixPath(path).name.removesuffix('.gz')}" if spill_dir else None
            if plain is None or size * 5 <= chunk or not _decompress_to(path, plain):
                units.append(whole)
                continue
            source, size = plain, file_size(plain) or 0
        chunk = min(block_rows * _bytes_per_row(source, size), UNIT_BYTES)
        if size > chunk and parallelism > 1:
            ranges_wanted = -(-size // chunk)
            chunk = -(-size // (-(-ranges_wanted // parallelism) * parallelism))
        if size <= chunk:
            units.append({**whole, "read_from": source})
            continue
        header_end = 0
        if fmt == "csv":
            head = read_range(source, 0, min(size, 1 << 20))
            nl = head.find(b"\n")
            if nl < 0 or decode_utf8(head[:nl]) is None:  # no header line that every range can share
                units.append({**whole, "read_from": source})
                continue
            header_end = nl + 1
        points = line_starts(source, chunk, quotes=fmt == "csv")
        if fmt == "csv" and len(points) > 1 and points[1][0] == header_end:
            points.pop(1)  # the header alone is no range
        ends = [p[0] for p in points[1:]] + [size]
        units += [{"path": path, "read_from": source, "kind": "lines", "start": start, "end": end, "first_line": line,
                   "header_end": header_end} for (start, line), end in zip(points, ends)]
    return units


def _bytes_per_row(path: str, size: int, sample: int = 1 << 18) -> int:
    """The average line length of the file's first 256 KiB, so that a range holds about
    `block_rows` rows whether the rows are 80 bytes (an invoice line) or 4 KiB (a product)."""
    head = read_range(path, 0, min(size, sample))
    lines = head.count(b"\n")
    return BYTES_PER_ROW_GUESS if lines < 2 else max(16, len(head) // lines)


def _decompress_to(path: str, dest: str) -> bool:
    """Stream-decompress `path` into `dest` (a local path or a URI); False, and no `dest`, when the
    file is not whole gzip (it is then read as one unit, and its error quarantined)."""
    import gzip
    import zlib

    from ray_app.ingest.readers import _open_input, _open_output

    try:
        with _open_input(path) as raw, gzip.GzipFile(fileobj=raw) as src, _open_output(dest) as out:
            shutil.copyfileobj(src, out, 8 << 20)
        return True
    except (OSError, EOFError, zlib.error, pa.ArrowException):
        _remove(dest)
        return False


def _gzipped(path: str) -> bool:
    return path.lower().endswith(".gz") or read_range(path, 0, 2) == b"\x1f\x8b"


def _row_group_units(path: str, block_rows: int) -> list[dict[str, Any]]:
    """Runs of whole row groups of about `block_rows` rows (a file that cannot be opened as
    Parquet: none, so it is read whole and its error lands in quarantine)."""
    import pyarrow.parquet as pq

    from ray_app.ingest.readers import _open_input

    try:
        with _open_input(path) as f:
            meta = pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowException):
        return []
    units, first, rows, row = [], 0, 0, 1
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= block_rows or g == meta.num_row_groups - 1:
            units.append({"path": path, "kind": "row_groups", "start": first, "end": g + 1, "first_line": row, "header_end": 0})
            first, row, rows = g + 1, row + rows, 0
    return units


def known_format(path: str, forced_format: Optional[str] = None) -> bool:
    """True when the path's name (or `forced_format`) says a format the readers take."""
    try:
        detect_format(path, forced_format)
        return True
    except ValueError:
        return False


def _quarantine(meta: dict, raw: str, data: Optional[dict], reason: str, field: str, ctx: CleanContext,
                mapping: dict[str, str]) -> dict[str, Any]:
    if not raw and data is not None:
        raw = json.dumps(data, ensure_ascii=False, default=str)
    sealed = ""
    if ctx.table in PERSONAL_TABLES:
        raw, reason, sealed = redact_personal(raw, data, reason, ctx, mapping)
    return {**meta, "_status": "quarantine", "_raw": raw, "_reason": reason, "_field": field, "_sealed": sealed}


@dataclass(frozen=True)
class TableSpec:
    """One table a file fills: its (adapter) transform, column mapping, and whether it is
    `derived`: filled from another table's file (the queries a judgments file names), so rows that
    cannot be read are that table's to quarantine, and a rejected row keeps only what was derived
    for this table, not the other table's columns (which may name people)."""

    table: str
    mapping: dict[str, str] = field(default_factory=dict)
    transform: Optional[Transform] = None
    derived: bool = False


def _stage_row(path: str, raw: dict[str, Any], data: Optional[dict], spec: TableSpec, ctx: CleanContext, out: list) -> None:
    """One parsed row through `spec`'s transform and cleaner: staged ok, or quarantined with its reason."""
    meta = {"_source": raw["_source"], "_row": raw["_row"], "_sub": 0}
    mapping, derived = spec.mapping, spec.derived
    if raw["_error"]:
        if not derived:
            out.append(_quarantine(meta, raw["_raw"], None, raw["_error"], "", ctx, mapping))
        return
    records = [data]
    if spec.transform is not None:
        try:
            records = spec.transform(data, path)
        except Reject as exc:  # the raw row, read through the source's mapping so its ids are redacted
            out.append(_quarantine(meta, "" if derived else raw["_raw"], exc.record if derived else data,
                                   exc.reason, exc.field, ctx, mapping))
            return
    for i, record in enumerate(records):
        meta = {**meta, "_sub": i}
        # a record expanded into many (a JSON document of utterances) keeps its own raw text
        rec_raw = "" if len(records) > 1 or derived else raw["_raw"]
        try:
            row = clean_record(record, ctx, mapping)
        except Reject as exc:
            out.append(_quarantine(meta, rec_raw, record, exc.reason, exc.field, ctx, mapping))
            continue
        out.append({**row, **meta, "_status": "ok", "_raw": "", "_reason": "", "_field": "", "_sealed": ""})


def stage_units(batch: dict[str, Any], specs: list[TableSpec], ctx_kwargs: dict, forced_format: Optional[str],
                encoding: Optional[str]) -> list[pa.Table]:
    """Parse the batch's work units once and (adapt,) clean and validate every row for each table
    of `specs`: per table, its staged rows (ok or quarantined), tagged and sorted by key hash."""
    ctxs = [CleanContext(table=s.table, **ctx_kwargs) for s in specs]
    outs: list[list[dict[str, Any]]] = [[] for _ in specs]
    last = len(specs) - 1
    for path, source, kind, start, end, first, header_end in zip(batch["path"], batch["read_from"], batch["kind"], batch["start"],
                                                                  batch["end"], batch["first_line"], batch["header_end"]):
        path, source, start, end, first, header_end = str(path), str(source), int(start), int(end), int(first), int(header_end)
        if kind == "row_groups":
            rows = parse_parquet_groups(path, start, end, first)
        elif kind == "lines":
            payload = read_range(source, start, end)
            if header_end and start > 0:  # a CSV range: the file's header, then the range
                payload = read_range(source, 0, header_end).removeprefix(b"\xef\xbb\xbf") + payload
            rows = parse_file(path, payload, forced_format, encoding, first_line=first)
        else:
            rows = parse_file(path, read_bytes(source), forced_format, encoding)
        for raw in rows:
            for n, (spec, ctx, out) in enumerate(zip(specs, ctxs, outs)):
                # each table's transform gets its own copy of the parsed record (the last, the
                # record itself): none sees another's edits
                data = raw["_data"] if n == last or raw["_data"] is None else dict(raw["_data"])
                _stage_row(path, raw, data, spec, ctx, out)
    staged = []
    for n, spec in enumerate(specs):
        staged.append(with_bucket(pa.Table.from_pylist(outs[n], schema=staging_schema(spec.table)), spec.table))
        outs[n] = []  # the dicts are in Arrow now
    return staged


def _process_units(batch: dict[str, Any], specs: list[TableSpec], stagings: dict[str, str], ctx_kwargs: dict,
                   forced_format: Optional[str], encoding: Optional[str],
                   storage_options: Optional[dict[str, str]] = None) -> pa.Table:
    """A parse task: stage_units, then each table's rows written as a Lance fragment of its staging
    dataset (committed by the driver once every task is done). Returns the fragments' metadata
    (JSON), one row per table and fragment."""
    # The parse makes millions of small dicts and strings, and each collection they set off rescans
    # every tracked object: the worker's own heap (Ray, pyarrow, pydantic: ~200k objects) and the
    # unit's rows so far, so a unit cost more than linearly in its rows (~15% of a 20k-row unit,
    # more for larger ones). The rows hold no cycles: the collector is off for the unit and back
    # on after it, and collects whatever a unit did leave.
    enabled = gc.isenabled()
    gc.disable()
    try:
        staged = stage_units(batch, specs, ctx_kwargs, forced_format, encoding)
    finally:
        if enabled:
            gc.enable()
    tables, fragments = [], []
    for spec, rows in zip(specs, staged):
        for fragment in write_fragments(rows, stagings[spec.table], rows.schema, storage_options):
            tables.append(spec.table)
            fragments.append(fragment)
    return pa.table({"table": pa.array(tables, pa.string()), "fragment": pa.array(fragments, pa.string())})


def _commit_staging(uri: str, table: str, fragments: list[str], storage_options: Optional[dict[str, str]]):
    """One Overwrite commit of every fragment the parse tasks wrote: the staging dataset, or None
    when no row was read (an empty file, or a header alone)."""
    import lance

    if not fragments:
        return None
    commit_fragments(uri, [fragments], staging_schema(table), storage_options)
    return lance.dataset(uri, storage_options=storage_options)


class Laps:
    """Wall seconds of consecutive stages: `lap(name)` ends the stage begun at the last lap."""

    def __init__(self, seconds: Optional[dict[str, float]] = None):
        self.seconds, self.clock = dict(seconds or {}), time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.clock = round(now - self.clock, 3), now

    def then(self) -> "Laps":
        """A copy of the stages so far, timing on from now (one per table after a shared parse)."""
        return Laps(self.seconds)


def ingest_table(store: Store, table: str, paths: list[str], ctx_kwargs: dict, mapping: Optional[dict[str, str]] = None,
                 transform: Optional[Transform] = None, forced_format: Optional[str] = None, block_rows: int = 50_000,
                 source_label: str = "", encoding: Optional[str] = None, derived: bool = False,
                 resolve_rows: int = RESOLVE_ROWS) -> TableIngestStats:
    """Run the pipeline for one table; returns the ledger entry it wrote (see ingest_tables)."""
    return ingest_tables(store, [TableSpec(table, dict(mapping or {}), transform, derived)], paths, ctx_kwargs,
                         forced_format=forced_format, block_rows=block_rows, source_label=source_label,
                         encoding=encoding, resolve_rows=resolve_rows)[0]


def ingest_tables(store: Store, specs: list[TableSpec], paths: list[str], ctx_kwargs: dict,
                  forced_format: Optional[str] = None, block_rows: int = 50_000, source_label: str = "",
                  encoding: Optional[str] = None, resolve_rows: int = RESOLVE_ROWS) -> list[TableIngestStats]:
    """Run the pipeline for every table that `paths` fill (an invoice log: products and events), in
    one parse: each file is read once and each row cleaned for every table. Then each table in
    order is resolved, committed and its quarantine written, as its own ledger entry. A feed of
    more than `resolve_rows` accepted rows is resolved in Ray tasks of about that many rows each.
    The plan and parse seconds in each table's phase_seconds are the shared pass's."""
    if not specs or len({s.table for s in specs}) < len(specs):
        raise ValueError(f"one spec per table: {[s.table for s in specs]}")
    started = utcnow()
    staging_root = f"{store.uri.rstrip('/')}/_staging"
    stamp, run_ids = int(time.time()), {s.table: uuid.uuid4().hex[:16] for s in specs}
    # this run's own datasets: concurrent ingests never share one
    stagings = {s.table: f"{staging_root}/{s.table}-{stamp}-{run_ids[s.table]}.lance" for s in specs}
    _remove_stale(staging_root)
    # decompressed copies of gzipped files, which hold the file's raw ids: outside the store when
    # it is a local folder; on a cluster the tasks of every node must read them, so in staging
    first = stagings[specs[0].table]
    spill = f"{first.removesuffix('.lance')}-input" if is_uri(store.uri) else tempfile.mkdtemp(prefix="shopsearch-ingest-")
    lap = Laps()
    try:
        try:
            units = plan_units(paths, forced_format, block_rows, spill_dir=spill,
                               parallelism=int(ray.cluster_resources().get("CPU", 1)))
            lap("plan")
            ds = ray.data.from_items(units, override_num_blocks=len(units))
            # one unit a task, each writing its own fragments (a fused task of many units would
            # parse the file serially)
            ds = ds.map_batches(_process_units, batch_format="numpy", batch_size=1,
                                fn_kwargs={"specs": specs, "stagings": stagings, "ctx_kwargs": ctx_kwargs,
                                           "forced_format": forced_format, "encoding": encoding,
                                           "storage_options": store.storage_options})
            written: dict[str, list] = {s.table: [] for s in specs}
            for row in ds.iter_rows():
                written[row["table"]].append(row["fragment"])
        finally:
            _remove(spill)  # read by the parse tasks only: gone as soon as they are, or when they fail
        staged = {s.table: _commit_staging(stagings[s.table], s.table, written[s.table], store.storage_options)
                  for s in specs}
        lap("parse")
        # each table's own stages are timed on from the shared plan and parse
        return [_finish(store, spec.table, staged[spec.table], stagings[spec.table], run_ids[spec.table], started,
                        source_label or ",".join(paths), resolve_rows, lap.then())
                for spec in specs]
    finally:
        for uri in stagings.values():  # this run's own: never read again, whether it ended or failed
            _remove(uri)


def _finish(store: Store, table: str, staged, staging: str, run_id: str, started, source: str, resolve_rows: int,
            lap: "Laps") -> TableIngestStats:
    """Resolve one table's staged rows, commit them, write its quarantine and its ledger entry."""
    read, ok_rows = (staged.count_rows() if staged else 0), 0
    ignored: set[str] = set()  # set by the cleaner on accepted rows
    for batch in staged.to_batches(columns=[IGNORED_KEY], filter=OK) if read else []:  # one scan: both counted
        ok_rows += batch.num_rows
        # the distinct names in Arrow, not a Python list a row (0.8 s of 1M events' resolve)
        ignored.update(pc.unique(pc.list_flatten(batch.column(0))).to_pylist())
    extra: list[str] = []
    try:
        if ok_rows > resolve_rows:  # per key range in Ray tasks: no process holds the whole feed
            done = resolve_bucketed(store, table, staging, ok_rows, resolve_rows)
            accepted, duplicates, notes, rows, rejected, extra = (done.accepted, done.duplicates, done.notes, done.rows,
                                                                  done.rejected, done.datasets)
        else:
            small = resolve(table, staged.to_table(filter=OK) if ok_rows else staging_schema(table).empty_table(), store)
            accepted, duplicates, notes = small.accepted.num_rows, small.duplicates, small.notes
            rows, rejected = small.accepted, lambda: iter(small.rejected.select(QUARANTINE_COLUMNS).to_batches())
        lap("resolve")
        # events are immutable facts: a re-run of a feed neither adds nor rewrites them
        stats = store.upsert(table, rows, insert_only=table == "events") if accepted else None
        lap("commit")

        def bad() -> Iterator[pa.RecordBatch]:
            if staged is not None and read > ok_rows:
                yield from staged.to_batches(columns=QUARANTINE_COLUMNS, filter=f"NOT ({OK})")
            yield from rejected()

        quarantined, reasons = _write_quarantine(store, table, run_id, bad())
        lap("quarantine")
    finally:
        for uri in extra:
            _remove(uri)
    version = stats.version if stats else store.version(table)
    result = TableIngestStats(table=table, source=source, read=read, accepted=accepted,
                              quarantined=quarantined, duplicates=duplicates,
                              inserted=stats.inserted if stats else 0, updated=stats.updated if stats else 0,
                              version=version, quarantine_reasons=dict(reasons.most_common()), run_id=run_id,
                              ignored_columns=sorted(ignored), notes=notes, phase_seconds=dict(lap.seconds))
    store.upsert("ingest_runs", rows_to_arrow([{**result.model_dump(exclude={"quarantine_reasons", "ignored_columns", "notes",
                                                                                   "phase_seconds"}),
                                               "started_at": started, "finished_at": utcnow()}], "ingest_runs"))
    return result


def _write_quarantine(store: Store, table: str, run_id: str, batches: Iterator[pa.RecordBatch],
                      chunk: int = 20_000) -> tuple[int, Counter]:
    """Quarantine rows in commits of up to `chunk` (ids derived from source + row + reason: a re-run,
    or a crash between two commits, never duplicates one); returns their count and reasons. The
    rows are the pipeline's own, typed by staging's schema, so they go to Arrow column by column,
    not through the pydantic model row by row (a feed of a million rejected rows is no longer
    bound by validation on one core)."""
    now, count, reasons, pending, waiting = utcnow(), 0, Counter(), [], 0
    schema = schema_of("quarantine")

    def flush() -> None:
        nonlocal waiting
        if pending:
            rows = pa.concat_tables(pending)
            pending.clear()
            waiting = 0
            store.upsert("quarantine", rows, insert_only=True)

    for batch in batches:
        if not batch.num_rows:
            continue
        text = {name: pc.fill_null(batch.column(name), "") for name in ("_raw", "_reason", "_field", "_sealed")}
        c = {name: (text[name] if name in text else batch.column(name)).to_pylist()
             for name in ("_source", "_row", "_sub", "_reason", "_raw", "_field")}  # what the id and the reasons read
        ids = [stable_id("q", table, *parts) for parts in zip(c["_source"], c["_row"], c["_sub"], c["_reason"], c["_raw"])]
        n = batch.num_rows
        pending.append(pa.table({
            "quarantine_id": pa.array(ids, pa.string()), "table": pa.array([table] * n, pa.string()),
            "source": batch.column("_source"), "row_number": batch.column("_row"), "raw": text["_raw"],
            "raw_sealed": text["_sealed"], "reason": text["_reason"], "field": text["_field"],
            "run_id": pa.array([run_id] * n, pa.string()), "created_at": pa.array([now] * n, schema.field("created_at").type),
        }).select(schema.names).cast(schema))
        reasons.update(reason_kind(f, r) for f, r in zip(c["_field"], c["_reason"]))
        count, waiting = count + n, waiting + n
        if waiting >= chunk:
            flush()
    flush()
    return count, reasons


def _remove_stale(staging_root: str) -> None:
    """Drop staging datasets of crashed runs (older than a day); a running ingest's is never touched."""
    names: list[str] = []
    try:
        if "://" not in staging_root:
            import os

            names = os.listdir(staging_root) if os.path.isdir(staging_root) else []
        else:
            fs, path = pafs.FileSystem.from_uri(staging_root)
            names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))]
    except (OSError, pa.ArrowException):
        return
    for name in names:
        match = re.fullmatch(r"\w+-(\d{9,})-[0-9a-f]+(\.lance|-input|-resolved\.lance|-linked\.lance)", name)
        # names without a start time are from before this scheme: they can only be leftovers
        if match is None or time.time() - int(match.group(1)) > STALE_STAGING_S:
            _remove(f"{staging_root.rstrip('/')}/{name}")


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
