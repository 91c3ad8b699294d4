"""Offline evaluation: protocols, the systems compared, and the Markdown report (no Ray).

Ranking, two protocols, on the gains stored with each judgment (its declared scale, schemas.grades:
ESCI's 3/2/1/0 for E/S/C/I by default, or a shop's own levels or numeric grades):
- judged list (KDD Cup 2022 task 1 / Vespa commerce-product-ranking): re-rank each test query's
  judged products. NDCG@10 with the stored gains in the platform's convention (`ray_app.metrics`:
  exponential 2^g - 1, log2 discount, the same figure training reports as val_ndcg@10), plus, for
  queries graded in ESCI letters, NDCG over the whole list with linear KDD gains E=1.0, S=0.1, C=0.01, I=0.
  Items are presented to the scorer in a label-independent order (by a hash of the product id),
  and items a system cannot score (BM25 matching no term) go last in that order, so ties never
  leak the order judgments were stored in (ESCI files list E first).
- full catalogue: search every product; unjudged products count as irrelevant (gain 0).
  NDCG@10 (stored gains, ideal = the query's judged gains), Recall@100 of relevant products (E+S;
  on other scales the top third of the gain range), MRR of the first relevant product (0 when none
  is retrieved in the depth searched).
Queries with nothing relevant are skipped by NDCG (no ideal ranking) and by recall/MRR (nothing
to find); counts per figure are reported.
Query understanding: intent accuracy and macro-F1, entity span micro-F1 (exact start, end, type),
sentence exact match (intent and the whole span set right).
The systems compared live in the search library (`ray_app.search`: BM25, Dense, Hybrid, Rerank,
RerankFusion), the same classes the serving stages use.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ray_app.metrics import accuracy, dcg_at_k, macro_f1, ndcg_at_k, prf_from_counts, recall_at_k, span_f1
from schemas.grades import ESCI, GradeScale

KDD_GAIN: dict[str, float] = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}
UNSCORED = -1e30


@dataclass(frozen=True)
class Graded:
    """One judgment as the metrics use it: its grade, the gain stored with it, whether it is relevant."""

    grade: str
    gain: float
    relevant: bool
    scale: str = ESCI.spec  # the spec of the scale it was graded on

    @classmethod
    def of(cls, grade: str, gain: float, scale: Optional[GradeScale] = None) -> "Graded":
        scale = scale or ESCI
        return cls(grade, float(gain), float(gain) >= scale.relevant_gain, scale.spec)


Judged = Mapping[str, Union[Graded, str]]  # product id -> judgment (a bare letter = an ESCI grade)


def _graded(judged: Judged) -> dict[str, Graded]:
    return {p: g if isinstance(g, Graded) else Graded.of(*ESCI.grade(g)) for p, g in judged.items()}


def neutral_order(ids: Iterable[str]) -> list[str]:
    """Ids in an order that depends on nothing but the ids (SHA-1), never on the labels."""
    return sorted(ids, key=lambda i: (hashlib.sha1(str(i).encode()).hexdigest(), str(i)))


def judged_list_metrics(grades: Judged, scores: dict[str, Optional[float]], k: int = 10) -> dict[str, float]:
    """One query's judged-list figures: NDCG@k (stored gains) and, when graded E/S/C/I, KDD NDCG (full list)."""
    graded = _graded(grades)
    ids = neutral_order(graded)
    s = [UNSCORED if scores.get(i) is None else float(scores[i]) for i in ids]
    out: dict[str, float] = {}
    if all(graded[i].grade in KDD_GAIN for i in ids):
        out["ndcg_esci"] = ndcg_at_k(s, [KDD_GAIN[graded[i].grade] for i in ids], k=len(ids), exponential=False)
    out[f"ndcg@{k}"] = ndcg_at_k(s, [graded[i].gain for i in ids], k=k)
    return out


def judged_metrics(figures: dict[str, dict[str, Any]], k: int) -> list[str]:
    """The judged-list figures reported: KDD NDCG first when some query was graded in ESCI letters."""
    has_kdd = any(not (isinstance(f.get("ndcg_esci"), float) and math.isnan(f["ndcg_esci"]))
                  for f in figures.values() if "ndcg_esci" in f)
    return (["ndcg_esci"] if has_kdd else []) + [f"ndcg@{k}"]


def catalogue_metrics(ranked: Sequence[str], grades: Judged, k: int = 10, recall_k: int = 100) -> dict[str, float]:
    """One query's full-catalogue figures from its ranked product ids (unjudged = irrelevant)."""
    graded = _graded(grades)
    ideal = dcg_at_k(sorted((g.gain for g in graded.values()), reverse=True), k)
    got = dcg_at_k([graded[p].gain if p in graded else 0.0 for p in ranked[:k]], k)
    relevant = {p for p, g in graded.items() if g.relevant}
    first = next((n for n, p in enumerate(ranked[:recall_k], start=1) if p in relevant), None)
    return {f"ndcg@{k}": got / ideal if ideal > 0 else float("nan"),
            f"recall@{recall_k}": recall_at_k(ranked, relevant, recall_k),
            "mrr": (1.0 / first if first else 0.0) if relevant else float("nan")}


def mean_metrics(per_query: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each figure over the queries where it is defined, plus `queries` (how many in all)."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for row in per_query for k in row):
        values = [row[key] for row in per_query if key in row and not math.isnan(row[key])]
        out[key] = round(float(np.mean(values)), 4) if values else float("nan")
    out["queries"] = len(per_query)
    return out


def paired_bootstrap(system: Sequence[float], reference: Sequence[float], resamples: int = 2000,
                     seed: int = 0, confidence: float = 0.95) -> dict[str, float]:
    """Mean per-query difference system - reference with a percentile bootstrap interval over queries.

    Paired: each resample draws queries with replacement and takes both systems' figures for the
    same queries, so query difficulty (most of the variance) cancels. Pairs where either figure is
    NaN (metric undefined for that query) are dropped. `p_better` is the share of resamples whose
    mean difference is > 0: near 1 or 0 means the sign holds across resamples, near 0.5 a coin flip.
    """
    a, b = np.asarray(system, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap needs one figure per query for both systems, got {a.shape} and {b.shape}")
    diff = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if diff.size == 0:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_better": float("nan"), "queries": 0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    return {"diff": round(float(diff.mean()), 4), "ci_low": round(float(np.quantile(means, tail)), 4),
            "ci_high": round(float(np.quantile(means, 1 - tail)), 4),
            "p_better": round(float((means > 0).mean()), 4), "queries": int(diff.size)}


def compare_systems(per_query: dict[str, list[dict[str, float]]], reference: str, metrics: Sequence[str],
                    resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """system -> metric -> paired_bootstrap against `reference` (same queries, same order)."""
    if reference not in per_query:
        return {}
    ref = per_query[reference]
    return {name: {m: paired_bootstrap([r.get(m, float("nan")) for r in rows], [r.get(m, float("nan")) for r in ref],
                                       resamples, seed) for m in metrics}
            for name, rows in per_query.items() if name != reference}


def _span_set(spans: Optional[Iterable[dict[str, Any]]]) -> set[tuple[int, int, str]]:
    return {(int(s["start"]), int(s["end"]), str(s["type"])) for s in (spans or [])}


def query_understanding_metrics(gold: Sequence[dict[str, Any]], pred: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Gold rows {intent ('' = unlabelled), spans (None = unlabelled)} vs predictions {intent, entities}."""
    with_intent = [(g["intent"], p["intent"]) for g, p in zip(gold, pred) if g.get("intent")]
    with_spans = [(_span_set(g["spans"]), _span_set(p.get("entities"))) for g, p in zip(gold, pred)
                  if g.get("spans") is not None]
    both = [g["intent"] == p["intent"] and _span_set(g["spans"]) == _span_set(p.get("entities"))
            for g, p in zip(gold, pred) if g.get("intent") and g.get("spans") is not None]
    out: dict[str, float] = {"queries": len(gold), "intent_queries": len(with_intent), "entity_queries": len(with_spans)}
    if with_intent:
        truth, guess = zip(*with_intent)
        out["intent_accuracy"] = round(accuracy(truth, guess), 4)
        out["intent_macro_f1"] = round(macro_f1(truth, guess), 4)
    if with_spans:
        prf = span_f1([g for g, _ in with_spans], [p for _, p in with_spans])
        out.update({f"entity_{k}": round(v, 4) for k, v in prf.items()})
    if both:
        out["exact_match"] = round(float(np.mean(both)), 4)
    return out


def entity_type_metrics(gold: Sequence[dict[str, Any]], pred: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per entity type: precision, recall, F1 of exact spans, and how many gold / predicted spans
    (where a model's span errors are: the micro F1 hides a type that fails)."""
    counts: dict[str, list[int]] = {}
    for g, p in zip(gold, pred):
        if g.get("spans") is None:
            continue
        truth, guess = _span_set(g["spans"]), _span_set(p.get("entities"))
        for span in truth | guess:
            c = counts.setdefault(span[2], [0, 0, 0])
            c[0 if span in truth and span in guess else 1 if span in guess else 2] += 1
    out = {}
    for kind, (tp, fp, fn) in sorted(counts.items(), key=lambda kv: (-(kv[1][0] + kv[1][2]), kv[0])):
        prf = prf_from_counts(tp, fp, fn)
        out[kind] = {**{k: round(v, 4) for k, v in prf.items()}, "gold": tp + fn, "predicted": tp + fp}
    return out


# -- report ------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}" if abs(value) <= 1 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: dict[str, dict[str, Any]], columns: Sequence[tuple[str, str]], first: str = "system") -> str:
    """A Markdown table: one row per key of `rows` (headed `first`), `columns` = (key, header)."""
    head = f"| {first} | " + " | ".join(h for _, h in columns) + " |"
    sep = "|---|" + "---:|" * len(columns)
    body = [f"| {name} | " + " | ".join(_fmt(fig.get(key, float("nan"))) for key, _ in columns) + " |"
            for name, fig in rows.items()]
    return "\n".join([head, sep, *body])


def _plot_line(payload: dict[str, Any], key: str, alt: str) -> list[str]:
    name = (payload.get("plots") or {}).get(key)
    return [f"![{alt}]({name})", ""] if name else []


def render_report(payload: dict[str, Any]) -> str:
    """The evaluation report as Markdown from the JSON payload the job writes."""
    k, rk = payload["k"], payload["recall_k"]
    lines = [f"# Offline evaluation — {payload['created_at']}", "",
             f"- store `{payload['db']}`, products table version {payload['products_version']} "
             f"({payload['products']:,} products); queries: split `{payload['split']}`"
             + (f", dataset `{payload['dataset']}`" if payload.get("dataset") else "")
             + (f", snapshot `{payload['snapshot']}`" if payload.get("snapshot") else "")
             + f"; {payload['queries']} judged queries", ""]
    scales = [GradeScale.parse(spec) for spec in payload.get("grade_scales") or [ESCI.spec]]
    esci_only = all(sc.kind == "esci" for sc in scales)
    gains = "3/2/1/0" if esci_only else "declared gains"
    if payload.get("judged_list") or payload.get("full_catalogue"):
        lines += ["Grade scale" + ("s" if len(scales) > 1 else "") + ": " + "; ".join(sc.describe() for sc in scales) + ".", ""]
    if payload.get("judged_list"):
        columns = ([("ndcg_esci", "NDCG (ESCI gains)")] if any("ndcg_esci" in f for f in payload["judged_list"].values()) else [])
        lines += ["## Ranking: judged-list re-ranking (KDD Cup 2022 / Vespa protocol)", "",
                  ("NDCG over each query's whole judged list with ESCI gains E=1, S=0.1, C=0.01, I=0 (linear); " if columns else "")
                  + f"NDCG@{k} with the {gains} (exponential 2^g-1, as in training).", "",
                  markdown_table(payload["judged_list"], columns + [(f"ndcg@{k}", f"NDCG@{k} ({gains})"),
                                                                    ("queries", "queries")]), ""]
        lines += _plot_line(payload, "judged_list", "judged-list NDCG per system and against the reference")
    if payload.get("full_catalogue"):
        lines += ["## Retrieval: full catalogue (unjudged = irrelevant)", "",
                  f"NDCG@{k} ({gains}), Recall@{rk} of relevant products, MRR of the first relevant product; "
                  "time = retrieval per query incl. query encoding.", "",
                  markdown_table(payload["full_catalogue"], [(f"ndcg@{k}", f"NDCG@{k}"), (f"recall@{rk}", f"Recall@{rk}"),
                                                             ("mrr", "MRR"), ("ms_per_query", "ms/query"),
                                                             ("queries", "queries")]), ""]
        lines += _plot_line(payload, "full_catalogue", f"full-catalogue NDCG@{k} per system and against the reference")
    for key, title in (("judged_list", "judged list"), ("full_catalogue", "full catalogue")):
        table = (payload.get("comparisons") or {}).get(key)
        if table:
            ref = payload["comparisons"]["reference"]
            metrics = list(next(iter(table.values())))
            lines += [f"### Against {ref}, {title}: paired bootstrap over queries", "",
                      f"Mean per-query difference to {ref} and its 95% interval ({payload['comparisons']['resamples']} "
                      "resamples of the queries); P(better) = share of resamples where the system is ahead.", "",
                      "| system | " + " | ".join(f"{m}: diff [95% CI] | P(better)" for m in metrics) + " |",
                      "|---|" + "---:|---:|" * len(metrics)]
            for name, figs in table.items():
                cells = [f"{f['diff']:+.4f} [{f['ci_low']:+.4f}, {f['ci_high']:+.4f}] | {f['p_better']:.2f}"
                         if f["queries"] else "– | –" for f in (figs[m] for m in metrics)]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    if payload.get("query_understanding"):
        qu = payload["query_understanding"]
        lines += ["## Query understanding", ""]
        which = payload.get("intent_model") or {}
        if which.get("version"):
            asked = f" (asked for `{which['requested']}`)" if which.get("requested") not in (None, which["version"]) else ""
            lines += [f"Model `{which['version']}`{asked}, base `{which.get('base_model')}`, trained on snapshot "
                      f"`{which.get('snapshot')}` at {which.get('created_at')}.", ""]
        against = {task: n for task, n in (which.get("scored_against") or {}).items() if n}
        if against:
            lines += ["Scored against each query's resolved label, by source:annotator: " + "; ".join(
                f"{task} " + ", ".join(f"{who} {n}" for who, n in counts.items()) for task, counts in against.items()) + ".", ""]
        lines += ["| figure | value |", "|---|---:|"]
        lines += [f"| {key} | {_fmt(val)} |" for key, val in qu.items()] + [""]
    if payload.get("entity_types"):
        lines += ["### Entities by type (exact span + type)", "",
                  markdown_table(payload["entity_types"], [("f1", "F1"), ("precision", "precision"), ("recall", "recall"),
                                                           ("gold", "gold spans"), ("predicted", "predicted spans")],
                                 first="entity type"), ""]
    if payload.get("systems"):
        lines += ["## Systems", ""] + [f"- **{n}**: {d}" for n, d in payload["systems"].items()] + [""]
    if payload.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {n}: {why}" for n, why in payload["skipped"].items()] + [""]
    if payload.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in payload["notes"]] + [""]
    return "\n".join(lines)
