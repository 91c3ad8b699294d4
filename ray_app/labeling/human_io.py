"""Human labels in and out: Label Studio JSON and the common JSONL/CSV line format.

Every imported record is validated against the stored queries before anything is written;
a bad record is reported with its line (Label Studio: task number) and reason and skipped, so
one typo never blocks a batch and never reaches training. Export writes what a reviewer needs
(query text, resolved labels, weak predictions) in a form that imports back unchanged.
Values are checked against the store's taxonomy (schemas/taxonomy.py), and a person is stored
as a configured display name or a keyed pseudonym, never as the e-mail a Label Studio export holds.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from ray_app.ids import label_id
from ray_app.labeling.studio_config import ENTITIES, INTENT, PRODUCT, RELEVANCE, TEXT
from ray_app.privacy import resolve_key
from ray_app.taxonomy import annotator_name
from schemas.records import LABEL_SOURCES, LABEL_TASKS
from schemas.taxonomy import Taxonomy, TaxonomyError, builtin_taxonomy

COLUMNS = ["target_type", "target_id", "task", "value", "spans", "annotator", "confidence", "source", "created_at", "text"]
WEAK = {"rule", "behaviour", "model"}


class LabelLineError(ValueError):
    """A record that cannot become a label; the message is the reason reported to the user."""


@dataclass
class ImportContext:
    texts: dict[str, str]  # query_id -> stored text
    products: Optional[set[str]]  # known product ids (None: not checked)
    stored: dict[tuple[str, str, str], dict]  # (target_id, task, source) -> best stored label (labeling.resolve order)
    default_annotator: str = "human"
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(tzinfo=None))
    taxonomy: Taxonomy = field(default_factory=builtin_taxonomy)  # what values are accepted
    pseudonym_key: str = field(default_factory=lambda: resolve_key()[0])  # for annotators without a configured name
    known_annotators: set[str] = field(default_factory=set)  # names already stored: an export imports back unchanged


@dataclass
class ImportOutcome:
    rows: list[dict[str, Any]] = field(default_factory=list)  # human label rows to upsert
    read: int = 0
    imported: int = 0  # accepted records (written or unchanged)
    unchanged: int = 0  # exported weak labels imported back untouched: nothing to write
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"line", "reason"}


def _time(value: Any, default: datetime) -> datetime:
    if not value:
        return default
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value).strip())
        except ValueError as exc:
            raise LabelLineError(f"created_at {value!r} is not an ISO timestamp") from exc
    return ts.astimezone(timezone.utc).replace(tzinfo=None) if ts.tzinfo else ts


def check_spans(spans: Any, text: str, taxonomy: Optional[Taxonomy] = None) -> list[dict[str, Any]]:
    """Validated spans: declared type, inside the text, text matching the offsets, no overlaps."""
    taxonomy = taxonomy or builtin_taxonomy()
    if isinstance(spans, str):
        try:
            spans = json.loads(spans) if spans.strip() else []
        except ValueError as exc:
            raise LabelLineError(f"spans is not valid JSON: {exc}") from exc
    if not isinstance(spans, list):
        raise LabelLineError("spans must be a list of {start, end, type, text}")
    out = []
    for s in spans:
        if not isinstance(s, dict):
            raise LabelLineError(f"span {s!r} is not an object")
        try:
            start, end = int(s["start"]), int(s["end"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LabelLineError(f"span {s!r} needs integer start and end") from exc
        try:
            etype = taxonomy.check_entity_type(str(s.get("type", "")))
        except TaxonomyError as exc:
            raise LabelLineError(str(exc)) from exc
        if not 0 <= start < end <= len(text):
            raise LabelLineError(f"span [{start}, {end}) outside the query text (length {len(text)})")
        given = s.get("text")
        if given not in (None, "") and given != text[start:end]:
            raise LabelLineError(f"span text {given!r} does not match query text[{start}:{end}] {text[start:end]!r}")
        out.append({"start": start, "end": end, "type": etype, "text": text[start:end]})
    out.sort(key=lambda s: (s["start"], s["end"]))
    for a, b in zip(out, out[1:]):
        if b["start"] < a["end"]:
            raise LabelLineError(f"spans [{a['start']}, {a['end']}) and [{b['start']}, {b['end']}) overlap")
    return out


def validate_record(rec: dict[str, Any], ctx: ImportContext) -> Optional[dict[str, Any]]:
    """A human label row from one common-format record; None for an untouched weak label."""
    if not isinstance(rec, dict):
        raise LabelLineError("record is not a JSON object")
    task = str(rec.get("task") or "").strip()
    if task not in LABEL_TASKS:
        raise LabelLineError(f"unknown task {task!r}; known: {', '.join(LABEL_TASKS)}")
    target = str(rec.get("target_id") or "").strip()
    ttype = str(rec.get("target_type") or ("query_product" if task == "relevance" else "query")).strip()
    if ttype != ("query_product" if task == "relevance" else "query"):
        raise LabelLineError(f"task {task!r} needs target_type {'query_product' if task == 'relevance' else 'query'}, got {ttype!r}")
    qid, _, pid = target.partition("::") if task == "relevance" else (target, "", "")
    if qid not in ctx.texts:
        raise LabelLineError(f"unknown query id {qid!r}")
    if task == "relevance" and (not pid or (ctx.products is not None and pid not in ctx.products)):
        raise LabelLineError(f"unknown product id {pid!r} in target {target!r} (expected query_id::product_id)")
    text = ctx.texts[qid]
    if rec.get("text") not in (None, "") and rec["text"] != text:
        raise LabelLineError(f"text {rec['text']!r} differs from the stored query text {text!r}")
    value = str(rec.get("value") or "").strip()
    spans: list[dict[str, Any]] = []
    if task in ("intent", "relevance"):
        try:
            value = ctx.taxonomy.check(task, value)
        except TaxonomyError as exc:
            raise LabelLineError(str(exc)) from exc
    if task == "entity":
        spans, value = check_spans(rec.get("spans") or [], text, ctx.taxonomy), ""
    elif rec.get("spans") not in (None, "", [], "[]"):
        raise LabelLineError(f"spans are only allowed on entity labels, not {task!r}")
    try:
        conf = float(rec.get("confidence") if rec.get("confidence") not in (None, "") else 1.0)
    except (TypeError, ValueError) as exc:
        raise LabelLineError(f"confidence {rec.get('confidence')!r} is not a number") from exc
    if not 0.0 <= conf <= 1.0:
        raise LabelLineError(f"confidence {conf} outside [0, 1]")
    source = str(rec.get("source") or "human").strip()
    if source not in LABEL_SOURCES:
        raise LabelLineError(f"unknown source {source!r}; known: {', '.join(LABEL_SOURCES)}")
    annotator = str(rec.get("annotator") or "").strip() or ctx.default_annotator
    if source in WEAK:  # an exported weak label: untouched -> nothing to do, edited -> a person's label
        stored = ctx.stored.get((target, task, source))
        if stored is None:
            raise LabelLineError(f"no stored {source} {task} label of {target!r} to compare with, so whether it was "
                                 "reviewed is unknown; set source to human to import it as a person's label")
        if (stored["value"], _spankey(stored["spans"])) == (value, _spankey(spans)):
            return None
        if annotator == stored["annotator"]:
            annotator = ctx.default_annotator
    annotator = annotator_name(annotator, ctx.taxonomy, ctx.pseudonym_key, ctx.known_annotators | {ctx.default_annotator})
    return dict(label_id=label_id(target, task, "human", annotator), target_type=ttype, target_id=target,
                task=task, value=value, spans=spans, source="human", confidence=conf, annotator=annotator,
                created_at=_time(rec.get("created_at"), ctx.now))


def _spankey(spans: Any) -> frozenset:
    return frozenset((int(s["start"]), int(s["end"]), s["type"]) for s in spans or [])


def _annotator_of(ann: dict[str, Any], default: str) -> str:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("username") or who.get("id")
    if isinstance(who, int):
        return f"labelstudio:{who}"
    return str(who).strip() if who not in (None, "") else default


def label_studio_records(task: dict[str, Any], ctx: ImportContext) -> list[tuple[int, list[dict]] | tuple[int, str]]:
    """Per non-cancelled annotation of one Label Studio task: (index, common records) or (index, error)."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        return [(0, "task has no 'data' object")]
    qid, pid = str(data.get("query_id") or ""), str(data.get("product_id") or "")
    out: list[Any] = []
    predicted_spans = any(isinstance(i, dict) and i.get("type") == "labels" for p in task.get("predictions") or []
                          if isinstance(p, dict) for i in p.get("result") or [])
    for k, ann in enumerate(task.get("annotations") or [], start=1):
        if not isinstance(ann, dict) or ann.get("was_cancelled"):
            continue
        base = dict(target_id=f"{qid}::{pid}" if pid else qid, text=data.get("text"),
                    annotator=_annotator_of(ann, ctx.default_annotator), created_at=ann.get("updated_at") or ann.get("created_at"),
                    confidence=ann.get("confidence", 1.0))
        choices: dict[str, str] = {}
        spans: list[dict[str, Any]] = []
        try:
            for item in ann.get("result") or []:
                val = item.get("value") or {}
                if item.get("type") == "choices":
                    chosen = val.get("choices") or []
                    if len(chosen) != 1:
                        raise LabelLineError(f"{item.get('from_name')}: expected one choice, got {chosen!r}")
                    choices[str(item.get("from_name") or "")] = chosen[0]
                elif item.get("type") == "labels":
                    kinds = val.get("labels") or []
                    if len(kinds) != 1:
                        raise LabelLineError(f"span {val!r}: expected one label")
                    spans.append({"start": val.get("start"), "end": val.get("end"), "type": kinds[0], "text": val.get("text")})
        except (LabelLineError, AttributeError) as exc:
            out.append((k, str(exc) if isinstance(exc, LabelLineError) else f"malformed result item: {exc}"))
            continue
        marked = ann.get("label_tasks")  # written by our export: exactly which labels this annotation holds
        marked = set(marked) if isinstance(marked, list) else None
        first = next(iter(choices.values()), "")
        if pid:
            recs = [dict(base, task="relevance", target_type="query_product", value=choices.get(RELEVANCE, first))]
        else:
            recs = [dict(base, task="intent", value=choices.get(INTENT, first))] if choices and (marked is None or "intent" in marked) else []
            # no spans means "no entities" when the annotator was shown predicted spans and removed them
            if (spans or predicted_spans) if marked is None else "entity" in marked:
                recs.append(dict(base, task="entity", spans=spans))
        out.append((k, recs if recs else "annotation holds no intent choice and no entity spans"))
    return out


def load_records(path: str) -> tuple[str, list[tuple[int, Any]]]:
    """("label_studio" | "common", [(line number, parsed record or error string)]); `path` is a
    local file or a URI (s3://)."""
    import io

    from ray_app.object_store import is_uri, read_text

    if not is_uri(path) and not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    text = read_text(path)
    suffix = Path(str(path).rsplit("/", 1)[-1]).suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        return "common", [(reader.line_num, row) for row in reader]
    if suffix == ".json":
        data = json.loads(text)
        data = data if isinstance(data, list) else [data]
        kind = "label_studio" if any(isinstance(t, dict) and "data" in t for t in data) else "common"
        return kind, [(i, t) for i, t in enumerate(data, start=1)]
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append((i, json.loads(line)))
            except ValueError as exc:
                out.append((i, f"invalid JSON: {exc}"))
    return "common", out


def import_records(path: str, ctx: ImportContext) -> ImportOutcome:
    """Validate every record of a file; the outcome holds the rows to write and the rejects."""
    kind, records = load_records(path)
    out = ImportOutcome()
    rows: dict[str, dict] = {}
    for line, rec in records:
        groups = label_studio_records(rec, ctx) if kind == "label_studio" else [(0, [rec] if not isinstance(rec, str) else rec)]
        for k, recs in groups:
            where = {"line": line} | ({"annotation": k} if kind == "label_studio" and k else {})
            out.read += 1
            try:
                if isinstance(recs, str):
                    raise LabelLineError(recs)
                made = [validate_record(r, ctx) for r in recs]
            except LabelLineError as exc:
                out.rejected.append(where | {"reason": str(exc)})
                continue
            out.imported += 1
            out.unchanged += all(m is None for m in made)
            rows.update({m["label_id"]: m for m in made if m is not None})
    out.rows = list(rows.values())
    return out


def _iso(ts: Any) -> Optional[str]:
    return ts.isoformat() if isinstance(ts, datetime) else ts


def export_rows(labels: list[dict[str, Any]], resolved: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Resolved labels plus every human label (several annotators each keep theirs), in a stable order."""
    seen = {r["label_id"] for r in resolved}
    rows = list(resolved) + [r for r in labels if r["source"] == "human" and r["label_id"] not in seen]
    order = {t: i for i, t in enumerate(LABEL_TASKS)}
    return sorted(rows, key=lambda r: (r["target_id"], order[r["task"]], r["source"] != "human", r["annotator"]))


def common_record(row: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    return {"target_type": row["target_type"], "target_id": row["target_id"], "task": row["task"],
            "value": row["value"], "spans": [{k: s[k] for k in ("start", "end", "type", "text")} for s in row["spans"] or []],
            "annotator": row["annotator"], "confidence": row["confidence"], "source": row["source"],
            "created_at": _iso(row["created_at"]), "text": texts.get(row["target_id"].split("::", 1)[0], "")}


def _result(row: dict[str, Any]) -> list[dict[str, Any]]:
    tid = row["target_id"]
    if row["task"] == "entity":
        return [{"id": f"{tid}-e{i}", "from_name": ENTITIES, "to_name": TEXT, "type": "labels",
                 "value": {"start": s["start"], "end": s["end"], "text": s["text"], "labels": [s["type"]]}}
                for i, s in enumerate(row["spans"] or [])]
    # the intent and relevance controls of studio_config are named after their task
    return [{"id": f"{tid}-{row['task']}", "from_name": row["task"], "to_name": TEXT, "type": "choices",
             "value": {"choices": [row["value"]]}}]


def label_studio_tasks(labels: list[dict[str, Any]], weak_resolved: list[dict[str, Any]], texts: dict[str, str],
                       titles: Optional[dict[str, str]] = None) -> list[dict[str, Any]]:
    """One task per query (intent + entities) and per labelled pair (relevance): weak labels as the
    prediction, each human annotator's labels as one annotation."""
    by_target: dict[str, dict[str, list[dict]]] = {q: {"weak": [], "human": []} for q in sorted(texts)}
    for row in weak_resolved:
        by_target.setdefault(row["target_id"], {"weak": [], "human": []})["weak"].append(row)
    for row in labels:
        if row["source"] == "human":
            by_target.setdefault(row["target_id"], {"weak": [], "human": []})["human"].append(row)
    tasks = []
    for target in sorted(by_target):
        qid, _, pid = target.partition("::")
        if qid not in texts:
            continue
        # every key the labelling XML reads is in every task, or Label Studio refuses the import
        data = {"query_id": qid, TEXT: texts[qid], PRODUCT: (titles or {}).get(pid, "") if pid else ""} | (
            {"product_id": pid} if pid else {})
        task: dict[str, Any] = {"data": data, "predictions": [], "annotations": []}
        weak = sorted(by_target[target]["weak"], key=lambda r: r["task"])
        if weak:
            task["predictions"].append({"model_version": "+".join(f"{r['source']}:{r['annotator']}" for r in weak),
                                        "score": round(sum(r["confidence"] for r in weak) / len(weak), 4),
                                        "result": [item for r in weak for item in _result(r)]})
        per_person: dict[str, list[dict]] = {}
        for row in by_target[target]["human"]:
            per_person.setdefault(row["annotator"], []).append(row)
        for who, rows in sorted(per_person.items()):
            rows.sort(key=lambda r: r["task"], reverse=True)  # intent before entity
            task["annotations"].append({"completed_by": who, "created_at": _iso(max(r["created_at"] for r in rows)),
                                        "confidence": rows[0]["confidence"], "was_cancelled": False,
                                        "label_tasks": sorted({r["task"] for r in rows}),
                                        "result": [item for r in rows for item in _result(r)]})
        tasks.append(task)
    return tasks


def write_export(path: str, labels: list[dict[str, Any]], resolved: list[dict[str, Any]],
                 weak_resolved: list[dict[str, Any]], texts: dict[str, str],
                 titles: Optional[dict[str, str]] = None) -> int:
    """Write `path` (.json Label Studio tasks, .jsonl or .csv common lines); returns records written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = p.suffix.lower()
    if suffix == ".json":
        tasks = label_studio_tasks(labels, weak_resolved, texts, titles)
        p.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
        return len(tasks)
    records = [common_record(r, texts) for r in export_rows(labels, resolved)]
    if suffix == ".csv":
        with p.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({**r, "spans": json.dumps(r["spans"], ensure_ascii=False)} for r in records)
    elif suffix in (".jsonl", ".ndjson"):
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        raise ValueError(f"export path {path!r}: use .json (Label Studio), .jsonl or .csv")
    return len(records)
