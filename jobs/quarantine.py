"""Look at quarantined rows: what was rejected, from which file and line, and why.

  python -m jobs.quarantine [--table products] [--run-id RUN] [--reason "not a number"] [--limit 20]
  python -m jobs.quarantine --table events --unseal      # rows as read, for whoever holds the key

Rows are printed on stderr (newest run first), one block each: table, source file and row number,
field, the whole reason and the row (for `users`, `events` and `labels` the readable copy with
identifiers pseudonymised; `--unseal` decrypts the row as read with the pseudonymisation key).
The last stdout line is the JSON summary: counts by table and by reason.
"""
from __future__ import annotations

import sys
from collections import Counter
from typing import Optional, Sequence

import pyarrow.compute as pc
from pydantic import BaseModel

from ray_app.cli import JobError, main_wrapper
from ray_app.ingest.quarantine import reason_kind
from ray_app.privacy import resolve_key, unseal
from ray_app.store import Store
from schemas.config import QuarantineConfig


class QuarantineResult(BaseModel):
    ok: bool = True
    total: int
    shown: int
    by_table: dict[str, int]
    by_reason: dict[str, int]


def run(config: QuarantineConfig) -> QuarantineResult:
    """Filter the quarantine table, print the newest rows, count all that matched."""
    table = Store(config.db).read("quarantine")
    if config.table:
        table = table.filter(pc.equal(table.column("table"), config.table))
    if config.run_id:
        table = table.filter(pc.equal(table.column("run_id"), config.run_id))
    rows = table.to_pylist()
    if config.reason:
        rows = [r for r in rows if config.reason.lower() in r["reason"].lower()]
    rows.sort(key=lambda r: (r["created_at"], r["source"], r["row_number"]), reverse=True)
    key = resolve_key(config.pseudonym_key)[0] if config.unseal else ""
    for r in rows[:config.limit]:
        raw = r["raw"]
        if config.unseal and r["raw_sealed"]:
            try:
                raw = unseal(r["raw_sealed"], key)
            except ValueError as exc:
                raise JobError(f"cannot unseal quarantined rows: {exc} (pass the key they were sealed with: --pseudonym-key)")
        print(f"[{r['table']}] {r['source']}:{r['row_number']}  run {r['run_id']}\n  reason: "
              f"{(r['field'] + ': ') if r['field'] else ''}{r['reason']}\n  row: {raw[:500]}"
              f"{' …' if len(raw) > 500 else ''}", file=sys.stderr)
    return QuarantineResult(total=len(rows), shown=min(len(rows), config.limit),
                            by_table=dict(Counter(r["table"] for r in rows).most_common()),
                            by_reason=dict(Counter(reason_kind(r["field"], r["reason"]) for r in rows).most_common(20)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, QuarantineConfig, "jobs.quarantine", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
