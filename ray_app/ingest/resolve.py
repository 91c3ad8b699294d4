"""The steps between staging and the commit: repeats, duplicates and partial updates.

Pure Arrow/Python functions over the staged rows of one ingest (no Ray), so each rule is
unit-tested on its own. `resolve` chains them; every rule looks only at rows of one key (returns:
of one user), so the same chain runs on the driver for a small feed and, per hash range of the
key, in Ray tasks for a large one (ray_app.ingest.buckets):
- events without an id from the feed get content ids; repeats of the same content within one
  feed are numbered (first keeps the content id), so identical genuine events stay separate
  and a re-run of the feed reproduces the same ids;
- duplicates by key: the latest row in read order wins, the others are counted;
- rows of a partial feed (only some columns, e.g. price + stock) take every absent column from
  the stored row; a partial row for a key not yet stored must carry the required columns, or
  it goes to quarantine with the reason.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_app.ids import stable_id
from ray_app.index import sql_list
from ray_app.ingest.clean import DERIVED_COLUMNS, PARTIAL_TABLES, product_missing_fields
from ray_app.store import schema_of
from schemas.records import ANONYMOUS_USER_PREFIX, TABLE_KEYS

READ_ORDER = [("_source", "ascending"), ("_row", "ascending"), ("_sub", "ascending")]
QUARANTINE_COLUMNS = ["_source", "_row", "_sub", "_raw", "_reason", "_field", "_sealed"]


@dataclass
class Resolved:
    """What the chain made of a feed's accepted rows: the rows to commit, the rows to quarantine
    instead (staging columns, `_status` quarantine), and the counts for the ledger."""

    accepted: pa.Table
    rejected: pa.Table
    duplicates: int
    notes: dict[str, int] = field(default_factory=dict)


def resolve(table: str, ok: pa.Table, store: Any, link: bool = True) -> Resolved:
    """Repeats, duplicates, variants, returns, partial rows and kept splits of one feed's (or one
    key range's) accepted staging rows, reading what they need of `store` (a ray_app.store.Store).
    `link=False` leaves returns to the caller (they pair by user, not by event id)."""
    if table == "events":
        ok = number_repeats(ok)
    accepted, duplicates = dedup_latest(ok, TABLE_KEYS[table])
    notes: dict[str, int] = {}
    if table == "products":
        accepted = keep_variants(ok, accepted)
    if table == "events" and link:
        accepted, notes = link_returns(accepted, lambda users: stored_purchases(store, users))
    key = TABLE_KEYS[table][0]
    columns = [f.name for f in schema_of(table)]
    accepted, rejected = merge_partial(table, accepted, key, lambda keys: read_keys(store, table, key, keys), columns)
    accepted, _ = keep_stored_splits(table, accepted, TABLE_KEYS[table], lambda keys: read_keys(store, table, key, keys))
    rows = [{"_source": r["_source"], "_row": r["_row"], "_sub": r["_sub"], "_field": fld, "_reason": reason, "_status": "quarantine",
             # the columns the feed had, not the ones the cleaner derived (updated_at: a re-run must give the same id)
             "_raw": json.dumps({k: r[k] for k in r["_present"] or [] if k in r}, ensure_ascii=False, default=str),
             "_sealed": ""} for r, fld, reason in rejected]
    return Resolved(accepted, pa.Table.from_pylist(rows, schema=ok.schema), duplicates, notes)


def read_keys(store: Any, table: str, key: str, keys: list[str]) -> pa.Table:
    """The stored rows of `table` whose key is in `keys` (an absent table has none)."""
    if not store.exists(table):
        return schema_of(table).empty_table()
    if len(keys) <= 2_000:
        return store.read(table, where=keys_filter(key, keys))
    stored = store.read(table)
    return stored.filter(pc.is_in(stored.column(key), value_set=pa.array(keys, pa.string())))


def stored_purchases(store: Any, users: list[str]) -> pa.Table:
    """The stored purchases of these users (what a return in this feed may cancel)."""
    if not store.exists("events"):
        return schema_of("events").empty_table()
    parts = [store.read("events", where=f"event_type = 'purchase' AND {keys_filter('user_id', users[i:i + 1000])}")
             for i in range(0, len(users), 1000)]
    return pa.concat_tables(parts) if parts else schema_of("events").empty_table()


def number_repeats(ok: pa.Table, key: str = "event_id") -> pa.Table:
    """Give the n-th repeat (n >= 1, read order) of an auto-derived key the id stable_id(key, n)."""
    if ok.num_rows == 0 or "_auto_key" not in ok.column_names:
        return ok
    ok = ok.sort_by(READ_ORDER)
    ids, auto = ok.column(key).to_pylist(), ok.column("_auto_key").to_pylist()
    seen: Counter = Counter()
    out = []
    for value, is_auto in zip(ids, auto):
        if not is_auto:
            out.append(value)
            continue
        n = seen[value]
        seen[value] += 1
        out.append(value if n == 0 else stable_id("repeat", value, n))
    return ok.set_column(ok.schema.get_field_index(key), key, pa.array(out, pa.string()))


def dedup_latest(ok: pa.Table, keys: list[str]) -> tuple[pa.Table, int]:
    """Keep the last row per key in read order (source, row, sub); return rows and #dropped."""
    if ok.num_rows == 0:
        return ok, 0
    ok = ok.sort_by(READ_ORDER)
    ok = ok.append_column("_pos", pa.array(range(ok.num_rows), pa.int64()))
    last = ok.group_by(keys).aggregate([("_pos", "max")]).column("_pos_max")
    kept = ok.take(pc.take(last, pc.sort_indices(last)))  # the last position of each key, in read order
    return kept.drop_columns(["_pos"]), ok.num_rows - kept.num_rows


def merge_partial(table: str, rows: pa.Table, key: str, read_stored: Callable[[list[str]], pa.Table],
                  columns: list[str]) -> tuple[pa.Table, list[tuple[dict[str, Any], str, str]]]:
    """Fill the absent columns of partial rows from the stored rows.

    Returns the completed rows and the rows that must be quarantined instead, as
    (staged row, field, reason) - a new key whose feed lacks a required column.
    """
    if table not in PARTIAL_TABLES or rows.num_rows == 0:
        return rows, []
    derived = set(DERIVED_COLUMNS.get(table, ())) | {key}
    present = rows.column("_present").to_pylist()
    partial = [i for i, p in enumerate(present) if not set(columns) <= set(p) | derived]
    if not partial:
        return rows, []
    all_keys = rows.column(key).to_pylist()
    stored = {r[key]: r for r in read_stored([all_keys[i] for i in partial]).to_pylist()}
    required = PARTIAL_TABLES[table]
    # only rows to complete (stored) or to reject (a new key lacking a required column) change:
    # the rest stay in Arrow, so a first load of a feed without optional columns costs nothing here
    touch = [i for i in partial if all_keys[i] in stored or any(c not in set(present[i]) | derived for c in required)]
    if not touch:
        return rows, []
    records = dict(zip(touch, rows.take(np.array(touch, dtype=np.int64)).to_pylist()))
    rejected: list[tuple[dict[str, Any], str, str]] = []
    drop: set[int] = set()
    for i in touch:
        rec, have = records[i], set(present[i]) | derived
        old = stored.get(rec[key])
        if old is None:
            lacking = [c for c in PARTIAL_TABLES[table] if c not in have]
            if lacking:
                rejected.append((rec, lacking[0], f"required column is absent for a new {table[:-1]} (not in the store yet): "
                                                  f"{', '.join(lacking)}; the feed has {', '.join(sorted(present[i]))}"))
                drop.add(i)
            continue
        for col in columns:
            if col not in have and col in old:
                rec[col] = old[col]
        if table == "products":
            rec["missing_fields"] = product_missing_fields(rec)
    changed = [i for i in touch if i not in drop]
    untouched = sorted(set(range(rows.num_rows)) - set(touch))
    merged = pa.concat_tables([rows.take(np.array(untouched, dtype=np.int64)), pa.Table.from_pylist([records[i] for i in changed], schema=rows.schema)])
    return merged.take(np.argsort(np.array(untouched + changed, dtype=np.int64), kind="stable")), rejected  # input order


def keys_filter(key: str, values: list[str]) -> str:
    """A SQL predicate `key IN (...)` with the values quoted."""
    return f"{key} IN ({sql_list(values)})"


SPLIT_TABLES = ("queries", "judgments")


def keep_stored_splits(table: str, rows: pa.Table, keys: list[str],
                       read_stored: Callable[[list[str]], pa.Table]) -> tuple[pa.Table, int]:
    """Rows that come without a split keep the split their key already has in the store.

    A query put in `test` (by `--test-fraction`, or by its file) must stay there when a later
    file names it without a split (a plain queries file, an intents file): an empty split reads as
    train, so overwriting it would leak test queries into training. Returns rows and #kept."""
    if table not in SPLIT_TABLES or rows.num_rows == 0:
        return rows, 0
    splits = rows.column("split").to_pylist()
    blank = [i for i, s in enumerate(splits) if not s]
    if not blank:
        return rows, 0
    first = [rows.column(keys[0])[i].as_py() for i in blank]
    stored = {tuple(r[k] for k in keys): r["split"] for r in read_stored(sorted(set(first))).to_pylist() if r["split"]}
    kept = 0
    for i in blank:
        found = stored.get(tuple(rows.column(k)[i].as_py() for k in keys))
        if found:
            splits[i], kept = found, kept + 1
    if not kept:
        return rows, 0
    return rows.set_column(rows.schema.get_field_index("split"), "split", pa.array(splits, pa.string())), kept


def keep_variants(ok: pa.Table, kept: pa.Table, key: str = "product_id", column: str = "title") -> pa.Table:
    """The latest row of a key wins; the other values of `column` its rows carried stay in
    attributes.<column>_variants (most frequent first), so a product sold under several
    descriptions is still found by each."""
    if kept.num_rows == 0 or ok.num_rows == kept.num_rows or column not in ok.column_names:
        return kept
    counts = ok.select([key, column]).filter(pc.is_valid(ok.column(column))).group_by([key, column]).aggregate(
        [([], "count_all")]).to_pylist()
    seen: dict[str, list[tuple[int, str]]] = {}
    for r in counts:
        seen.setdefault(r[key], []).append((r["count_all"], r[column]))
    many = {k: v for k, v in seen.items() if len(v) > 1}
    if not many:
        return kept
    keys, values, attrs = kept.column(key).to_pylist(), kept.column(column).to_pylist(), kept.column("attributes").to_pylist()
    for i, k in enumerate(keys):
        if k not in many:
            continue
        others = [text for _, text in sorted(many[k], key=lambda cv: (-cv[0], cv[1])) if text != values[i]]
        current = json.loads(attrs[i] or "{}")
        attrs[i] = json.dumps({**current, f"{column}_variants": others}, ensure_ascii=False)
    return kept.set_column(kept.schema.get_field_index("attributes"), "attributes", pa.array(attrs, pa.string()))


def link_returns(rows: pa.Table, stored_purchases: Callable[[list[str]], pa.Table]) -> tuple[pa.Table, dict[str, int]]:
    """A return without `ref_event_id` is linked to the latest purchase of the same product by the
    same (not anonymous) user at or before it, in this feed or already stored. Returns the rows
    and counts {returns, returns_linked}; a return whose purchase predates the log stays unlinked."""
    if rows.num_rows == 0 or "ref_event_id" not in rows.column_names:
        return rows, {}
    is_return = pc.equal(rows.column("event_type"), "return")
    n_returns = pc.sum(pc.cast(is_return, pa.int64())).as_py() or 0
    if not n_returns:
        return rows, {}
    import pandas as pd

    cols = ["event_id", "event_type", "user_id", "product_id", "timestamp", "ref_event_id"]
    frame = rows.select(cols).to_pandas()
    frame["_i"] = range(len(frame))
    todo = frame[(frame.event_type == "return") & frame.ref_event_id.isna() & ~frame.user_id.str.startswith(ANONYMOUS_USER_PREFIX)]
    if len(todo):
        users = sorted(set(todo.user_id))
        stored = stored_purchases(users).select(cols[:5]).to_pandas()
        buys = pd.concat([frame[frame.event_type == "purchase"][cols[:5]], stored], ignore_index=True)
        buys = buys[buys.user_id.isin(users)].drop_duplicates("event_id")
        if len(buys):
            # merge_asof wants both sides sorted by the time key; `by` matches user and product
            left = todo.sort_values("timestamp")[["_i", "user_id", "product_id", "timestamp"]]
            right = buys.sort_values("timestamp").rename(columns={"event_id": "_ref"})[["_ref", "user_id", "product_id", "timestamp"]]
            matched = pd.merge_asof(left, right, on="timestamp", by=["user_id", "product_id"], direction="backward")
            refs = rows.column("ref_event_id").to_pylist()
            for i, ref in zip(matched["_i"], matched["_ref"]):
                if isinstance(ref, str):
                    refs[int(i)] = ref
            rows = rows.set_column(rows.schema.get_field_index("ref_event_id"), "ref_event_id", pa.array(refs, pa.string()))
    linked = rows.filter(is_return).column("ref_event_id").null_count
    return rows, {"returns": n_returns, "returns_linked": n_returns - linked}
