"""Adapters for public formats: ESCI (official release and the esci150 layout), SNIPS, and a
shop's own judgments file (which names its queries too).

Each adapter turns the dataset's files into `Source`s: a target table, the files, and a
record transform into the platform's column names. The records then go through the same
cleaning, quarantine and upsert path as any shop's own files.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import pyarrow.fs as pafs

from ray_app.ingest.clean import Reject
from ray_app.ingest.judged import judgment_queries, label_queries, text_label
from ray_app.text import normalize_with_offsets, remap_span

ESCI_OFFICIAL_PRODUCTS = "shopping_queries_dataset_products.parquet"
ESCI_OFFICIAL_EXAMPLES = "shopping_queries_dataset_examples.parquet"


@dataclass
class Source:
    table: str
    paths: list[str]
    transform: Optional[Callable] = None
    mapping: dict[str, str] = field(default_factory=dict)
    derived: bool = False  # filled from another table's file: unreadable rows are that table's to quarantine


def list_files(path: str) -> list[str]:
    """Files under a local folder or object-store prefix (a single file lists itself)."""
    if "://" not in path:
        p = Path(path)
        if p.is_file():
            return [str(p)]
        if not p.is_dir():
            raise FileNotFoundError(f"{path}: no such file or folder")
        return sorted(str(f) for f in p.rglob("*") if f.is_file())
    fs, root = pafs.FileSystem.from_uri(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [path]
    scheme = path.split("://", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sorted(f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File)


def _esci_locale_id(product_id: str, locale: str) -> str:
    # ASINs repeat across the es/jp/us catalogues; only "us" keeps the bare ASIN.
    return product_id if locale in ("", "us") else f"{product_id}-{locale}"


def esci_product(rec: dict, source: str) -> list[dict]:
    locale = str(rec.get("product_locale") or "us").lower()
    attributes = {k: rec.get(s) for k, s in (("colour", "product_color"), ("bullet_points", "product_bullet_point"))
                  if rec.get(s)}
    return [{
        "product_id": _esci_locale_id(str(rec.get("product_id") or ""), locale),
        "title": rec.get("product_title"), "description": rec.get("product_description"),
        "brand": rec.get("product_brand"), "category_path": rec.get("category") or [],
        "attributes": attributes, "price": rec.get("price"), "rating": rec.get("rating"),
        "rating_count": rec.get("rating_count"), "image_url": rec.get("image_url"), "locale": locale,
    }]


def esci_query(rec: dict, source: str) -> list[dict]:
    return [{"query_id": f"esci-{rec.get('query_id')}", "text": rec.get("query"), "split": rec.get("split") or "",
             "locale": rec.get("product_locale") or "us", "dataset": "esci"}]


def esci_judgment(rec: dict, source: str, splits: Optional[dict[str, str]] = None) -> list[dict]:
    qid = f"esci-{rec.get('query_id')}"
    locale = str(rec.get("product_locale") or "us").lower()
    split = rec.get("split") or (splits or {}).get(qid, "")
    return [{"query_id": qid, "product_id": _esci_locale_id(str(rec.get("product_id") or ""), locale),
             "grade": rec.get("esci_label"), "split": split}]


def _read_small(path: str) -> bytes:
    if "://" not in path:
        return Path(path).read_bytes()
    fs, p = pafs.FileSystem.from_uri(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def esci_sources(path: str) -> list[Source]:
    files = list_files(path)
    by_name = {Path(f.split("://")[-1]).name: f for f in files}
    if ESCI_OFFICIAL_PRODUCTS in by_name or ESCI_OFFICIAL_EXAMPLES in by_name:
        out = []
        if ESCI_OFFICIAL_PRODUCTS in by_name:
            out.append(Source("products", [by_name[ESCI_OFFICIAL_PRODUCTS]], esci_product))
        if ESCI_OFFICIAL_EXAMPLES in by_name:
            out.append(Source("queries", [by_name[ESCI_OFFICIAL_EXAMPLES]], esci_query))
            out.append(Source("judgments", [by_name[ESCI_OFFICIAL_EXAMPLES]], esci_judgment))
        return out
    products = [f for n, f in by_name.items() if n.startswith("products.") or n.startswith("products_")]
    queries = by_name.get("queries.csv")
    judgments = by_name.get("judgments.csv")
    if not (products or queries or judgments):
        raise FileNotFoundError(f"{path}: no ESCI files found (expected {ESCI_OFFICIAL_PRODUCTS} + {ESCI_OFFICIAL_EXAMPLES}, "
                                "or products.jsonl[.gz], queries.csv, judgments.csv)")
    out = []
    if products:
        out.append(Source("products", products, esci_product))
    splits: dict[str, str] = {}
    if queries:
        out.append(Source("queries", [queries], esci_query))
        text = _read_small(queries).decode("utf-8", errors="replace")
        splits = {f"esci-{r['query_id']}": r.get("split", "") for r in csv.DictReader(io.StringIO(text))}
    if judgments:
        out.append(Source("judgments", [judgments], partial(esci_judgment, splits=splits)))
    return out


def judgment_sources(files: list[str], mapping: dict[str, str]) -> list[Source]:
    """A shop's judgments file feeds two tables: the queries its rows name, then the judgments."""
    # judgment_queries applies the user's renames itself and emits canonical names; the identity
    # mapping keeps the ingest from applying those renames a second time to its output.
    return [Source("queries", files, partial(judgment_queries, mapping=dict(mapping)), {"text": "text"}, derived=True),
            Source("judgments", files, None, dict(mapping))]


def label_sources(files: list[str], mapping: dict[str, str]) -> list[Source]:
    """A shop's labels file keyed by query text (`query,intent`) feeds the queries it names, then the labels."""
    return [Source("queries", files, partial(label_queries, mapping=dict(mapping)), {"text": "text"}, derived=True),
            Source("labels", files, partial(text_label, mapping=dict(mapping)), {"text": "text"})]


def _snips_split(source: str) -> str:
    name = Path(source.split("://")[-1]).name
    return "test" if name.startswith("validate_") else "train"


def snips_utterances(doc: dict, source: str) -> list[tuple[str, str, str, list[dict]]]:
    """(query_id, intent, normalised text, spans) for every utterance of one SNIPS file."""
    split = _snips_split(source)
    out = []
    for intent, utterances in doc.items():
        if not isinstance(utterances, list):
            raise Reject("", f"SNIPS file: intent {intent!r} should map to a list of utterances")
        for i, utt in enumerate(utterances):
            chunks = utt.get("data") if isinstance(utt, dict) else None
            if not isinstance(chunks, list):
                raise Reject("data", f"utterance {i} of {intent} has no 'data' list of chunks")
            text, raw_spans = "", []
            for ch in chunks:
                piece = str(ch.get("text", ""))
                if ch.get("entity"):
                    lead = len(piece) - len(piece.lstrip())
                    trail = len(piece.rstrip())
                    if trail > lead:
                        raw_spans.append((len(text) + lead, len(text) + trail, str(ch["entity"])))
                text += piece
            norm, pos = normalize_with_offsets(text)
            spans = []
            for s, e, t in raw_spans:
                a, b = remap_span(pos, s, e)
                spans.append({"start": a, "end": b, "type": t, "text": norm[a:b]})
            out.append((f"snips-{split}-{intent}-{i:05d}", intent, norm, spans))
    return out


def snips_query(doc: dict, source: str) -> list[dict]:
    split = _snips_split(source)
    return [{"query_id": qid, "text": text, "split": split, "dataset": "snips", "locale": "en"}
            for qid, _, text, _ in snips_utterances(doc, source)]


def snips_label(doc: dict, source: str) -> list[dict]:
    out = []
    for qid, intent, text, spans in snips_utterances(doc, source):
        base = {"target_type": "query", "target_id": qid, "source": "human", "annotator": "snips", "text": text}
        out.append({**base, "task": "intent", "value": intent})
        out.append({**base, "task": "entity", "spans": spans})
    return out


def snips_sources(path: str) -> list[Source]:
    files = [f for f in list_files(path) if re.search(r"(train_.*_full|validate_.*)\.json$", f)]
    if not files:
        raise FileNotFoundError(f"{path}: no SNIPS files (*/train_*_full.json, */validate_*.json) found")
    return [Source("queries", files, snips_query), Source("labels", files, snips_label)]
