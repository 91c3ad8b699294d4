"""Label resolution: which of several labels of one target and task counts.

Several sources (and several annotators of one source) may label the same target; training,
evaluation, the quality report, `jobs.label --action show` and the export all read the ONE
label chosen here, so a model is trained on the label a reviewer sees marked as resolved.
Order, best first: source priority (`SOURCE_PRIORITY`: human > behaviour > rule > model), then
confidence (a missing confidence counts as 0), then the newest `created_at` (a missing one is
the oldest), then the smallest `label_id`, so ties never depend on the order rows were read in.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable, Optional

import pyarrow as pa

from schemas.records import SOURCE_PRIORITY

RESOLVE_KEYS = ("target_id", "task")
RANK_COLUMNS = ("source", "confidence", "created_at", "label_id")


def _age(created_at: Any) -> timedelta:
    """Smaller is newer: datetime.max - created_at (ISO strings parsed; missing = oldest)."""
    if isinstance(created_at, str):
        try:
            created_at = datetime.fromisoformat(created_at)
        except ValueError:
            return timedelta.max
    if not isinstance(created_at, datetime):
        return timedelta.max
    return datetime.max - created_at.replace(tzinfo=None)


def rank_key(label: dict[str, Any]) -> tuple:
    """Sort key of a label, best first (priority, confidence, newest, smallest label_id)."""
    return (-SOURCE_PRIORITY.get(label.get("source"), -1), -float(label.get("confidence") or 0.0),
            _age(label.get("created_at")), str(label.get("label_id") or ""))


def resolve(labels: Iterable[dict[str, Any]], keys: tuple[str, ...] = RESOLVE_KEYS) -> dict[tuple, dict[str, Any]]:
    """The winning label per `keys` group (default: per (target_id, task))."""
    best: dict[tuple, tuple[tuple, dict[str, Any]]] = {}
    for lab in labels:
        group, rank = tuple(lab[k] for k in keys), rank_key(lab)
        if group not in best or rank < best[group][0]:
            best[group] = (rank, lab)
    return {group: lab for group, (_, lab) in best.items()}


def resolve_table(labels: pa.Table, keys: Optional[tuple[str, ...]] = None) -> pa.Table:
    """The winning rows of an Arrow labels table, one per `keys` group, in their stored order."""
    keys = keys or RESOLVE_KEYS
    if labels.num_rows == 0:
        return labels
    columns = list(dict.fromkeys([*keys, *(c for c in RANK_COLUMNS if c in labels.column_names)]))
    rows = labels.select(columns).to_pylist()
    winners = resolve(({**row, "_row": i} for i, row in enumerate(rows)), keys)
    return labels.take(pa.array(sorted(lab["_row"] for lab in winners.values()), pa.int64()))
