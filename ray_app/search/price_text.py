"""Price phrases as a shopper types them ("under $50", "$20-$40", "1k and up") -> a (min, max) range.

Query understanding tags the span; this module only reads it. Bounds are inclusive (the API's
PriceRange is), so "under 50" is max 50. A phrase that names no direction ("$50", "around 50")
is not a range: guessing one would silently drop products, so it parses to None.
"""
from __future__ import annotations

import re
from typing import Optional

# one amount: optional currency sign, US digits (thousands commas, a decimal point), "k", a unit word
_AMOUNT = re.compile(
    r"[$€£]?\s*(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:\s*(k)\b)?"
    r"(?:\s*(?:dollars?|bucks|usd|eur|euros?|gbp|pounds?|[$€£]))?")
# directions; negated phrases are read first, so "no less than 20" is a lower bound despite "less than"
_NEGATED = re.compile(r"\b(?:no|not) (more|less) than\b")
_UPPER_BEFORE = re.compile(r"\b(?:under|below|beneath|less than|lower than|cheaper than"
                           r"|up ?to|max(?:imum)?|at most|within|budget(?: of)?)\b")
_LOWER_BEFORE = re.compile(r"\b(?:over|above|more than|greater than|higher than|from"
                           r"|at least|starting (?:at|from)|min(?:imum)?|upwards of)\b")
_UPPER_AFTER = re.compile(r"^\s*(?:or|and) (?:less|under|below|cheaper|lower)\b|^\s*max(?:imum)?\b")
_LOWER_AFTER = re.compile(r"^\s*\+|^\s*(?:or|and) (?:more|up|above|over|higher)\b|^\s*(?:plus|upwards|min(?:imum)?)\b")
_CONNECTOR = re.compile(r"^\s*(?:-|to|and|through|till|until)\s*$")
_DASHES = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2212": "-"})


def _value(m: re.Match) -> float:
    whole, frac, k = m.group(1), m.group(2), m.group(3)
    value = float(whole.replace(",", "") + (f".{frac}" if frac else ""))
    return value * 1000 if k else value


def _direction(pre: str, post: str) -> Optional[str]:
    negated = _NEGATED.search(pre)
    if negated:
        return "max" if negated.group(1) == "more" else "min"
    if _UPPER_BEFORE.search(pre) or _UPPER_AFTER.search(post):
        return "max"
    if _LOWER_BEFORE.search(pre) or _LOWER_AFTER.search(post):
        return "min"
    return None


def parse_price(text: str) -> Optional[tuple[Optional[float], Optional[float]]]:
    """(min, max) of a price phrase, either side None when open; None when the text states no range."""
    norm = " ".join(str(text).lower().translate(_DASHES).split())
    found = list(_AMOUNT.finditer(norm))
    if not found or len(found) > 2:
        return None
    values = [_value(m) for m in found]
    before = [norm[(found[i - 1].end() if i else 0):m.start()] for i, m in enumerate(found)]
    after = [norm[m.end():(found[i + 1].start() if i + 1 < len(found) else len(norm))] for i, m in enumerate(found)]
    if len(found) == 2 and _CONNECTOR.match(before[1]):  # "between 20 and 40", "$20-$40", "from 20 to 40"
        lo, hi = sorted(values)
        return lo, hi
    lo = hi = None
    for value, pre, post in zip(values, before, after):
        side = _direction(pre, post)
        if side is None:
            return None  # an amount with no direction: not a range
        if side == "max":
            hi = value if hi is None else min(hi, value)
        else:
            lo = value if lo is None else max(lo, value)
    if lo is not None and hi is not None and lo > hi:
        return None
    return lo, hi
