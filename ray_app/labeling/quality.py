"""Label resolution (which label counts) and the label quality report.

Several sources may label the same target; training reads one label per (target, task), the
resolved one, chosen by `ray_app.labeling.resolve` (source priority, confidence, newest,
label_id): the same function training, evaluation, show and export use. The report says how
much is labelled, how far the weak sources agree with people, and where sources disagree, so a
team knows what to review first.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from typing import Any, Iterable, Optional

import pyarrow as pa

from ray_app.labeling.resolve import RESOLVE_KEYS, resolve_table
from ray_app.metrics import accuracy, cohen_kappa  # cohen_kappa is also this module's public name
from schemas.records import ESCI_GAIN, SOURCE_PRIORITY

TASKS = ("intent", "entity", "relevance")


def resolve_labels(labels: pa.Table) -> pa.Table:
    """The winning label per (target_id, task), by `ray_app.labeling.resolve.rank_key`."""
    return resolve_table(labels, RESOLVE_KEYS)


def latest_per_source(labels: pa.Table) -> pa.Table:
    """The best label per (target_id, task, source) by the same order, e.g. one of several annotators."""
    return resolve_table(labels, ("target_id", "task", "source"))


def span_key(spans: Optional[Iterable[dict[str, Any]]]) -> frozenset[tuple[int, int, str]]:
    return frozenset((int(s["start"]), int(s["end"]), str(s["type"])) for s in spans or [])


def label_key(row: dict[str, Any]) -> Any:
    """What two labels must share to agree: the value, or the span set for entity labels."""
    return span_key(row.get("spans")) if row["task"] == "entity" else row["value"]


def describe(row: dict[str, Any]) -> str:
    if row["task"] != "entity":
        return row["value"]
    return "; ".join(f"{s['text']}[{s['start']}:{s['end']}]={s['type']}" for s in sorted(row["spans"] or [], key=lambda s: s["start"])) or "(none)"


def span_prf(pred: list[frozenset], gold: list[frozenset]) -> dict[str, Optional[float]]:
    """Micro precision/recall/F1 of exact (start, end, type) spans, plus whole-query exact match."""
    if not gold:
        return {"precision": None, "recall": None, "f1": None, "exact_match": None}
    tp = sum(len(p & g) for p, g in zip(pred, gold))
    n_pred, n_gold = sum(map(len, pred)), sum(map(len, gold))
    prec = tp / n_pred if n_pred else (1.0 if not n_gold else 0.0)
    rec = tp / n_gold if n_gold else (1.0 if not n_pred else 0.0)
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    exact = sum(p == g for p, g in zip(pred, gold)) / len(gold)
    return {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4), "exact_match": round(exact, 4)}


def _agree(task: str, a: dict[str, dict], b: dict[str, dict], gains: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Agreement of source `a` against reference `b` on their shared targets (relevance on `gains`)."""
    gains = gains if gains is not None else ESCI_GAIN
    common = sorted(set(a) & set(b))
    out: dict[str, Any] = {"n": len(common)}
    if task == "entity":
        out.update(span_prf([span_key(a[t]["spans"]) for t in common], [span_key(b[t]["spans"]) for t in common]))
        return out
    va, vb = [a[t]["value"] for t in common], [b[t]["value"] for t in common]
    out["accuracy"] = round(accuracy(va, vb), 4) if common else None
    out["kappa"] = cohen_kappa(va, vb)
    if task == "relevance":
        pairs = [(x, y) for x, y in zip(va, vb) if x in gains and y in gains]  # grades off the scale are not compared
        diffs = [abs(gains[x] - gains[y]) for x, y in pairs]
        out["mean_abs_gain_diff"] = round(sum(diffs) / len(diffs), 4) if diffs else None
    return out


def _histogram(values: list[float]) -> dict[str, Any]:
    bins = [0] * 10
    for v in values:
        bins[min(9, max(0, int(float(v) * 10)))] += 1
    return {"n": len(values), "mean": round(sum(values) / len(values), 4) if values else None,
            "histogram": {f"{i / 10:.1f}-{(i + 1) / 10:.1f}": c for i, c in enumerate(bins)}}


def quality_report(labels: pa.Table, queries: pa.Table, judgments: Optional[pa.Table] = None,
                   max_examples: int = 5, gains: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Coverage, agreement, conflicts, class distribution and confidence of the labels table
    (relevance grades compared on `gains`, the store's declared grades; ESCI's by default)."""
    texts = dict(zip(queries.column("query_id").to_pylist(), queries.column("text").to_pylist()))
    n_q = len(texts)
    per_src: dict[str, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for row in latest_per_source(labels).to_pylist():
        per_src[row["task"]][row["source"]][row["target_id"]] = row
    resolved: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in resolve_labels(labels).to_pylist():
        resolved[row["task"]][row["target_id"]] = row
    share = lambda d: round(sum(1 for t in d if t in texts) / n_q, 4) if n_q else 0.0  # noqa: E731

    coverage: dict[str, Any] = {}
    for task in ("intent", "entity"):
        coverage[task] = {src: share(per_src[task].get(src, {})) for src in SOURCE_PRIORITY}
        coverage[task]["resolved"] = share(resolved[task])
    coverage["entity"]["resolved_with_spans"] = share({t: r for t, r in resolved["entity"].items() if r["spans"]})
    rel_queries = {t.split("::", 1)[0] for t in resolved["relevance"]}
    coverage["relevance"] = {"pairs": {src: len(per_src["relevance"].get(src, {})) for src in SOURCE_PRIORITY},
                             "resolved_pairs": len(resolved["relevance"]), "queries_with_relevance": share(rel_queries)}

    # the rules run on every query and write no entity label when nothing matched: for agreement and
    # conflicts that is the rule saying "no spans" (coverage above counts written labels only)
    if per_src["intent"].get("rule"):
        rule_entities = per_src["entity"]["rule"]
        for t in per_src["intent"]["rule"]:
            rule_entities.setdefault(t, {"task": "entity", "value": "", "spans": [], "source": "rule"})

    agreement: dict[str, Any] = {}
    for task in TASKS:
        agreement[task] = {}
        srcs = sorted(per_src[task], key=SOURCE_PRIORITY.get)
        pairs = set(combinations(srcs, 2)) | ({("rule", "human")} if task != "relevance" else {("behaviour", "human")})
        for a, b in sorted(pairs):
            agreement[task][f"{a}_vs_{b}"] = _agree(task, per_src[task].get(a, {}), per_src[task].get(b, {}), gains)
    gold: dict[str, dict] = {}
    if judgments is not None and judgments.num_rows:
        for j in judgments.select(["query_id", "product_id", "grade"]).to_pylist():
            gold[f"{j['query_id']}::{j['product_id']}"] = {"task": "relevance", "value": j["grade"]}
    agreement["relevance"]["behaviour_vs_judgments"] = _agree("relevance", per_src["relevance"].get("behaviour", {}), gold, gains)

    conflicts: dict[str, Any] = {}
    for task in TASKS:
        targets = sorted(t for t in set().union(*per_src[task].values())
                         if len({label_key(d[t]) for d in per_src[task].values() if t in d}) > 1)
        examples = [{"target_id": t, "text": texts.get(t.split("::", 1)[0], ""),
                     "labels": {src: describe(d[t]) for src, d in per_src[task].items() if t in d},
                     "resolved": describe(resolved[task][t]) if t in resolved[task] else None}
                    for t in targets[:max_examples]]
        conflicts[task] = {"count": len(targets), "examples": examples}

    distribution = {
        "intent": dict(Counter(r["value"] for r in resolved["intent"].values()).most_common()),
        "entity_type": dict(Counter(s["type"] for r in resolved["entity"].values() for s in r["spans"] or []).most_common()),
        "relevance": dict(Counter(r["value"] for r in resolved["relevance"].values()).most_common()),
    }
    conf_src: dict[str, list[float]] = defaultdict(list)
    for src, conf in zip(labels.column("source").to_pylist(), labels.column("confidence").to_pylist()):
        conf_src[src].append(conf if conf is not None else 0.0)
    confidence = {src: _histogram(v) for src, v in sorted(conf_src.items())}
    confidence["resolved"] = _histogram([r["confidence"] or 0.0 for task in TASKS for r in resolved[task].values()])
    return {"queries": n_q, "labels": labels.num_rows,
            "labels_by_source": dict(Counter(labels.column("source").to_pylist())) if labels.num_rows else {},
            "coverage": coverage, "agreement": agreement, "conflicts": conflicts,
            "distribution": distribution, "confidence": confidence}


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The few figures worth a line of job output (same top-level names as the full report)."""
    cov, ag = report["coverage"], report["agreement"]
    pick = lambda d, keys: {k: d.get(k) for k in keys}  # noqa: E731
    return {
        "queries": report["queries"], "labels": report["labels"], "labels_by_source": report["labels_by_source"],
        "coverage": {"intent": cov["intent"]["resolved"], "intent_human": cov["intent"]["human"],
                     "entity": cov["entity"]["resolved_with_spans"], "entity_human": cov["entity"]["human"],
                     "relevance_pairs": cov["relevance"]["resolved_pairs"]},
        "agreement": {"intent_rule_vs_human": pick(ag["intent"]["rule_vs_human"], ("n", "accuracy", "kappa")),
                      "entity_rule_vs_human": pick(ag["entity"]["rule_vs_human"], ("n", "precision", "recall", "f1")),
                      "relevance_behaviour_vs_human": pick(ag["relevance"]["behaviour_vs_human"], ("n", "accuracy", "kappa")),
                      "relevance_behaviour_vs_judgments": pick(ag["relevance"]["behaviour_vs_judgments"], ("n", "accuracy", "kappa"))},
        "conflicts": {task: c["count"] for task, c in report["conflicts"].items()},
    }
