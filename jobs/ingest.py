"""Ingest shop data into LanceDB with Ray Data: clean, validate, de-duplicate, upsert, quarantine.

  python -m jobs.ingest --source generic --table products --path products.csv [--map item_id=product_id]
  python -m jobs.ingest --source esci  --path ../shared/data/esci150
  python -m jobs.ingest --source snips --path ../shared/data/snips
  python -m jobs.ingest --source online-retail --path ../shared/data/online-retail

Files: CSV/TSV, JSONL, JSON, Parquet (optionally .gz), a file, a folder or an s3:// / gs:// URI.
Every row read is accounted for: read = accepted + quarantined + duplicates (per table, in
the `ingest_runs` ledger); rejected rows are kept whole in the `quarantine` table with the
reason. Writes are upserts by key (latest row wins), so re-running changes no counts.
Exits 0 when the input was read (even with quarantined rows); 1 when it cannot be read at all.

Judgments: `--table judgments` also fills `queries` from the same file when its rows carry the
query text (`query_text`, `query`, `text`, `search_term` or `keywords`; without a `query_id` the id derives from the
normalised text). Grades are on the declared scale: `--grades numeric:0-3` (gain = grade,
fractional means of several raters allowed) or `--grades perfect=3,good=2,bad=0`, else the
grades of the store's taxonomy, else ESCI letters; each judgment stores its gain and scale.
Labels: `--table labels` takes the labels table's own columns (target_id, task, value, ...) or a
shop's file keyed by query text (`query,intent`: task intent, source human), which fills `queries` too.
Behaviour logs: `--table events` takes event_type, user_id, session_id, product_id, timestamp, quantity,
value (a price or a rating) and ref_event_id (what a return cancels); a log of one kind names it with
`--event-type purchase` (or `rating`); a row without a user but with a session is an anonymous session's.
`--source online-retail` reads an invoice-line log (UCI Online Retail's columns) into products and events:
cancellations become returns linked to their purchase, fees and postage stay out of the catalogue.
Splits: `--test-fraction 0.4 --validation-fraction 0.1 --seed 13` puts each query, and with it its
judgments, in a split by a hash of the query id (the same on every run: nothing leaks).
"""
from __future__ import annotations

import sys
import time
from typing import Optional, Sequence

from ray_app.cli import JobError, main_wrapper
from ray_app.errors import describe, is_expected
from ray_app.ingest.adapters import Source, esci_sources, judgment_sources, label_sources, list_files, snips_sources
from ray_app.ingest.clean import ALIASES, EXTRA_INPUTS
from ray_app.ingest.pipeline import TableSpec, ingest_tables, known_format
from ray_app.ingest.retail import retail_sources
from ray_app.privacy import DEV_KEY_WARNING, resolve_key
from ray_app.runtime import init_ray
from ray_app.store import Store, schema_of
from ray_app.taxonomy import declare_taxonomy, declared_taxonomy, load_taxonomy_file, taxonomy_from_labels
from schemas.config import IngestConfig
from schemas.grades import ESCI, GradeScale
from schemas.ingest import IngestResult, TableIngestStats
from schemas.records import TABLE_MODELS
from schemas.taxonomy import TaxonomyError, builtin_taxonomy


def plan_sources(config: IngestConfig) -> list[Source]:
    """Which tables to fill from which files, by source format."""
    try:
        if config.source == "esci":
            return esci_sources(config.path)
        if config.source == "snips":
            return snips_sources(config.path)
        if config.source == "online-retail":
            return retail_sources(config.path)
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
    if config.table == "judgments":  # a judgments file names its queries: it fills `queries` too
        return judgment_sources(files, config.map)
    if config.table == "labels":  # so may a labels file keyed by query text (`query,intent`)
        return label_sources(files, config.map)
    return [Source(config.table, files, None, config.map)]


def check_map(config: IngestConfig, sources: list[Source]) -> None:
    """Every --map destination must be a column the target tables read: a typo, or several renames
    in one flag (`--map a=b,c=d`), would otherwise quarantine every row with a puzzling reason."""
    if not config.map:
        return
    if config.source == "online-retail":  # the adapter maps the invoice log's own columns
        raise JobError(f"--map renames the columns of a generic feed; --source {config.source} reads its own columns")
    tables = sorted({s.table for s in sources})
    columns = set().union(*({*TABLE_MODELS[t].model_fields, *EXTRA_INPUTS.get(t, ()), *ALIASES.get(t, {})} for t in tables))
    for src, dst in config.map.items():
        if dst not in columns:
            hint = " (repeat --map for each rename: --map a=b --map c=d)" if "," in dst and "=" in dst else ""
            raise JobError(f"--map {src}={dst}: {dst!r} is not a column of {' or '.join(tables)}{hint}; "
                           f"columns: {', '.join(sorted(c for t in tables for c in TABLE_MODELS[t].model_fields))}")


def table_warnings(stats: TableIngestStats) -> list[str]:
    """What a table's ingest should tell the user although it succeeded: columns it ignored (a
    misnamed column, say) and a file of which no row was accepted (exit 0: the file was read)."""
    notes = []
    if stats.ignored_columns:
        notes.append(f"{stats.table}: ignored columns that map to no column of the table: {', '.join(stats.ignored_columns)}"
                     f" (rename with --map SRC=DST; columns: {', '.join(f.name for f in schema_of(stats.table))})")
    if stats.read and not stats.accepted and stats.quarantined:
        notes.append(f"{stats.table}: no row accepted, all {stats.quarantined:,} quarantined; the reasons below say why"
                     f" (python -m jobs.quarantine --table {stats.table} lists them)")
    return notes


def source_groups(sources: list[Source]) -> list[list[Source]]:
    """Consecutive sources that read the same files (an invoice log's products and events, a
    judgments file's queries and judgments): one parse pass fills them all."""
    groups: list[list[Source]] = []
    for src in sources:
        if groups and groups[-1][0].paths == src.paths and all(g.table != src.table for g in groups[-1]):
            groups[-1].append(src)
        else:
            groups.append([src])
    return groups


def report(stats: TableIngestStats, config: IngestConfig, warnings: list[str]) -> None:
    """A table's warnings (always: the user has something to fix) and, unless quiet, its counts."""
    for note in table_warnings(stats):  # said even when quiet: the user has something to fix
        warnings.append(note)
        print(f"jobs.ingest: warning: {note}", file=sys.stderr)
    if not config.quiet:
        reasons = ", ".join(f"{k} x{v}" for k, v in list(stats.quarantine_reasons.items())[:6])
        print(f"{stats.table:>10}: read {stats.read:,}  accepted {stats.accepted:,}  quarantined {stats.quarantined:,}"
              f"  duplicates {stats.duplicates:,}  -> version {stats.version}" + (f"  [{reasons}]" if reasons else "")
              + "".join(f"  {k} {v:,}" for k, v in stats.notes.items()),
              file=sys.stderr)


def run(config: IngestConfig) -> IngestResult:
    """Ingest every planned source; one ledger entry per table."""
    started = time.perf_counter()
    sources = plan_sources(config)
    check_map(config, sources)
    key, is_dev_key = resolve_key(config.pseudonym_key)
    try:  # a bad taxonomy file fails before any Ray work
        taxonomy = load_taxonomy_file(config.taxonomy) if config.taxonomy else None
    except TaxonomyError as exc:
        raise JobError(str(exc)) from exc
    warnings = []
    if is_dev_key and any(s.table in ("users", "events") for s in sources):
        warnings.append(DEV_KEY_WARNING)
        print(DEV_KEY_WARNING, file=sys.stderr)
    init_ray(config.ray_address, config.num_cpus, quiet=config.quiet)
    store = Store(config.db)
    ctx = {"pseudonym_key": key, "max_field_chars": config.max_field_chars, "split": config.split,
           "dataset": config.source if config.source != "generic" else "", "event_type": config.event_type}
    if taxonomy is not None:
        warnings += declare_taxonomy(store, taxonomy, key, source=config.taxonomy)
    declared = declared_taxonomy(store)
    # labels are checked against the store's taxonomy; SNIPS brings its own and declares it below
    ctx["taxonomy"] = declared or (None if config.source == "snips" else builtin_taxonomy())
    # judgments are graded on --grades, else on the grades the store's taxonomy declares, else ESCI's
    ctx["grades"] = config.grades or (GradeScale.from_gains(declared.grades) if declared else ESCI)
    if config.hash_split:
        ctx.update(split_seed=config.seed, test_fraction=config.test_fraction or 0.0,
                   validation_fraction=config.validation_fraction or 0.0)
    tables = []
    for group in source_groups(sources):  # a file that fills several tables is read once for all of them
        names = ", ".join(src.table for src in group)
        try:
            done = ingest_tables(store, [TableSpec(src.table, dict(src.mapping or config.map), src.transform, src.derived)
                                         for src in group], group[0].paths, ctx, forced_format=config.format,
                                 block_rows=config.block_rows, resolve_rows=config.resolve_rows, source_label=config.path,
                                 encoding=config.encoding)
        except Exception as exc:  # Ray wraps worker errors; name the tables and the root cause, not a traceback
            if not is_expected(exc):
                raise  # a bug: main_wrapper writes its traceback to a log file
            raise JobError(f"cannot ingest {names} from {config.path}: {describe(exc)}") from exc
        for stats in done:
            tables.append(stats)
            report(stats, config, warnings)
    if declared is None and config.source == "snips":
        own = taxonomy_from_labels(store.read("labels", where="annotator = 'snips'"), "snips")
        if own is not None:
            declare_taxonomy(store, own, key, source=config.path)
    return IngestResult(source=config.source, read=sum(t.read for t in tables), accepted=sum(t.accepted for t in tables),
                        quarantined=sum(t.quarantined for t in tables), duplicates=sum(t.duplicates for t in tables),
                        versions={t.table: t.version for t in tables}, tables=tables, warnings=warnings,
                        seconds=round(time.perf_counter() - started, 2))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, IngestConfig, "jobs.ingest", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
