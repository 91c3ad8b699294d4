"""The LanceDB store: typed tables, upserts by key, versions, tags and named snapshots.

Every write is one LanceDB commit, so each write makes exactly one new table version and a
crash before the commit leaves the table as it was. Snapshots pin the versions of all data
tables with LanceDB tags (tags also protect those versions from `cleanup_old_versions`), so a
snapshot reads back exactly the rows it saw, whatever was written afterwards.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import lancedb
import pyarrow as pa

from schemas.config import DB_ENV, default_workspace, join
from schemas.records import DATA_TABLES, TABLE_KEYS, TABLE_MODELS, Snapshot

DEFAULT_DB_ENV = DB_ENV
SNAPSHOT_TAG_PREFIX = "snapshot-"
COMMIT_RETRIES = 8  # attempts of a write that conflicts with a concurrent commit


class StoreError(ValueError):
    """A store request that cannot be served (unknown table, snapshot or version)."""


def default_db_uri() -> str:
    """The embedded default store: $SHOPSEARCH_DB, else <workspace>/lancedb (as JobConfig.db resolves it)."""
    return os.environ.get(DEFAULT_DB_ENV) or join(default_workspace(), "lancedb")


def utcnow() -> datetime:
    """Naive UTC timestamp (Arrow `timestamp[us]` without zone, as the schemas declare)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def schema_of(table: str) -> pa.Schema:
    """Arrow schema of a platform table, from its pydantic record."""
    if table not in TABLE_MODELS:
        raise StoreError(f"unknown table {table!r}; known tables: {', '.join(TABLE_MODELS)}")
    return TABLE_MODELS[table].to_arrow_schema()


def conform(data: pa.Table, table: str) -> pa.Table:
    """Select and cast `data`'s columns to the table schema (missing nullable columns -> null)."""
    schema = schema_of(table)
    columns = []
    for field in schema:
        if field.name in data.column_names:
            columns.append(data.column(field.name).cast(field.type))
        elif field.nullable:
            columns.append(pa.nulls(len(data), field.type))
        else:
            raise StoreError(f"table {table!r}: column {field.name!r} is required but missing")
    return pa.Table.from_arrays(columns, schema=schema)


def rows_to_arrow(rows: Iterable[dict[str, Any]], table: str) -> pa.Table:
    """Validate plain dict rows through the table's pydantic model and build an Arrow table."""
    model = TABLE_MODELS[table]
    dumped = [model(**row).model_dump() for row in rows]
    return pa.Table.from_pylist(dumped, schema=schema_of(table))


def _conformed(batches: Iterable[pa.RecordBatch], table: str) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if batch.num_rows:
            yield from conform(pa.Table.from_batches([batch]), table).to_batches()


@dataclass
class WriteStats:
    """What one write did to a table."""

    table: str
    inserted: int
    updated: int
    version: int


class Store:
    """A LanceDB database holding the platform's tables (local folder or s3://, gs:// URI)."""

    def __init__(self, uri: Optional[str] = None, storage_options: Optional[dict[str, str]] = None):
        self.uri = str(uri or default_db_uri())
        if "://" not in self.uri:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        self.storage_options = storage_options
        self.db = lancedb.connect(self.uri, storage_options=storage_options)

    # -- tables -------------------------------------------------------------------------
    def table_names(self) -> list[str]:
        """Names of the tables that exist in this store."""
        names: list[str] = []
        token = None
        while True:
            page = self.db.list_tables(page_token=token)
            names.extend(page.tables)
            token = page.page_token
            if not token:
                return sorted(names)

    def exists(self, table: str) -> bool:
        return table in self.table_names()

    def table(self, name: str):
        """Open a platform table, creating it empty with its schema on first use."""
        schema = schema_of(name)
        if self.exists(name):
            tbl = self.db.open_table(name)
            # a store written before a column was added to the record (Event.quantity, say) gets
            # it as an all-null column, so old stores keep working without a migration step
            missing = [f for f in schema if f.name not in tbl.schema.names and f.nullable]
            if missing:
                tbl.add_columns(missing)
            return tbl
        return self.db.create_table(name, schema=schema, exist_ok=True)

    def upsert(self, name: str, data: Union[pa.Table, Callable[[], Iterable[pa.RecordBatch]]],
               insert_only: bool = False) -> WriteStats:
        """Insert new keys and overwrite existing ones (latest wins), in one commit.

        `data` is a table, or a function returning record batches (a scan of a staging dataset):
        those stream into the commit, so the caller never holds them all; the function is called
        again if the commit is retried.

        `insert_only` keeps existing rows untouched: the ingest uses it for immutable rows
        (events, quarantine), so a re-run neither adds nor rewrites them. Source keys must be
        unique: callers de-duplicate first, so the ambiguity never reaches LanceDB. A commit that
        conflicts with another writer's (two ingests at once both write `quarantine`) is retried.
        """
        table = conform(data, name) if isinstance(data, pa.Table) else None
        for attempt in range(COMMIT_RETRIES):
            tbl = self.table(name)
            builder = tbl.merge_insert(TABLE_KEYS[name])
            if not insert_only:
                builder = builder.when_matched_update_all()
            source = table if table is not None else pa.RecordBatchReader.from_batches(schema_of(name), _conformed(data(), name))
            try:
                result = builder.when_not_matched_insert_all().execute(source)
            except (RuntimeError, OSError, ValueError) as exc:
                if "onflict" not in str(exc) or attempt == COMMIT_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2 ** attempt)
                continue
            return WriteStats(name, result.num_inserted_rows, result.num_updated_rows, result.version)
        raise AssertionError("unreachable")  # pragma: no cover

    def delete(self, name: str, where: str) -> int:
        """Delete rows matching a SQL predicate; returns the new version."""
        tbl = self.table(name)
        tbl.delete(where)
        return tbl.version

    def read(self, name: str, version: Optional[int | str] = None, columns: Optional[list[str]] = None,
             where: Optional[str] = None) -> pa.Table:
        """Read a table (at a version number or tag) as Arrow; an absent table reads empty."""
        if not self.exists(name):
            if version not in (None, 0):
                raise StoreError(f"table {name!r} does not exist in {self.uri}, so version {version} cannot be read")
            empty = schema_of(name).empty_table()
            return empty.select(columns) if columns else empty
        tbl = self.db.open_table(name)
        if version is not None:
            if version == 0:
                empty = schema_of(name).empty_table()
                return empty.select(columns) if columns else empty
            try:
                tbl.checkout(version)
            except Exception as exc:  # lancedb raises ValueError/RuntimeError by backend
                raise StoreError(f"table {name!r} has no version {version!r}: {exc}") from exc
        query = tbl.search()
        if where:
            query = query.where(where)
        if columns:
            query = query.select(columns)
        return query.limit(None).to_arrow() if where or columns else tbl.to_arrow()

    def count(self, name: str, version: Optional[int | str] = None) -> int:
        return self.read(name, version=version, columns=[TABLE_KEYS[name][0]]).num_rows

    def version(self, name: str) -> int:
        """Current version of a table; 0 for a table never written."""
        return self.db.open_table(name).version if self.exists(name) else 0

    def versions(self, tables: Iterable[str] = DATA_TABLES) -> dict[str, int]:
        return {t: self.version(t) for t in tables}

    # -- snapshots ------------------------------------------------------------------------
    def create_snapshot(self, name: str, note: str = "", report: Optional[dict] = None) -> Snapshot:
        """Pin the current version of every data table under `name` (tags + a snapshots row).

        The snapshots row is the commit point: it is written last, so a snapshot exists only
        once every table is tagged. Tags of `name` left by an attempt that failed half-way
        (no snapshots row) are moved to the current versions, so a re-run simply succeeds;
        an attempt that fails in this process removes the tags it made.
        """
        if not name or any(c in name for c in " /\\'\""):
            raise StoreError(f"snapshot name {name!r} must be non-empty without spaces, quotes or slashes")
        if self.find_snapshot(name) is not None:
            raise StoreError(f"snapshot {name!r} already exists; snapshots are immutable, pick a new name")
        tag, versions, tagged = SNAPSHOT_TAG_PREFIX + name, {}, []
        try:
            for t in DATA_TABLES:
                tbl = self.table(t)  # create empty tables so every snapshot pins every table
                versions[t] = tbl.version
                if tag in tbl.tags.list():  # left by a failed attempt: no snapshots row names it
                    tbl.tags.update(tag, tbl.version)
                else:
                    tbl.tags.create(tag, tbl.version)
                tagged.append(tbl)
            snap = Snapshot(name=name, versions=json.dumps(versions), note=note,
                            report=json.dumps(report or {}, default=str), created_at=utcnow())
            self.upsert("snapshots", rows_to_arrow([snap.model_dump()], "snapshots"))
        except BaseException:
            for tbl in tagged:  # best effort; a killed process leaves its tags, and the next run moves them
                try:
                    tbl.tags.delete(tag)
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    pass
            raise
        return snap

    def set_snapshot_report(self, name: str, report: dict) -> None:
        snap = self.get_snapshot(name)
        snap.report = json.dumps(report, default=str)
        self.upsert("snapshots", rows_to_arrow([snap.model_dump()], "snapshots"))

    def find_snapshot(self, name: str) -> Optional[Snapshot]:
        rows = self.read("snapshots").to_pylist()
        for row in rows:
            if row["name"] == name:
                return Snapshot(**row)
        return None

    def get_snapshot(self, name: str) -> Snapshot:
        snap = self.find_snapshot(name)
        if snap is None:
            known = [s.name for s in self.list_snapshots()]
            raise StoreError(f"snapshot {name!r} not found in {self.uri}; known snapshots: {known or 'none'}")
        return snap

    def list_snapshots(self) -> list[Snapshot]:
        """All snapshots, oldest first."""
        return sorted((Snapshot(**r) for r in self.read("snapshots").to_pylist()), key=lambda s: s.created_at)

    def snapshot_versions(self, name: str) -> dict[str, int]:
        return json.loads(self.get_snapshot(name).versions)

    def read_snapshot(self, name: str, table: str, columns: Optional[list[str]] = None) -> pa.Table:
        """Read `table` exactly as it was when snapshot `name` was taken (through its tag)."""
        versions = self.snapshot_versions(name)
        if table not in versions:
            raise StoreError(f"snapshot {name!r} does not pin table {table!r}; it pins {sorted(versions)}")
        return self.read(table, version=self.snapshot_tag(name, table, versions[table]), columns=columns)

    def snapshot_tag(self, name: str, table: str, version: int) -> str:
        """The tag pinning `table` for snapshot `name`, checked to still point at `version`.

        Version numbers alone are not enough: a table dropped and re-created under the same
        name numbers its versions from 1 again, so an old number would read the new rows.
        """
        tag = SNAPSHOT_TAG_PREFIX + name
        if not self.exists(table):
            raise StoreError(f"table {table!r} was dropped after snapshot {name!r} was taken, so the snapshot's "
                             f"rows of it (version {version}) cannot be read")
        pinned = self.db.open_table(table).tags.list().get(tag)
        if pinned is None:
            raise StoreError(f"table {table!r} was dropped and re-created after snapshot {name!r} was taken (its "
                             f"tag {tag!r} is gone), so the snapshot's rows of it (version {version}) cannot be read")
        if pinned["version"] != version:
            raise StoreError(f"snapshot {name!r}: tag {tag!r} of table {table!r} points at version "
                             f"{pinned['version']}, the snapshot recorded version {version}; the tag was moved")
        return tag
