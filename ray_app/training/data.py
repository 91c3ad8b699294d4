"""Training examples per task from a named dataset snapshot, with leak-free splits.

Splits come from the `split` column (a query's split wins over its judgments'; "" counts as
train). When a snapshot has no validation split, one is carved from train BY QUERY with a
deterministic hash, so all examples of a query land on the same side. Labels are resolved per
(query, task) by SOURCE_PRIORITY (human > behaviour > rule > model), then confidence, then
recency. Label spaces come from the train split only and travel with the model.
List-valued fields are JSON strings so the rows are plain Arrow scalars for Ray Data.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from ray_app.cli import JobError
from ray_app.store import Store, StoreError
from schemas.records import ESCI_GAIN, SOURCE_PRIORITY

SPLIT_NAMES = ("train", "validation", "test")
MAX_EVAL_LIST = 100  # ranker: judged products per validation query kept for NDCG


@dataclass
class TaskData:
    """Examples of one task per split, the label spaces and the snapshot lineage."""

    task: str
    snapshot: str
    splits: dict[str, list[dict[str, Any]]]
    label_spaces: dict[str, list[str]]
    table_versions: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


def _hash_unit(key: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def product_text(row: dict[str, Any], max_description: int = 200, max_attributes: int = 5,
                 max_attribute_chars: int = 120) -> str:
    """The product text models see: title, brand, category leaf, a bit of description and attributes."""
    parts = [str(row.get("title") or "")]
    if row.get("brand"):
        parts.append(f"brand: {row['brand']}")
    if row.get("category_path"):
        parts.append(f"category: {list(row['category_path'])[-1]}")
    try:
        attrs = json.loads(row.get("attributes") or "{}")
    except (TypeError, ValueError):
        attrs = {}
    if isinstance(attrs, dict) and attrs:
        # values capped: long bullet lists would dominate the text and make CPU encoding slow
        parts.append(", ".join(f"{k}: {str(v)[:max_attribute_chars]}" for k, v in list(attrs.items())[:max_attributes]))
    description = str(row.get("description") or "").strip()
    if description:
        parts.append(description[:max_description])
    return " | ".join(p for p in parts if p)


def _read(store: Store, snapshot: str, table: str, columns: list[str]) -> list[dict[str, Any]]:
    try:
        return store.read_snapshot(snapshot, table, columns=columns).to_pylist()
    except StoreError as exc:
        raise JobError(str(exc)) from exc


def resolve_labels(labels: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The winning label per (target_id, task): source priority, then confidence, then newest."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for lab in labels:
        key = (lab["target_id"], lab["task"])
        rank = (SOURCE_PRIORITY.get(lab["source"], -1), lab.get("confidence") or 0.0, str(lab.get("created_at") or ""))
        if key not in best or rank > best[key][0]:
            best[key] = (rank, lab)
    return {k: v[1] for k, v in best.items()}


def assign_splits(query_split: dict[str, str], validation_fraction: float, seed: int) -> tuple[dict[str, str], list[str]]:
    """Final split per query id; carves validation from train by query hash when none exists."""
    splits = {q: (s if s in SPLIT_NAMES else "train") for q, s in query_split.items()}
    notes: list[str] = []
    if "validation" not in splits.values():
        train_ids = sorted(q for q, s in splits.items() if s == "train")
        carved = [q for q in train_ids if _hash_unit(q, seed) < validation_fraction]
        if not carved and len(train_ids) >= 2:
            carved = [min(train_ids, key=lambda q: _hash_unit(q, seed))]
        if len(carved) < len(train_ids):
            for q in carved:
                splits[q] = "validation"
            notes.append(f"no validation split in snapshot: carved {len(carved)} of {len(train_ids)} train queries by hash")
    return splits, notes


def _intent_entity(store: Store, snapshot: str) -> tuple[dict[str, list], dict[str, str]]:
    queries = _read(store, snapshot, "queries", ["query_id", "text", "split"])
    labels = [lab for lab in _read(store, snapshot, "labels", ["target_type", "target_id", "task", "value", "spans",
                                                                "source", "confidence", "created_at"])
              if lab["target_type"] == "query" and lab["task"] in ("intent", "entity")]
    resolved = resolve_labels(labels)
    rows, split_of = [], {}
    for q in queries:
        intent = resolved.get((q["query_id"], "intent"))
        entity = resolved.get((q["query_id"], "entity"))
        if intent is None and entity is None:
            continue
        spans = None if entity is None else [{"start": s["start"], "end": s["end"], "type": s["type"]}
                                             for s in (entity.get("spans") or [])]
        rows.append({"query_id": q["query_id"], "text": q["text"], "intent": intent["value"] if intent else "",
                     "spans": json.dumps(spans)})
        split_of[q["query_id"]] = q.get("split") or ""
    return {"rows": rows}, split_of


def _judged(store: Store, snapshot: str) -> tuple[dict[str, dict], dict[str, str], dict[str, str], dict[str, str]]:
    """Judgments grouped by query, plus query texts, product texts and per-query split."""
    judgments = _read(store, snapshot, "judgments", ["query_id", "product_id", "grade", "split"])
    judgments += _relevance_labels(store, snapshot, {(j["query_id"], j["product_id"]) for j in judgments})
    queries = {q["query_id"]: q for q in _read(store, snapshot, "queries", ["query_id", "text", "split"])}
    needed = {j["product_id"] for j in judgments}
    products = {p["product_id"]: product_text(p) for p in _read(
        store, snapshot, "products", ["product_id", "title", "brand", "category_path", "attributes", "description"])
        if p["product_id"] in needed}
    by_query: dict[str, dict[str, str]] = {}
    split_of: dict[str, str] = {}
    for j in judgments:
        if j["query_id"] not in queries or j["product_id"] not in products:
            continue
        by_query.setdefault(j["query_id"], {})[j["product_id"]] = j["grade"]
        split_of.setdefault(j["query_id"], queries[j["query_id"]].get("split") or j.get("split") or "")
    return by_query, {q: r["text"] for q, r in queries.items()}, products, split_of


def _relevance_labels(store: Store, snapshot: str, judged: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """Graded pairs from the labels table (behaviour or human relevance labels, resolved by source
    priority) for pairs the judgments table does not grade: a shop without editorial judgments
    trains its ranker on what its users did."""
    labels = [lab for lab in _read(store, snapshot, "labels", ["target_type", "target_id", "task", "value", "source",
                                                                "confidence", "created_at"])
              if lab["task"] == "relevance" and lab["target_type"] == "query_product" and "::" in lab["target_id"]]
    out = []
    for (target, _), lab in resolve_labels(labels).items():
        qid, pid = target.split("::", 1)
        if (qid, pid) not in judged and lab["value"] in ESCI_GAIN:
            out.append({"query_id": qid, "product_id": pid, "grade": lab["value"], "split": ""})
    return out


def _ranker_rows(by_query, texts, products) -> list[dict[str, Any]]:
    rows = []
    for qid, graded in sorted(by_query.items()):
        pids = sorted(graded)[:MAX_EVAL_LIST]
        rows.append({"query_id": qid, "query": texts[qid], "docs": json.dumps([products[p] for p in pids]),
                     "gains": json.dumps([ESCI_GAIN[graded[p]] for p in pids])})
    return rows


def _retriever_rows(by_query, texts, products, hard_negatives: int, positives=("E", "S")) -> list[dict[str, Any]]:
    rows = []
    for qid, graded in sorted(by_query.items()):
        pos = sorted(p for p, g in graded.items() if g in positives)
        neg = sorted(p for p, g in graded.items() if g == "I")
        for i, pid in enumerate(pos):
            hard = [products[neg[(i + k) % len(neg)]] for k in range(min(hard_negatives, len(neg)))]
            rows.append({"query_id": qid, "query": texts[qid], "positive": products[pid], "negatives": json.dumps(hard)})
    return rows


def load_task_data(store: Store, snapshot: str, task: str, validation_fraction: float = 0.1, seed: int = 13,
                   hard_negatives: int = 1, max_train_examples: Optional[int] = None) -> TaskData:
    """Examples for `task` from snapshot `snapshot`; JobError on unknown snapshot or empty train split."""
    try:
        table_versions = store.snapshot_versions(snapshot)
    except StoreError as exc:
        raise JobError(str(exc)) from exc
    if task == "intent_entity":
        built, split_of = _intent_entity(store, snapshot)
        rows, source = built["rows"], "queries with intent/entity labels"
    elif task in ("ranker", "retriever"):
        by_query, texts, products, split_of = _judged(store, snapshot)
        rows = (_ranker_rows(by_query, texts, products) if task == "ranker"
                else _retriever_rows(by_query, texts, products, hard_negatives))
        source = "judged queries" + (" with an E/S judgment" if task == "retriever" else "")
    else:
        raise JobError(f"unknown task {task!r}; known: intent_entity, ranker, retriever")
    query_split, notes = assign_splits({r["query_id"]: split_of.get(r["query_id"], "") for r in rows},
                                       validation_fraction, seed)
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLIT_NAMES}
    for r in rows:
        splits[query_split[r["query_id"]]].append(r)
    if not splits["train"]:
        raise JobError(f"snapshot {snapshot!r} has no training examples for task {task} "
                       f"({len(rows)} {source} in total, none in the train split)")
    # A seeded global shuffle: rows come grouped (SNIPS ids sort by intent) and the workers' local
    # shuffle buffer is small, so unshuffled data trains on one intent after another and the
    # intent head forgets (validation accuracy at chance after a full SNIPS epoch).
    splits["train"] = sorted(splits["train"], key=lambda r: _hash_unit(r["query_id"] + json.dumps(r), seed))
    if max_train_examples and len(splits["train"]) > max_train_examples:
        splits["train"] = splits["train"][:max_train_examples]
        notes.append(f"train capped at {max_train_examples} examples")
    spaces = label_spaces(task, splits["train"])
    if task == "intent_entity" and not spaces["intents"]:
        raise JobError(f"snapshot {snapshot!r}: the train split has no intent labels, so there are no classes to learn")
    return TaskData(task, snapshot, splits, spaces, table_versions, notes)


def label_spaces(task: str, train_rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Intent classes and entity types seen in the train split (sorted, so stable across runs)."""
    if task != "intent_entity":
        return {}
    intents = sorted({r["intent"] for r in train_rows if r["intent"]})
    types = sorted({s["type"] for r in train_rows for s in (json.loads(r["spans"]) or [])})
    return {"intents": intents, "entity_types": types}
