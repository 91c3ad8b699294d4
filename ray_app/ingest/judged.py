"""Queries and judgments from a shop's own files: query ids from query text, splits by hash.

Shops' judgment files rarely carry query ids: a row is (query text, product, grade). The id of
such a query is derived from its normalised text and locale (`query_key`), so the same text in a
queries file, a judgments file or a later re-run always gets the same id, and one judgments file
fills the `queries` table too (`judgment_queries`, the transform of a second Source over the same
files: `adapters.judgment_sources`).
Splits assigned by hash (`hash_split`) depend only on (seed, query id): a query always lands in
the same split, and its judgments, keyed by the same id, land with it, so nothing leaks.
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional

from ray_app.ids import stable_id
from ray_app.text import normalize_text

# Columns that hold the query text in a judgments file, in the order they are looked for.
QUERY_TEXT_COLUMNS: tuple[str, ...] = ("query_text", "query", "text", "search_term", "keywords")


def normalise_query(text: str) -> str:
    """The text a query is identified by: NFKC, whitespace collapsed, case folded."""
    return " ".join(normalize_text(str(text)).casefold().split())


def query_key(text: str, locale: str = "us") -> str:
    """Stable query id of a query text in a locale (`stable_id('query', locale, normalised text)`)."""
    return stable_id("query", normalize_text(str(locale or "")).strip().lower() or "us", normalise_query(text))


def query_text(record: dict[str, Any]) -> Optional[str]:
    """The first non-empty query-text column of a record, or None."""
    for name in QUERY_TEXT_COLUMNS:
        value = record.get(name)
        if value is not None and not (isinstance(value, float) and value != value) and str(value).strip():
            return str(value)
    return None


def hash_split(query_id: str, seed: int, test_fraction: float, validation_fraction: float) -> str:
    """test / validation / train by a uniform hash of (seed, query id) against the fractions."""
    digest = hashlib.sha256(f"split\x1f{seed}\x1f{query_id}".encode("utf-8", "surrogatepass")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def _mapped(record: dict[str, Any], mapping: Optional[dict[str, str]]) -> dict[str, Any]:
    """The record with the user's column renames applied."""
    return {(mapping or {}).get(k, k): v for k, v in record.items()}


def judgment_queries(record: dict[str, Any], source: str, mapping: Optional[dict[str, str]] = None) -> list[dict[str, Any]]:
    """The query row a judgment row names (none when the row has no query text)."""
    rec = _mapped(record, mapping)
    text = query_text(rec)
    if text is None:
        return []
    return [{"query_id": rec.get("query_id"), "text": text, "locale": rec.get("locale"),
             "split": rec.get("split"), "dataset": rec.get("dataset")}]



# Columns that may hold a label's class in a shop's own labels file keyed by query text.
LABEL_VALUE_COLUMNS: tuple[str, ...] = ("value", "intent", "label", "class")


def label_queries(record: dict[str, Any], source: str, mapping: Optional[dict[str, str]] = None) -> list[dict[str, Any]]:
    """The query row a labels row keyed by query text names (none for rows with a target_id)."""
    if str(_mapped(record, mapping).get("target_id") or "").strip():
        return []
    return judgment_queries(record, source, mapping)


def text_label(record: dict[str, Any], source: str, mapping: Optional[dict[str, str]] = None) -> list[dict[str, Any]]:
    """A labels row keyed by query text (`query,intent`) as a label of the query's derived id.

    A row that already names its target passes through unchanged; one with neither a target nor
    a query text is left for the cleaner to quarantine with the columns it lacks."""
    rec = _mapped(record, mapping)
    text = query_text(rec)
    if str(rec.get("target_id") or "").strip() or text is None:
        return [rec]
    value_col = next((c for c in LABEL_VALUE_COLUMNS if c in rec), "value")
    rest = {k: v for k, v in rec.items() if k not in QUERY_TEXT_COLUMNS and k not in LABEL_VALUE_COLUMNS}
    qid = str(rec.get("query_id") or "").strip() or query_key(text, str(rec.get("locale") or "us"))
    rest.pop("query_id", None)
    rest.pop("locale", None)
    return [{**rest, "target_id": qid, "target_type": "query", "task": rec.get("task") or "intent",
             "value": rec.get(value_col), "source": rec.get("source") or "human", "text": normalize_text(text)}]
