"""Ingest shop data into LanceDB with Ray Data: clean, validate, de-duplicate, upsert, quarantine.

  python -m jobs.ingest --source generic --table products --path products.csv [--map item_id=product_id]
  python -m jobs.ingest --source esci  --path ../shared/data/esci150
  python -m jobs.ingest --source snips --path ../shared/data/snips

Files: CSV/TSV, JSONL, JSON, Parquet (optionally .gz), a file, a folder or an s3:// / gs:// URI.
Every row read is accounted for: read = accepted + quarantined + duplicates (per table, in
the `ingest_runs` ledger); rejected rows are kept whole in the `quarantine` table with the
reason. Writes are upserts by key (latest row wins), so re-running changes no counts.
Exits 0 when the input was read (even with quarantined rows); 1 when it cannot be read at all.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, Sequence

from ray_app.cli import JobError, main_wrapper
from ray_app.ingest.adapters import Source, esci_sources, list_files, snips_sources
from ray_app.ingest.pipeline import ingest_table, known_format
from ray_app.privacy import DEV_KEY_WARNING, resolve_key
from ray_app.runtime import init_ray
from ray_app.store import Store
from schemas.config import IngestConfig
from schemas.ingest import IngestResult


def plan_sources(config: IngestConfig) -> list[Source]:
    """Which tables to fill from which files, by source format."""
    try:
        if config.source == "esci":
            return esci_sources(config.path)
        if config.source == "snips":
            return snips_sources(config.path)
        if config.table is None:
            raise JobError("--table is required with --source generic (products, queries, users, events, judgments or labels)")
        files = list_files(config.path)
        if not config.format:  # in a folder, only files whose name says a known format
            files = [f for f in files if known_format(f)]
    except FileNotFoundError as exc:
        raise JobError(f"cannot read the input: {exc}") from exc
    except OSError as exc:
        raise JobError(f"cannot read the input {config.path!r}: {exc}") from exc
    if not files:
        raise JobError(f"cannot read the input: {config.path} contains no CSV, JSONL, JSON or Parquet files")
    return [Source(config.table, files, None, config.map)]


def run(config: IngestConfig) -> IngestResult:
    """Ingest every planned source; one ledger entry per table."""
    started = time.perf_counter()
    sources = plan_sources(config)
    key, is_dev_key = resolve_key(config.pseudonym_key)
    warnings = []
    if is_dev_key and any(s.table in ("users", "events") for s in sources):
        warnings.append(DEV_KEY_WARNING)
        print(DEV_KEY_WARNING, file=sys.stderr)
    init_ray(config.ray_address, config.num_cpus, quiet=config.quiet)
    store = Store(config.db)
    ctx = {"pseudonym_key": key, "max_field_chars": config.max_field_chars, "split": config.split,
           "dataset": config.source if config.source != "generic" else ""}
    tables = []
    for src in sources:
        try:
            stats = ingest_table(store, src.table, src.paths, ctx, mapping=src.mapping or config.map,
                                 transform=src.transform, forced_format=config.format, block_rows=config.block_rows,
                                 source_label=config.path, encoding=config.encoding)
        except Exception as exc:  # Ray wraps worker errors; report the root cause, not a traceback
            cause = exc
            while getattr(cause, "__cause__", None) is not None:
                cause = cause.__cause__
            raise JobError(f"cannot ingest {src.table} from {config.path}: {type(cause).__name__}: {cause}") from exc
        tables.append(stats)
        if not config.quiet:
            reasons = ", ".join(f"{k} x{v}" for k, v in list(stats.quarantine_reasons.items())[:6])
            print(f"{stats.table:>10}: read {stats.read:,}  accepted {stats.accepted:,}  quarantined {stats.quarantined:,}"
                  f"  duplicates {stats.duplicates:,}  -> version {stats.version}" + (f"  [{reasons}]" if reasons else ""),
                  file=sys.stderr)
    return IngestResult(source=config.source, read=sum(t.read for t in tables), accepted=sum(t.accepted for t in tables),
                        quarantined=sum(t.quarantined for t in tables), duplicates=sum(t.duplicates for t in tables),
                        versions={t.table: t.version for t in tables}, tables=tables, warnings=warnings,
                        seconds=round(time.perf_counter() - started, 2))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, IngestConfig, "jobs.ingest", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
