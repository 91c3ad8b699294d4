"""Field parsers of the cleaner: one raw value -> one typed, normalised value, or `Reject`.

Pure functions shared by every table's cleaner (ray_app.ingest.clean): text (NFKC, HTML, size
limit), numbers ("$1,299.50"), timestamps (ISO or epoch), lists ("A > B > C"), attribute objects
and splits (given, forced, or by a hash of the query id).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from ray_app.ingest.judged import hash_split
from ray_app.text import normalize_text, strip_html
from schemas.grades import ESCI, GradeScale
from schemas.records import SPLITS
from schemas.taxonomy import Taxonomy

class Reject(ValueError):
    """A record that cannot become a row: `field` and a human-readable reason."""

    def __init__(self, field_name: str, reason: str, record: Optional[dict] = None):
        super().__init__(f"{field_name}: {reason}" if field_name else reason)
        self.field = field_name
        self.reason = reason
        self.record = record  # what an adapter derived for its table, kept in quarantine when the raw row is another table's


@dataclass
class CleanContext:
    table: str
    pseudonym_key: str
    max_field_chars: int = 100_000
    split: Optional[str] = None
    dataset: str = ""
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(tzinfo=None))
    grades: GradeScale = field(default_factory=lambda: ESCI)  # the scale judgments are graded on
    split_seed: Optional[int] = None  # set: queries and judgments get a split by hash of the query id
    test_fraction: float = 0.0
    validation_fraction: float = 0.0
    taxonomy: Optional[Taxonomy] = None  # the store's label taxonomy; None: a dataset's own vocabulary (SNIPS)
    event_type: Optional[str] = None  # events: the type of rows that name none (a purchases or ratings log)


# A number as shops write it: an optional currency symbol or ISO code before or after, thousands
# separators, and a decimal point or (European) decimal comma: "$1,299.50", "€129,00", "1.299,50 EUR".
_NUMBER = re.compile(r"^\s*(?P<pre>[$€£¥]|[A-Za-z]{3}\s)?\s*(?P<num>[-+]?(?:\d[\d,.\u00a0\u202f']*\d|\d)|[-+]?[.,]\d+)"
                     r"\s*(?P<post>[$€£¥]|[A-Za-z]{3})?\s*$")
_SPACE_GROUP = re.compile(r"(?<=\d) (?=\d{3}(?!\d))")
CURRENCY_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}


def parse_number(text: str) -> Optional[tuple[float, str]]:
    """(value, currency code or "") of a number as shops write it; None when it is not one.

    With both marks, the last one is the decimal mark ("1.299,50", "1,299.50"); a mark that repeats
    separates thousands ("1.234.567"); a lone point is a decimal point ("4.125"), a lone comma a
    decimal comma unless three digits follow it ("129,00" but "$1,299")."""
    match = _NUMBER.match(_SPACE_GROUP.sub("", text))  # "1 299,50": a space between thousands
    if not match:
        return None
    num = re.sub(r"[\u00a0\u202f']", "", match.group("num"))
    seps = [i for i, c in enumerate(num) if c in ",."]
    if seps:
        last, mark = seps[-1], num[seps[-1]]
        if len({num[i] for i in seps}) == 2:
            decimal = True
        elif num.count(mark) > 1:
            decimal = False
        else:
            decimal = mark == "." or len(num) - last - 1 != 3
        int_part, frac = (num[:last], num[last + 1:]) if decimal else (num, "")
        if any(len(g) != 3 for g in re.split(r"[,.]", int_part.lstrip("+-"))[1:]):
            return None  # separators not three digits apart: "12,34,5" is not a number a shop writes
        num = re.sub(r"[,.]", "", int_part) + ("." + frac if frac else "")
    code = (match.group("pre") or match.group("post") or "").strip()
    return float(num), CURRENCY_SYMBOLS.get(code, code.upper())


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def text_field(data: dict, name: str, ctx: CleanContext, required: bool = False, html: bool = False) -> str:
    value = data.get(name)
    if _missing(value):
        if required and name not in data:
            raise Reject(name, f"required column is absent; the row has {', '.join(sorted(map(str, data)))[:300] or 'no columns'}"
                               f" (rename one with --map SRC={name})")
        if required:
            raise Reject(name, "required value is missing")
        return ""
    if not isinstance(value, (str, int, float)):
        raise Reject(name, f"expected text, got {type(value).__name__}")
    text = str(value)
    if len(text) > ctx.max_field_chars:
        raise Reject(name, f"value is {len(text):,} characters, over the limit of {ctx.max_field_chars:,}")
    if html:
        text = strip_html(text)
    text = normalize_text(text)
    if required and not text:
        raise Reject(name, "required value is empty after normalisation")
    return text


def number_field(data: dict, name: str, lo: Optional[float] = None, hi: Optional[float] = None,
                 integer: bool = False) -> Optional[float]:
    value = data.get(name)
    if _missing(value):
        return None
    if isinstance(value, bool):
        raise Reject(name, f"expected a number, got boolean {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        parsed = parse_number(str(value))
        if parsed is None:
            raise Reject(name, f"expected a number, got {str(value)[:60]!r}")
        number = parsed[0]
    if math.isnan(number) or math.isinf(number):
        raise Reject(name, f"expected a finite number, got {value!r}")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise Reject(name, f"{number:g} is outside the allowed range [{lo}, {hi}]")
    if integer:
        if number != int(number):
            raise Reject(name, f"expected a whole number, got {value!r}")
        return int(number)
    return number


def timestamp_field(data: dict, name: str, ctx: CleanContext, required: bool = False) -> Optional[datetime]:
    value = data.get(name)
    if _missing(value):
        if required:
            raise Reject(name, "required timestamp is missing")
        return None
    try:
        if isinstance(value, datetime):
            ts = value
        elif isinstance(value, (int, float)) or re.fullmatch(r"\d{9,13}(\.\d+)?", str(value).strip()):
            seconds = float(value)
            ts = datetime.fromtimestamp(seconds / 1000 if seconds > 1e11 else seconds, tz=timezone.utc)
        else:
            ts = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise Reject(name, f"not a timestamp: {str(value)[:60]!r} (use ISO 8601 or epoch seconds/ms)")
    if ts.tzinfo is not None:
        ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
    return ts


def list_field(data: dict, name: str) -> list[str]:
    value = data.get(name)
    if _missing(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise Reject(name, f"looks like a JSON list but does not parse: {text[:60]!r}")
        else:
            value = re.split(r"\s*(?:>|\||/)\s*", text)
    if not isinstance(value, (list, tuple)):
        raise Reject(name, f"expected a list or 'A > B > C', got {type(value).__name__}")
    return [normalize_text(str(v)) for v in value if not _missing(v)]


def attributes_field(data: dict, name: str = "attributes") -> str:
    value = data.get(name)
    if _missing(value):
        return "{}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise Reject(name, f"expected a JSON object, got {value[:60]!r}")
    if not isinstance(value, dict):
        raise Reject(name, f"expected an object of name -> value, got {type(value).__name__}")
    clean = {normalize_text(str(k)): (normalize_text(v) if isinstance(v, str) else v) for k, v in value.items() if not _missing(v)}
    return json.dumps(clean, ensure_ascii=False, sort_keys=True, default=str)


def split_field(data: dict, ctx: CleanContext, query_id: str = "") -> str:
    """The row's split: forced (--split), else by hash of its query id (--test-fraction), else its column."""
    if ctx.split is None and ctx.split_seed is not None:
        return hash_split(query_id, ctx.split_seed, ctx.test_fraction, ctx.validation_fraction)
    split = ctx.split if ctx.split is not None else str(data.get("split") or "").strip().lower()
    split = {"val": "validation", "valid": "validation", "dev": "validation", "validate": "validation"}.get(split, split)
    if split not in SPLITS:
        raise Reject("split", f"{split!r} is not one of train, validation, test")
    return split
