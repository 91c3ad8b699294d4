"""The last steps of a search, pure and shared by the ingress and the single-process baseline:
A/B arm assignment by a stable hash, the final order (the ranker's, or the first stage's when the
ranker is degraded), business rules, the page, and `explain`."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Optional

from schemas.api import SearchFilters, SearchRequest
from schemas.serving import Experiment

FACET_VALUES = 20
HIT_FIELDS = ("product_id", "title", "brand", "category_path", "price", "currency", "stock", "image_url")


def stable_bucket(unit: str, salt: str) -> float:
    """A number in [0, 1) fixed by (salt, unit): the same user lands in the same arm on every replica."""
    digest = hashlib.sha256(f"{salt}\x1f{unit}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def assign_arm(unit: str, experiment: Experiment) -> str:
    """The arm of `unit` (a pseudonymised user or session id): arms take consecutive slices of [0, 1)."""
    bucket, edge = stable_bucket(unit, experiment.name), 0.0
    names = list(experiment.arms)
    for name in names:
        edge += experiment.arms[name].share
        if bucket < edge:
            return name
    return names[-1]


def context_of(req: SearchRequest) -> dict[str, Any]:
    """Rule conditions' context: the request's, with the server's UTC hour when it gives none."""
    ctx = req.context.model_dump(exclude_none=True) if req.context else {}
    ctx.setdefault("hour", datetime.now(timezone.utc).hour)
    return ctx


def ordered_hits(first: dict[str, Any], ranked: Optional[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidates in the final order with their final score; the ranker's stage attached when it ran."""
    by_id = {c["product_id"]: c for c in first["candidates"]}
    if not ranked:
        return [dict(c) for c in first["candidates"]]
    hits = []
    for pid, score in ranked["order"]:
        hit = dict(by_id[pid], score=score)
        if pid in ranked["ranker"]:
            hit["stages"] = {**hit.get("stages", {}), "ranker": ranked["ranker"][pid]}
        hits.append(hit)
    return hits


async def apply_business_rules(rules, hits: list[dict[str, Any]], req: SearchRequest, first: dict[str, Any],
                               lookup: Callable[[list[str]], Awaitable[list[dict[str, Any]]]]) -> tuple[list[dict], list[str]]:
    """Rules (and the understanding's boosts) over the final order; pinned products the first stage
    missed are fetched with `lookup` and must pass the request's effective filters."""
    from ray_app.search.filters import row_matches
    from ray_app.search.rules import apply_rules
    from schemas.rules import RuleSet, normalise_query

    boosts = first.get("boosts") or {}
    if rules is None and not boosts:
        return hits, []
    ruleset = rules if rules is not None else RuleSet(version="none")
    present = {h["product_id"] for h in hits}
    asked = normalise_query(req.query)  # pins of this query only (their `when` is checked by apply_rules)
    wanted = sorted({r.product_id for r in ruleset.rules if r.kind == "pin" and asked in r.query} - present)
    fetched = {r["product_id"]: r for r in (await lookup(wanted) if wanted else [])}
    effective = SearchFilters(**(first.get("filters_applied", {}).get("filters") or {}))
    return apply_rules(ruleset, hits, req.query, context_of(req), boosts=boosts,
                       lookup=lambda ids: [fetched[p] for p in ids if p in fetched],
                       allowed=lambda row: row_matches(effective, row))


def page_of(req: SearchRequest, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requested page as SearchHit dicts (with per-stage ranks and scores when `explain`)."""
    start = (req.page - 1) * req.size
    out = []
    for rank, hit in enumerate(hits[start:start + req.size], start=start + 1):
        row = {k: hit[k] for k in HIT_FIELDS if hit.get(k) is not None}
        row["score"] = round(float(hit["score"]), 6)
        if req.explain:
            row["explain"] = {**hit.get("stages", {}), "final": {"rank": rank, "score": row["score"]}}
        out.append(row)
    return out


def facets_of(hits: list[dict[str, Any]], top: int = FACET_VALUES) -> dict[str, dict[str, int]]:
    """Counts of brands and category leaves among all hits (not only the page), most frequent first."""
    out: dict[str, dict[str, int]] = {}
    for name, value_of in (("brand", lambda h: h.get("brand") or ""),
                           ("category", lambda h: (h.get("category_path") or [""])[-1])):
        counts: dict[str, int] = {}
        for h in hits:
            if v := value_of(h):
                counts[v] = counts.get(v, 0) + 1
        out[name] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top])
    return out


async def final_hits(req: SearchRequest, first: dict[str, Any], ranked: Optional[dict[str, Any]], rules,
                     lookup: Callable[[list[str]], Awaitable[list[dict[str, Any]]]],
                     affinity: Optional[dict] = None, personal_weight: float = 0.0,
                     price_share: float = 0.5) -> dict[str, Any]:
    """The page's hits, how many passed, their facets, the rules applied and whether the order was
    personalised (the user's affinity blended in before the rules), for one request."""
    from ray_app.search.personal import personalise

    hits, personal = personalise(ordered_hits(first, ranked), affinity, personal_weight, price_share)
    hits, applied = await apply_business_rules(rules, hits, req, first, lookup)
    return {"results": page_of(req, hits), "total": len(hits), "facets": facets_of(hits), "rules_applied": applied,
            "personalised": personal}
