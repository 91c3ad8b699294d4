"""Snapshot reads of the recommendation stages: purchases and product texts, the evaluation split,
and the `recommender` task's TaskData (shared by jobs.train, jobs.evaluate_recs and jobs.recommend)."""
from __future__ import annotations

from typing import Any, Optional

import pandas as pd
import pyarrow as pa

from ray_app.cli import JobError
from ray_app.store import Store, StoreError

EVENT_COLUMNS = ["user_id", "session_id", "product_id", "timestamp", "locale", "event_type"]
PRODUCT_COLUMNS = ["product_id", "title", "brand", "category_path", "attributes", "description"]


def read_table(store: Store, snapshot: Optional[str], table: str, columns: list[str]) -> pa.Table:
    """`table` as snapshot `snapshot` pinned it, or the live table when `snapshot` is None; JobError when it cannot be read."""
    try:
        return store.read_snapshot(snapshot, table, columns=columns) if snapshot else store.read(table, columns=columns)
    except StoreError as exc:
        raise JobError(str(exc)) from exc


def snapshot_frames(store: Store, snapshot: Optional[str]) -> tuple[pd.DataFrame, pa.Table]:
    """(events frame, products table) as the snapshot pins them (None: the live tables); JobError when there are no purchases."""
    events = read_table(store, snapshot, "events", EVENT_COLUMNS).to_pandas()
    products = read_table(store, snapshot, "products", PRODUCT_COLUMNS)
    if not (events["event_type"] == "purchase").any():
        where = f"snapshot {snapshot!r}" if snapshot else "the events table"
        raise JobError(f"{where} has no purchase events to learn recommendations from ({len(events):,} events in all)")
    return events, products


def item_texts(products: pa.Table) -> dict[str, str]:
    """product_id -> the text the item tower reads (the same text the search models see)."""
    from ray_app.training.data import product_text

    return {str(r["product_id"]): product_text(r) for r in products.to_pylist()}


def recommender_task_data(store: Store, snapshot: str, table_versions: dict[str, int], options: dict[str, Any],
                          validation_fraction: float, seed: int, max_train_examples: Optional[int]):
    """TaskData of the recommender: examples from the train part of the evaluation split."""
    from ray_app.recs.examples import recommender_rows, split_events
    from ray_app.training.data import TaskData

    events, products = snapshot_frames(store, snapshot)
    try:
        split = split_events(events, options)
    except ValueError as exc:
        raise JobError(f"snapshot {snapshot!r}: {exc}") from exc
    texts = item_texts(products)
    train, validation, spaces = recommender_rows(
        split, texts, max_history=int(options.get("max_history", 20)), targets_per_basket=int(options.get("targets_per_basket", 3)),
        negatives=int(options.get("sampled_negatives", 4)), validation_fraction=validation_fraction, seed=seed)
    if not train:
        raise JobError(f"snapshot {snapshot!r}: no user has a basket in the train part of the {split.name} split to learn from")
    notes = [f"{split.name} split: {split.protocol.get('train_rows', 0):,} train purchases"
             + (f", cut {split.protocol['cut']}" if "cut" in split.protocol else "")]
    if max_train_examples and len(train) > max_train_examples:
        train = train[:max_train_examples]
        notes.append(f"train capped at {max_train_examples} examples")
    return TaskData("recommender", snapshot, {"train": train, "validation": validation, "test": []}, spaces,
                    table_versions, notes)
