"""Business rules on a ranked list: exclusions, boosts, diversity, pins (in that order).

Boosts are sign-aware multiplications so they work on any ranker's scores, including negative
logits: a positive score is multiplied by the factor, a negative one divided by it, so a factor
above 1 always moves a product up and below 1 always down, and a product's new score depends only
on its own score (a score of exactly 0 stays 0). Several matching boosts multiply their factors.
After boosting the list is re-sorted by score descending, product_id ascending (deterministic);
without any boost the input order is kept, since the ranker's order is authoritative.
Diversity (max_per_brand) takes hits in order into the first `first_n` places while their brand
has fewer than N there, the passed-over ones follow in order (so they still fill the page when
nothing else is left); products without a brand are not capped. MMR re-orders the first
`first_n` by lambda * relevance (min-max of score) - (1 - lambda) * max similarity to those
already placed, similarity 0.5 for the same brand plus 0.5 for the same leaf category.
Pins come last and win over everything but exclusions and the request's filters.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from schemas.rules import (BOOST_FIELD, BoostRule, DiversityRule, ExcludeRule, PinRule, RuleSet, RulesError, When,
                           normalise_query, parse_rules)


def load_rules(path: Union[str, Path]) -> RuleSet:
    """A RuleSet from a YAML file; RulesError naming the file, the rule id and the field."""
    p = Path(path)
    if not p.is_file():
        raise RulesError(f"rules file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RulesError(f"rules file {str(p)!r} is not valid YAML: {exc}") from exc
    return parse_rules(data, f"rules file {str(p)!r}")


def _context(context: Any) -> dict:
    ctx = dict(context.model_dump() if hasattr(context, "model_dump") else context or {})
    if ctx.get("hour") is None:  # the API's documented default: the server's UTC hour
        ctx["hour"] = dt.datetime.now(dt.timezone.utc).hour
    return ctx


def holds(when: Optional[When], query: str, context: dict) -> bool:
    """Whether a rule's conditions hold for this normalised query and context (locale, device, hour)."""
    if when is None:
        return True
    if when.query_equals is not None and query not in when.query_equals:
        return False
    if when.query_contains is not None and not any(f" {v} " in f" {query} " for v in when.query_contains):
        return False
    if when.locale is not None and str(context.get("locale") or "").strip().lower() not in when.locale:
        return False
    if when.device is not None and context.get("device") not in when.device:
        return False
    if when.hours is not None:
        start, end, hour = *when.hours, int(_context(context)["hour"])
        if not (start <= hour < end if start < end else hour >= start or hour < end):
            return False
    return True


def _attributes(hit: dict) -> dict:
    raw = hit.get("attributes") or "{}"
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def matches(hit: dict, field: str, values: set[str]) -> bool:
    """Whether a hit's brand / any category level / attribute value is among `values` (lower-cased)."""
    if field == "brand":
        return str(hit.get("brand") or "").strip().lower() in values
    if field == "category":
        return any(str(c).strip().lower() in values for c in hit.get("category_path") or [])
    if field.startswith("attribute:"):
        got = _attributes(hit).get(field.split(":", 1)[1])
        return any(str(v).strip().lower() in values for v in (got if isinstance(got, list) else [got]) if v is not None)
    raise ValueError(f"boost field {field!r} is not brand, category or attribute:<name>")


def boosted(score: float, factor: float) -> float:
    """Sign-aware multiplicative boost: up for factor > 1 whatever the score's sign."""
    return score * factor if score > 0 else score / factor if score < 0 else score


def _excluded(rules: list[ExcludeRule]) -> Callable[[dict], Optional[str]]:
    ids = [(r.id, set(r.product_ids), {b.strip().lower() for b in r.brands}, r.out_of_stock) for r in rules]

    def why(hit: dict) -> Optional[str]:
        stock = hit.get("stock")
        for rid, pids, brands, oos in ids:
            if (str(hit.get("product_id")) in pids or str(hit.get("brand") or "").strip().lower() in brands
                    or (oos and stock is not None and stock <= 0)):
                return rid
        return None
    return why


def _cap_brands(hits: list[dict], cap: int, first_n: int) -> list[dict]:
    top, rest, count = [], [], {}
    for hit in hits:
        brand = str(hit.get("brand") or "").strip().lower()
        if len(top) < first_n and (not brand or count.get(brand, 0) < cap):
            top.append(hit)
            count[brand] = count.get(brand, 0) + 1
        else:
            rest.append(hit)
    return top + rest


def _similarity(a: dict, b: dict) -> float:
    brand_a, brand_b = str(a.get("brand") or "").lower(), str(b.get("brand") or "").lower()
    leaf_a, leaf_b = (str(x[-1]).lower() if x else "" for x in (a.get("category_path"), b.get("category_path")))
    return 0.5 * bool(brand_a and brand_a == brand_b) + 0.5 * bool(leaf_a and leaf_a == leaf_b)


def _mmr(hits: list[dict], lam: float, first_n: int) -> list[dict]:
    scores = [float(h["score"]) for h in hits]
    lo, span = min(scores, default=0.0), (max(scores, default=0.0) - min(scores, default=0.0)) or 1.0
    rel = [(s - lo) / span for s in scores]
    nearest = [0.0] * len(hits)  # each hit's highest similarity to those already placed
    left, chosen = list(range(len(hits))), []
    while left and len(chosen) < first_n:
        # ties go to the earlier hit: max() keeps the first of equal keys
        best = max(left, key=lambda i: lam * rel[i] - (1 - lam) * nearest[i])
        chosen.append(best)
        left.remove(best)
        for i in left:
            nearest[i] = max(nearest[i], _similarity(hits[i], hits[best]))
    return [hits[i] for i in chosen] + [hits[i] for i in left]


def _order(hits: list[dict]) -> list[str]:
    return [str(h["product_id"]) for h in hits]


def apply_rules(ruleset: RuleSet, hits: list[dict], query: str, context: Optional[dict] = None,
                boosts: Optional[dict[str, list[str]]] = None,
                lookup: Optional[Callable[[list[str]], list[dict]]] = None,
                allowed: Optional[Callable[[dict], bool]] = None) -> tuple[list[dict], list[str]]:
    """(the new list of copied hits, ids of the rules that changed something) for one request."""
    ctx, qn = _context(context), normalise_query(query)
    live = [r for r in ruleset.rules if holds(r.when, qn, ctx)]
    applied: list[str] = []
    out = [dict(h) for h in hits]  # copies: the caller's dicts are never touched

    why = _excluded([r for r in live if isinstance(r, ExcludeRule)])
    reasons = [why(h) for h in out]
    applied += [r.id for r in live if r.id in set(reasons)]
    out = [h for h, reason in zip(out, reasons) if reason is None]

    factors = [(r.id, r.field, {v.strip().lower() for v in r.values}, r.factor) for r in live if isinstance(r, BoostRule)]
    for field, values in (boosts or {}).items():
        if not BOOST_FIELD.match(field):
            raise ValueError(f"understanding boost field {field!r} is not brand, category or attribute:<name>")
        if values:
            factors.append((f"understanding:{field}", field, {v.strip().lower() for v in values}, ruleset.understanding_boost))
    fired: set[str] = set()
    for hit in out:
        score, new = float(hit["score"]), float(hit["score"])
        for rid, field, values, factor in factors:
            if matches(hit, field, values) and boosted(new, factor) != new:
                new = boosted(new, factor)
                fired.add(rid)
        hit["score"] = new if new != score else hit["score"]
    if fired:
        applied += [rid for rid, *_ in factors if rid in fired]
        out.sort(key=lambda h: (-float(h["score"]), str(h["product_id"])))

    for rule in (r for r in live if isinstance(r, DiversityRule)):
        before = _order(out)
        out = (_cap_brands(out, rule.max_per_brand, rule.first_n) if rule.max_per_brand is not None
               else _mmr(out, float(rule.mmr_lambda), rule.first_n))
        if _order(out) != before:
            applied.append(rule.id)

    out, pinned = _pin(out, [r for r in live if isinstance(r, PinRule) and qn in r.query], why, lookup, allowed)
    return out, applied + pinned


def _pin(out: list[dict], pins: list[PinRule], why: Callable[[dict], Optional[str]],
         lookup: Optional[Callable[[list[str]], list[dict]]],
         allowed: Optional[Callable[[dict], bool]]) -> tuple[list[dict], list[str]]:
    """Place pinned products at their positions (lower position first, then file order)."""
    chosen: dict[str, PinRule] = {}
    for rule in sorted(pins, key=lambda r: r.position):  # stable: file order among equal positions
        chosen.setdefault(rule.product_id, rule)
    if not chosen:
        return out, []
    present = {str(h["product_id"]): h for h in out}
    missing = [p for p in chosen if p not in present]
    fetched = {str(r.get("product_id")): dict(r) for r in (lookup(missing) if lookup and missing else [])}
    usable = {p: present.get(p) or fetched.get(p) for p in chosen}
    usable = {p: h for p, h in usable.items() if h is not None and (p in present or (
        why(h) is None and (allowed is None or allowed(h))))}
    before = _order(out)
    rest = [h for h in out if str(h["product_id"]) not in usable]
    placed, at = [], -1
    for pid, rule in chosen.items():
        if pid not in usable:
            continue
        hit = usable[pid]
        at = min(max(rule.position - 1, at + 1), len(rest))  # equal positions: the earlier rule first
        if pid not in present:  # a fetched product takes the score of the hit it displaces
            hit["score"] = float(rest[at]["score"]) if at < len(rest) else float(rest[-1]["score"]) if rest else 0.0
        rest.insert(at, hit)
        placed.append((pid, rule.id))
    after = _order(rest)
    changed = [rid for pid, rid in placed if pid not in before or before.index(pid) != after.index(pid)]
    return rest, changed
