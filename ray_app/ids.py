"""Deterministic ids, so re-running a job upserts the same rows instead of adding new ones."""
from __future__ import annotations

import hashlib


def stable_id(*parts: object, length: int = 24) -> str:
    """Hex sha1 of the parts joined by a unit separator."""
    joined = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha1(joined.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def label_id(target_id: str, task: str, source: str, annotator: str) -> str:
    """One label per (target, task, source, annotator): re-labelling overwrites, never duplicates."""
    return stable_id("label", target_id, task, source, annotator)


def pair_id(query_id: str, product_id: str) -> str:
    """Target id of a query-product pair in the labels table."""
    return f"{query_id}::{product_id}"
