"""Resolving a large feed in Ray tasks, so no process holds all of its rows.

Every rule of ray_app.ingest.resolve looks only at the rows of one key, and returns at the rows of
one user. So the parse tasks tag each staged row with `_bucket`, a stable hash of its key into
NBUCKETS values; here the driver indexes staging on `_bucket` and starts one task per range of
buckets (at most about `block_rows` accepted rows each, in whole rounds of the CPUs). A task
reads only its range, runs the same chain the driver runs on a small feed, and writes its rows
as fragments of one `resolved` dataset, which the driver commits in one step. Events pair returns with purchases by user, not by event
id: the first pass tags rows with `_ubucket` (the user's hash) and `_to_link` (a return still
without its purchase); a second pass, per range of users, links them into a `linked` dataset.
The commit into the table then streams from those datasets (Store.upsert with a scan).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from ray_app.ingest.resolve import QUARANTINE_COLUMNS, link_returns, resolve, stored_purchases
from ray_app.store import schema_of
from schemas.records import ANONYMOUS_USER_PREFIX, TABLE_KEYS

NBUCKETS = 4096
OK = "_status = 'ok'"


def bucket_of(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A hash of each string into [0, NBUCKETS), the same in every process (null hashes as "")."""
    import pandas as pd

    strings = np.asarray(pc.fill_null(values, "").to_numpy(zero_copy_only=False), dtype=object)
    if not len(strings):
        return pa.array([], pa.int32())
    return pa.array((pd.util.hash_array(strings) % NBUCKETS).astype(np.int32))


def with_bucket(rows: pa.Table, table: str) -> pa.Table:
    """Staged rows with `_bucket` set to the hash of their key's first column, in bucket order: a
    hash scatters a range's rows over every page of every fragment, so unsorted, each range task
    would read nearly all of staging (quadratic in the feed); sorted, it reads one slice of each."""
    rows = rows.set_column(rows.schema.get_field_index("_bucket"), "_bucket", bucket_of(rows.column(TABLE_KEYS[table][0])))
    return rows.sort_by("_bucket")


def ranges(n: int) -> list[tuple[int, int]]:
    """`n` contiguous ranges that cover [0, NBUCKETS)."""
    n = max(1, min(NBUCKETS, n))
    edges = [round(i * NBUCKETS / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


@dataclass
class Bucketed:
    """The outcome of a bucketed resolve: counts, and scans of what to commit and to quarantine."""

    accepted: int
    duplicates: int
    notes: dict[str, int]
    rows: Callable[[], Iterator[pa.RecordBatch]]
    rejected: Callable[[], Iterator[pa.RecordBatch]]
    datasets: list[str] = field(default_factory=list)  # for the caller to remove with staging


def resolve_bucketed(store: Any, table: str, staging: str, ok_rows: int, block_rows: int) -> Bucketed:
    """Resolve staging's accepted rows in tasks of about `block_rows` rows (see the module doc)."""
    import lance

    options = store.storage_options
    staged = lance.dataset(staging, storage_options=options)
    _index(staged, "_bucket")
    schema = staged.schema
    if table == "events":
        schema = schema.append(pa.field("_ubucket", pa.int32())).append(pa.field("_to_link", pa.bool_()))
    resolved, linked = f"{staging.removesuffix('.lance')}-resolved.lance", f"{staging.removesuffix('.lance')}-linked.lance"
    spans = ranges(_tasks(ok_rows, block_rows))
    parts = ray.get([_resolve_range.remote(store.uri, options, table, staging, resolved, schema, lo, hi) for lo, hi in spans])
    commit_fragments(resolved, [p["fragments"] for p in parts], schema, options)
    accepted = sum(p["accepted"] for p in parts)
    duplicates = sum(p["duplicates"] for p in parts)
    to_link = sum(p["to_link"] for p in parts)
    notes: dict[str, int] = {}
    links: list[dict[str, Any]] = []
    if to_link:
        _index(lance.dataset(resolved, storage_options=options), "_ubucket")
        links = ray.get([_link_range.remote(store.uri, options, resolved, linked, schema, lo, hi) for lo, hi in spans])
        commit_fragments(linked, [p["fragments"] for p in links], schema, options)
    returns = sum(p["returns"] for p in parts)
    if returns:  # returns that came linked, or were linked here
        unlinked = sum(p["returns_unlinked"] for p in parts) + sum(p["unlinked"] for p in links)
        notes = {"returns": returns, "returns_linked": returns - unlinked}
    columns = schema_of(table).names

    def rows() -> Iterator[pa.RecordBatch]:
        if accepted == 0:
            return
        yield from lance.dataset(resolved, storage_options=options).to_batches(
            columns=columns, filter=f"{OK} AND NOT _to_link" if to_link else OK)
        if to_link:
            yield from lance.dataset(linked, storage_options=options).to_batches(columns=columns)

    def rejected() -> Iterator[pa.RecordBatch]:
        if accepted + duplicates < ok_rows:  # merge_partial turned some rows away
            yield from lance.dataset(resolved, storage_options=options).to_batches(columns=QUARANTINE_COLUMNS,
                                                                                  filter="_status = 'quarantine'")

    return Bucketed(accepted, duplicates, notes, rows, rejected, [resolved, linked])


def _tasks(rows: int, block_rows: int) -> int:
    """Tasks of at most about `block_rows` rows, as many as a whole number of rounds of the
    cluster's CPUs: 540k rows on 2 CPUs in 4 tasks of 135k, not 3 of 180k (a second round with
    one CPU idle, 25% longer)."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return cpus * math.ceil(math.ceil(rows / max(1, block_rows)) / cpus)


def _index(dataset: Any, column: str) -> None:
    """A BTREE index on the bucket column, so each task reads only its range's rows (a task still
    finds its rows without one, by scanning the column)."""
    try:
        dataset.create_scalar_index(column, "BTREE")
    except (OSError, ValueError, RuntimeError):
        pass


def commit_fragments(uri: str, fragment_lists: list[list[str]], schema: pa.Schema, options: Optional[dict[str, str]]) -> None:
    """One commit of every task's fragments (none written: no dataset, and no scan reads it)."""
    import lance
    from lance.fragment import FragmentMetadata

    fragments = [FragmentMetadata.from_json(f) for part in fragment_lists for f in part]
    if fragments:
        lance.LanceDataset.commit(uri, lance.LanceOperation.Overwrite(schema, fragments), storage_options=options)


@ray.remote(num_cpus=1)
def _resolve_range(uri: str, options: Optional[dict[str, str]], table: str, staging: str, out: str, schema: pa.Schema,
                   lo: int, hi: int) -> dict[str, Any]:
    import lance

    from ray_app.store import Store

    store = Store(uri, options)
    ok = _accepted(_in_range(lance.dataset(staging, storage_options=options), "_bucket", lo, hi))
    done = resolve(table, ok, store, link=False)
    rows = pa.concat_tables([done.accepted, done.rejected])
    counts = {"accepted": done.accepted.num_rows, "duplicates": done.duplicates, "to_link": 0, "returns": 0,
              "returns_unlinked": 0}
    if table == "events":
        accepted = pc.equal(rows.column("_status"), "ok")
        is_return = pc.and_(accepted, pc.equal(rows.column("event_type"), "return"))
        no_ref = pc.and_(is_return, pc.is_null(rows.column("ref_event_id")))
        to_link = pc.and_(no_ref, pc.invert(pc.starts_with(pc.fill_null(rows.column("user_id"), ""), ANONYMOUS_USER_PREFIX)))
        rows = rows.append_column("_ubucket", bucket_of(rows.column("user_id"))).append_column("_to_link", pc.fill_null(to_link, False))
        rows = rows.sort_by("_ubucket")  # the second pass reads by user range: one slice of each fragment
        counts.update(to_link=_count(to_link), returns=_count(is_return), returns_unlinked=_count(no_ref) - _count(to_link))
    counts["fragments"] = write_fragments(rows, out, schema, options)
    return counts


@ray.remote(num_cpus=1)
def _link_range(uri: str, options: Optional[dict[str, str]], resolved: str, out: str, schema: pa.Schema, lo: int,
                hi: int) -> dict[str, Any]:
    import lance

    from ray_app.store import Store

    store = Store(uri, options)
    rows = _accepted(_in_range(lance.dataset(resolved, storage_options=options), "_ubucket", lo, hi))
    rows = rows.filter(pc.is_in(rows.column("event_type"), pa.array(["purchase", "return"])))
    linked, _ = link_returns(rows, lambda users: stored_purchases(store, users))
    returns = linked.filter(pc.fill_null(linked.column("_to_link"), False))
    return {"fragments": write_fragments(returns, out, schema, options), "unlinked": returns.column("ref_event_id").null_count}


def _in_range(dataset: Any, column: str, lo: int, hi: int) -> pa.Table:
    """The rows whose `column` is in [lo, hi), through its BTREE index. The filter names only the
    indexed column: with any other predicate beside it (`_status = 'ok' AND ...`) Lance took 13 s
    and 2.6 GB for a 250k-row range of a 20M-row, 1,000-fragment staging; alone, 1.5 s and 0.4 GB."""
    return dataset.to_table(filter=f"{column} >= {lo} AND {column} < {hi}")


def _accepted(rows: pa.Table) -> pa.Table:
    return rows.filter(pc.fill_null(pc.equal(rows.column("_status"), "ok"), False))


def _count(mask: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.sum(pc.cast(pc.fill_null(mask, False), pa.int64())).as_py() or 0)


def write_fragments(rows: pa.Table, uri: str, schema: pa.Schema, options: Optional[dict[str, str]]) -> list[str]:
    """Write rows as fragments of the dataset at `uri` (committed by the driver); their metadata."""
    if rows.num_rows == 0:
        return []
    import lance.fragment

    rows = rows.select(schema.names).cast(schema)
    return [json.dumps(f.to_json()) for f in lance.fragment.write_fragments(rows, uri, schema=schema, storage_options=options)]
