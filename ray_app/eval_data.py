"""What an offline evaluation scores: the catalogue it searches and the judged lists, live or a snapshot's.

`jobs.evaluate --snapshot S` scores S's products: with the live table, products deleted since S
would make their judgments vanish and products added since would compete for ranks. BM25 and
ANN search need LanceDB indexes, which `jobs.embed` builds on the live table, usually after the
snapshot was taken; so S's rows are searched with the cheapest index that is exact for them:
1. the products table at S's tag, when that version has the FTS indexes (`jobs.embed --snapshot`)
   or is the live version;
2. the live table, when it holds the same products with the same text columns (snapshot, then
   embed): its indexes and vectors were built over exactly these texts;
3. otherwise a scratch table in a temporary folder: S's rows, the live table's vectors (reused
   later only where model and text hash still match, see `product_matrix`), FTS indexes built here.
Judgments that cannot be scored (product or query not among the rows read) are counted, so a
report says how much of the judged data it could not score instead of dropping it silently.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import lancedb
import pyarrow as pa

from ray_app.index import VECTOR_COLUMN, VECTOR_COLUMNS, build_fts_indexes, fts_columns_indexed
from ray_app.store import Store
from ray_app.training.data import product_text

TEXT_COLUMNS = ["product_id", "title", "brand", "category_path", "attributes", "description"]


@dataclass
class Catalogue:
    """Products to search, their texts, the table whose indexes serve them, and where they came from."""

    tbl: Any  # LanceDB table BM25 and ANN search
    products: pa.Table  # TEXT_COLUMNS, plus the vector columns where the source has them
    texts: dict[str, str]
    version: int  # products table version the rows are (the snapshot's when one is given)
    note: str = ""
    # the scratch table's folder lives as long as this object (TemporaryDirectory removes it when collected)
    scratch: Optional[tempfile.TemporaryDirectory] = field(default=None, repr=False)


def _rows(tbl) -> pa.Table:
    return tbl.search().select(TEXT_COLUMNS + [c for c in VECTOR_COLUMNS if c in tbl.schema.names]).limit(None).to_arrow()


def _texts(rows: pa.Table) -> dict[str, str]:
    return {r["product_id"]: product_text(r) for r in rows.select(TEXT_COLUMNS).to_pylist()}


def _by_id(rows: pa.Table, columns: list[str]) -> dict[str, dict]:
    return {r["product_id"]: r for r in rows.select(columns).to_pylist()}


def open_catalogue(store: Store, snapshot: Optional[str], fts_columns: Sequence[str]) -> Catalogue:
    """The products an evaluation scores: the live table, or snapshot `snapshot`'s rows (StoreError if gone)."""
    live = store.table("products")
    if not snapshot:
        rows = _rows(live)
        return Catalogue(live, rows, _texts(rows), live.version)
    version = store.snapshot_versions(snapshot).get("products", 0)
    pinned = store.db.open_table("products")
    pinned.checkout(store.snapshot_tag(snapshot, "products", version))
    rows = _rows(pinned)
    texts = _texts(rows)
    where = f"products of snapshot {snapshot!r} (table version {version}, {len(texts):,} products)"
    if version == live.version or set(fts_columns) <= set(fts_columns_indexed(pinned)):
        return Catalogue(pinned, rows, texts, version, f"{where}, searched with that version's indexes")
    live_rows = _rows(live)
    compared = TEXT_COLUMNS + [c for c in fts_columns if c not in TEXT_COLUMNS and c in live.schema.names
                               and c in pinned.schema.names]
    pinned_rows = rows if compared == TEXT_COLUMNS else pinned.search().select(compared).limit(None).to_arrow()
    if _by_id(live_rows, compared) == _by_id(pinned_rows, compared):
        return Catalogue(live, live_rows, texts, version,
                         f"{where}: the live table (version {live.version}) holds the same products with the same "
                         "text, so its indexes and vectors are used")
    return _scratch_catalogue(rows, live_rows, texts, version, fts_columns, where)


def _scratch_catalogue(rows: pa.Table, live_rows: pa.Table, texts: dict[str, str], version: int,
                       fts_columns: Sequence[str], where: str) -> Catalogue:
    """The snapshot's rows in a temporary table with FTS indexes of their own."""
    data = rows.select(TEXT_COLUMNS)
    if VECTOR_COLUMN in live_rows.column_names:  # align the live vectors to the snapshot's rows; absent -> null
        row_of = {p: i for i, p in enumerate(live_rows.column("product_id").to_pylist())}
        take = pa.array([row_of.get(p) for p in data.column("product_id").to_pylist()], pa.int64())
        for col in VECTOR_COLUMNS:
            data = data.append_column(live_rows.schema.field(col), live_rows.column(col).take(take))
    elif VECTOR_COLUMN in rows.column_names:
        data = rows
    folder = tempfile.TemporaryDirectory(prefix="eval-catalogue-")
    tbl = lancedb.connect(folder.name).create_table("products", data)
    indexed = [c for c in fts_columns if c in data.column_names and pa.types.is_string(data.schema.field(c).type)]
    if len(data):
        build_fts_indexes(tbl, indexed)
    return Catalogue(tbl, data, texts, version,
                     f"{where}: the live table has changed since, so BM25 searches an index of the snapshot's own "
                     "rows built for this evaluation", scratch=folder)


def split_judged_lists(judgments: Iterable[dict[str, Any]], known_queries: set[str], queries: list[dict[str, Any]],
                       split: str, catalogue: set[str]) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """query_id -> {product_id: the judgment's grade} for `queries` in `split` (a query's split wins
    over its judgment's), and counts of the split's judgments that cannot be scored."""
    split_of = {q["query_id"]: q["split"] for q in queries}
    out: dict[str, dict[str, Any]] = {}
    unscored = {"judgments_missing_product": 0, "judgments_missing_query": 0, "queries_without_products": 0}
    judged_queries: set[str] = set()
    for j in judgments:
        qid = j["query_id"]
        if qid not in known_queries:  # no query row: only the judgment's own split says where it belongs
            unscored["judgments_missing_query"] += j.get("split") in (split, None, "")
        elif qid in split_of and (split_of[qid] or j.get("split")) == split:
            judged_queries.add(qid)
            if j["product_id"] in catalogue:
                out.setdefault(qid, {})[j["product_id"]] = j["grade"]
            else:
                unscored["judgments_missing_product"] += 1
    unscored["queries_without_products"] = len(judged_queries - set(out))
    return out, unscored


def unscored_note(unscored: dict[str, int], split: str, snapshot: Optional[str]) -> Optional[str]:
    """One line saying what could not be scored; None when everything could."""
    if not any(unscored.values()):
        return None
    where = f"snapshot {snapshot!r}" if snapshot else "the store"
    return (f"not scored (split {split!r}): {unscored['judgments_missing_product']} judgments whose product is not "
            f"among the products of {where}, {unscored['judgments_missing_query']} whose query is not among its "
            f"queries; {unscored['queries_without_products']} judged queries kept no judged product")
