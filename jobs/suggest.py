"""Build the query-suggestion (autocomplete) tables from the store's queries, events and products.

  python -m jobs.suggest [--db URI] [--workspace DIR] [--min-query-users 2] [--max-digit-run 4]
                         [--min-line-products 2] [--affinity-top 5]

Writes two tables that `SuggestIndex.from_store` (ray_app/search/suggest.py) loads once per
Serve replica: `suggestions` (text, kind, score, popularity, brand, category) and
`suggest_affinity` (user_id pseudonym, kind, value, weight), both stamped with `build_id` and
`built_at`. Each run replaces each table's content in one commit (a new table version written
with mode="overwrite"), so a reader sees the previous build or the new one, never half of it;
affinity is written first, so a reader that sees the new suggestions also sees their affinity.
Weights and privacy rules are in ray_app/search/suggest_build.py. No Ray tasks: the inputs are
a few hundred thousand rows at most and the build takes seconds in one process, so Ray is never
started (the common --ray-address/--num-cpus flags are accepted and unused).
Last stdout line: JSON summary (completions by kind, users with affinity, build id, seconds).
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import datetime
from typing import Optional, Sequence

import pyarrow as pa
from pydantic import BaseModel

from ray_app.cli import JobError, main_wrapper
from ray_app.search.suggest import AFFINITY_TABLE, SUGGESTIONS_TABLE, build_suggestions
from ray_app.search.suggest_build import CATALOGUE_USER
from ray_app.store import Store, utcnow
from schemas.config import SuggestConfig

INPUTS = {"products": ["product_id", "title", "brand", "category_path", "price"], "queries": ["query_id", "text"],
          "events": ["event_type", "user_id", "session_id", "query_id", "product_id"]}


class SuggestResult(BaseModel):
    ok: bool = True
    build_id: str
    suggestions: int
    by_kind: dict[str, int]
    users_with_affinity: int
    affinity_rows: int
    dropped_queries: dict[str, int]
    source_versions: dict[str, int]
    versions: dict[str, int]
    seconds: float


def stamp(table: pa.Table, build_id: str, built_at: datetime) -> pa.Table:
    """The table with constant `build_id` and `built_at` columns appended."""
    n = table.num_rows
    return (table.replace_schema_metadata(None)
            .append_column("build_id", pa.array([build_id] * n, pa.string()))
            .append_column("built_at", pa.array([built_at] * n, pa.timestamp("us"))))


def replace_table(store: Store, name: str, data: pa.Table) -> int:
    """Replace a table's rows with `data` in one commit (a new version); returns that version."""
    if name in store.table_names():
        tbl = store.db.open_table(name)
        tbl.add(data, mode="overwrite")  # one new version: readers see the old rows or the new, never a mix
        return tbl.version
    return store.db.create_table(name, data).version


def run(config: SuggestConfig) -> SuggestResult:
    started = time.perf_counter()
    store = Store(config.db)
    rows = {t: store.read(t, columns=cols).to_pylist() for t, cols in INPUTS.items()}
    if not rows["products"] and not rows["queries"]:
        raise JobError(f"no products and no queries in {store.uri}; ingest a shop first (python -m jobs.ingest)")
    suggestions, affinity = build_suggestions(rows["queries"], rows["events"], rows["products"],
                                              min_query_users=config.min_query_users,
                                              max_digit_run=config.max_digit_run,
                                              min_line_products=config.min_line_products,
                                              affinity_top=config.affinity_top)
    meta = suggestions.schema.metadata or {}
    dropped = {k.decode()[len("dropped_"):]: int(v) for k, v in meta.items() if k.startswith(b"dropped_")}
    built_at = utcnow()
    sources = store.versions(INPUTS)
    build_id = f"suggest-{built_at:%Y%m%dT%H%M%S}-" + "".join(f"{t[0]}{v}" for t, v in sources.items())
    versions = {AFFINITY_TABLE: replace_table(store, AFFINITY_TABLE, stamp(affinity, build_id, built_at))}
    versions[SUGGESTIONS_TABLE] = replace_table(store, SUGGESTIONS_TABLE, stamp(suggestions, build_id, built_at))
    by_kind = dict(sorted(Counter(suggestions.column("kind").to_pylist()).items()))
    users = len(set(affinity.column("user_id").to_pylist()) - {CATALOGUE_USER})  # the catalogue's medians are no user
    if not config.quiet:
        print(f"suggest: {suggestions.num_rows:,} completions ({', '.join(f'{k} {n:,}' for k, n in by_kind.items())}), "
              f"{users:,} users with affinity, queries withheld {dropped} -> {SUGGESTIONS_TABLE} "
              f"v{versions[SUGGESTIONS_TABLE]}, {AFFINITY_TABLE} v{versions[AFFINITY_TABLE]}", file=sys.stderr)
    return SuggestResult(build_id=build_id, suggestions=suggestions.num_rows, by_kind=by_kind,
                         users_with_affinity=users, affinity_rows=affinity.num_rows, dropped_queries=dropped,
                         source_versions=sources, versions=versions, seconds=round(time.perf_counter() - started, 2))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, SuggestConfig, "jobs.suggest", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
