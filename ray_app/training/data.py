"""Training examples per task from a named dataset snapshot, with leak-free splits.

Splits come from the `split` column (a query's split wins over its judgments'; "" counts as
train). When a snapshot has no validation split, one is carved from train BY QUERY with a
deterministic hash, so all examples of a query land on the same side. Labels are resolved per
(query, task) by `ray_app.labeling.resolve` (source priority, confidence, newest, label_id),
the resolver the label report, show and export use too. Label spaces are the classes of the
taxonomy the snapshot pins (else those the train split has) and travel with the model.
Ranker and retriever examples use each judgment's stored gain and grade scale, never its letter
(`ray_app.training.gains`: targets in [0, 1], positives by evaluation's relevance rule); relevance
labels count on the snapshot taxonomy's grades, its grade aliases included.
List-valued fields are JSON strings so the rows are plain Arrow scalars for Ray Data.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from ray_app.cli import JobError
from ray_app.evaluation import Graded
from ray_app.labeling.resolve import RANK_COLUMNS, resolve as resolve_labels
from ray_app.store import Store, StoreError
from ray_app.taxonomy import snapshot_taxonomy
from ray_app.training.gains import GainMap, gain_map, graded, parse_scale, relevance_scale
from schemas.grades import GradeScale
from schemas.taxonomy import Taxonomy, TaxonomyError, builtin_taxonomy

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
                                                                *RANK_COLUMNS])
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


@dataclass
class Judged:
    """A snapshot's graded pairs for the ranker and retriever, with what was left out."""

    by_query: dict[str, dict[str, Graded]]  # query id -> product id -> judgment (stored gain, scale)
    texts: dict[str, str]
    products: dict[str, str]
    split_of: dict[str, str]
    notes: list[str]


def _judged(store: Store, snapshot: str) -> Judged:
    """Judgments (and relevance labels for pairs they leave out) grouped by query, with texts and splits."""
    judgments = _read(store, snapshot, "judgments", ["query_id", "product_id", "grade", "gain", "scale", "split"])
    scales: dict[str, GradeScale] = {}
    for j in judgments:  # the gain stored with each judgment, on its declared scale, as jobs.evaluate scores it
        j["grade"] = graded(j["grade"], j["gain"], parse_scale(j["scale"], scales),
                            f"judgment ({j['query_id']!r}, {j['product_id']!r})")
    labelled, notes = _relevance_labels(store, snapshot, {(j["query_id"], j["product_id"]) for j in judgments})
    judgments += labelled
    queries = {q["query_id"]: q for q in _read(store, snapshot, "queries", ["query_id", "text", "split"])}
    needed = {j["product_id"] for j in judgments}
    products = {p["product_id"]: product_text(p) for p in _read(
        store, snapshot, "products", ["product_id", "title", "brand", "category_path", "attributes", "description"])
        if p["product_id"] in needed}
    by_query: dict[str, dict[str, Graded]] = {}
    split_of: dict[str, str] = {}
    for j in judgments:
        if j["query_id"] not in queries or j["product_id"] not in products:
            continue
        by_query.setdefault(j["query_id"], {})[j["product_id"]] = j["grade"]
        split_of.setdefault(j["query_id"], queries[j["query_id"]].get("split") or j.get("split") or "")
    return Judged(by_query, {q: r["text"] for q, r in queries.items()}, products, split_of, notes)


def _relevance_labels(store: Store, snapshot: str, judged: set[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Graded pairs from the labels table (behaviour or human relevance labels, resolved by source
    priority) for pairs the judgments table does not grade: a shop without editorial judgments
    trains its ranker on what its users did. Values are read on the grades of the taxonomy the
    snapshot pins (else the built-in ESCI ones), aliases included; others are counted in a note."""
    labels = [lab for lab in _read(store, snapshot, "labels", ["target_type", "target_id", "task", "value",
                                                                *RANK_COLUMNS])
              if lab["task"] == "relevance" and lab["target_type"] == "query_product" and "::" in lab["target_id"]]
    taxonomy = snapshot_taxonomy(store, snapshot) if labels else None
    taxonomy = taxonomy or builtin_taxonomy()
    out, scale, skipped = [], None, Counter()
    for (target, _), lab in resolve_labels(labels).items():
        qid, pid = target.split("::", 1)
        if (qid, pid) in judged:
            continue
        try:
            grade = taxonomy.check_grade(lab["value"])
        except TaxonomyError:
            skipped[lab["value"]] += 1
            continue
        scale = scale or relevance_scale(taxonomy)
        out.append({"query_id": qid, "product_id": pid, "split": "",
                    "grade": graded(grade, taxonomy.grades[grade], scale, f"relevance label {target!r}")})
    notes = [f"{sum(skipped.values())} relevance labels left out: values {dict(skipped.most_common(5))} are not "
             f"grades of the taxonomy {taxonomy.name!r} ({', '.join(taxonomy.grades)})"] if skipped else []
    return out, notes


def _ranker_rows(judged: Judged, gains: GainMap) -> list[dict[str, Any]]:
    rows = []
    for qid, grades in sorted(judged.by_query.items()):
        pids = sorted(grades)[:MAX_EVAL_LIST]
        rows.append({"query_id": qid, "query": judged.texts[qid], "docs": json.dumps([judged.products[p] for p in pids]),
                     "gains": json.dumps([gains.gain(grades[p]) for p in pids]),
                     "targets": json.dumps([gains.target(grades[p]) for p in pids])})
    return rows


def _retriever_rows(judged: Judged, gains: GainMap, hard_negatives: int) -> list[dict[str, Any]]:
    rows, texts, products = [], judged.texts, judged.products
    for qid, grades in sorted(judged.by_query.items()):
        pos = sorted(p for p, g in grades.items() if g.relevant)  # evaluation's rule: top third of the scale
        neg = sorted(p for p, g in grades.items() if gains.negative(g))
        for i, pid in enumerate(pos):
            hard = [products[neg[(i + k) % len(neg)]] for k in range(min(hard_negatives, len(neg)))]
            rows.append({"query_id": qid, "query": texts[qid], "positive": products[pid], "negatives": json.dumps(hard)})
    return rows


def load_task_data(store: Store, snapshot: str, task: str, validation_fraction: float = 0.1, seed: int = 13,
                   hard_negatives: int = 1, max_train_examples: Optional[int] = None,
                   recs: Optional[dict[str, Any]] = None) -> TaskData:
    """Examples for `task` from snapshot `snapshot`; JobError on unknown snapshot or empty train split."""
    try:
        table_versions = store.snapshot_versions(snapshot)
    except StoreError as exc:
        raise JobError(str(exc)) from exc
    if task == "recommender":
        from ray_app.recs.data import recommender_task_data

        return recommender_task_data(store, snapshot, table_versions, recs or {}, validation_fraction, seed, max_train_examples)
    notes: list[str] = []
    if task == "intent_entity":
        built, split_of = _intent_entity(store, snapshot)
        rows, source = built["rows"], "queries with intent/entity labels"
    elif task in ("ranker", "retriever"):
        judged = _judged(store, snapshot)
        gains = gain_map(g for grades in judged.by_query.values() for g in grades.values())
        rows = (_ranker_rows(judged, gains) if task == "ranker" else _retriever_rows(judged, gains, hard_negatives))
        split_of, notes = judged.split_of, judged.notes + gains.notes()
        source = "judged queries" + (" with a relevant judgment (top third of its grade scale)" if task == "retriever" else "")
    else:
        raise JobError(f"unknown task {task!r}; known: intent_entity, ranker, retriever")
    taxonomy = snapshot_taxonomy(store, snapshot) if task == "intent_entity" else None
    if taxonomy is not None:
        check_declared(rows, taxonomy, snapshot)
    query_split, split_notes = assign_splits({r["query_id"]: split_of.get(r["query_id"], "") for r in rows},
                                             validation_fraction, seed)
    notes = split_notes + notes
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLIT_NAMES}
    for r in rows:
        splits[query_split[r["query_id"]]].append(r)
    if not splits["train"]:
        raise JobError(f"snapshot {snapshot!r} has no training examples for task {task} "
                       f"({len(rows)} {source} in total, none in the train split)")
    # A seeded global shuffle: rows come grouped (SNIPS ids sort by intent) and the workers' local
    # shuffle buffer is small, so unshuffled data trains on one intent after another and the
    # intent head forgets (validation accuracy at chance after a full SNIPS epoch).
    # The key leaves out `targets` (derived from the gains): ESCI rows shuffle as they did before targets existed.
    splits["train"] = sorted(splits["train"], key=lambda r: _hash_unit(
        r["query_id"] + json.dumps({k: v for k, v in r.items() if k != "targets"}), seed))
    if max_train_examples and len(splits["train"]) > max_train_examples:
        splits["train"] = splits["train"][:max_train_examples]
        notes.append(f"train capped at {max_train_examples} examples")
    spaces = label_spaces(task, splits["train"], taxonomy)
    if task == "intent_entity" and not spaces["intents"]:
        raise JobError(f"snapshot {snapshot!r}: the train split has no intent labels, so there are no classes to learn")
    return TaskData(task, snapshot, splits, spaces, table_versions, notes)


def check_declared(rows: list[dict[str, Any]], taxonomy: Taxonomy, snapshot: str) -> None:
    """JobError naming the intents and entity types of `rows` that the snapshot's taxonomy does not declare."""
    intents, types = set(taxonomy.intents), set(taxonomy.entity_types)
    bad_intents = Counter(r["intent"] for r in rows if r["intent"] and r["intent"] not in intents)
    bad_types = Counter(s["type"] for r in rows for s in (json.loads(r["spans"]) or []) if s["type"] not in types)
    problems = [f"{what} {dict(bad.most_common(10))}" for what, bad in (("intents", bad_intents), ("entity types", bad_types)) if bad]
    if problems:
        raise JobError(f"snapshot {snapshot!r}: labels use values its taxonomy {taxonomy.name!r} does not declare: "
                       f"{'; '.join(problems)} (declare them with jobs.label --taxonomy, or relabel, then take a new snapshot)")


def label_spaces(task: str, train_rows: list[dict[str, Any]], taxonomy: Optional[Taxonomy] = None) -> dict[str, list[str]]:
    """The declared intents and entity types when the snapshot pins a taxonomy (every class, in its
    declared order, even one the train split lacks); else those seen in the train split, sorted."""
    if task != "intent_entity":
        return {}
    if taxonomy is not None:
        return {"intents": list(taxonomy.intents), "entity_types": list(taxonomy.entity_types)}
    intents = sorted({r["intent"] for r in train_rows if r["intent"]})
    types = sorted({s["type"] for r in train_rows for s in (json.loads(r["spans"]) or [])})
    return {"intents": intents, "entity_types": types}
