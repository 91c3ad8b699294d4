"""The HTTP front door (FastAPI through `@serve.ingress`): validates requests against the
contracts in `schemas/api.py`, calls the stages through `DeploymentHandle`s — passing one stage's
`DeploymentResponse` straight into the next — and returns typed responses. It does no model work.

Business rules run here, after ranking, so they hold even when the ranker is degraded (an
out-of-stock exclusion must never be skipped because a model was slow). A failing or overloaded
ranker gives the first stage's order, flagged in `degraded`; a failing understanding stage gives
a search without entities, flagged too. A full queue answers 503 with `Retry-After`.
"""

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from fastapi.responses import FileResponse, JSONResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from ray_app.privacy import pseudonymise, pseudonymise_session, resolve_key
from schemas.api import (MAX_EVENTS_BODY_BYTES, MAX_ID_CHARS, MAX_PREFIX_CHARS, MAX_RECOMMENDATIONS, MAX_SUGGESTIONS,
                         MAX_USER_ID_CHARS, CartRequest, ErrorResponse, EventBatch, EventIn, EventsResponse, HealthResponse,
                         RecommendResponse, SearchRequest, SearchResponse, SuggestResponse, UnderstandRequest,
                         UnderstandResponse)
from schemas.records import ANONYMOUS_USER_PREFIX
from schemas.rules import Device
from schemas.serving import ServeAppConfig
from serve.errors import install_error_handlers, json_error, request_id
from serve.metrics import AppMetrics
from serve.ranking import assign_arm, final_hits

STATIC = Path(__file__).resolve().parent / "static"
api = FastAPI(title="shop search", version="1", description="Search, understanding and suggestions for an online shop "
              "(Ray Serve graph: understand -> retrieve -> rank -> rules).",
              responses={422: {"model": ErrorResponse}, 415: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
install_error_handlers(api)
# POST /v1/events reads its body by hand (API key, then the size limit, then the contract), so its
# schema is declared here and its models added to the OpenAPI components below
EVENTS_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventBatch"}}}}}
_default_openapi = api.openapi


def _openapi() -> dict[str, Any]:
    if api.openapi_schema is None:
        spec = _default_openapi()
        batch = EventBatch.model_json_schema(ref_template="#/components/schemas/{model}")
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        components.update(batch.pop("$defs", {}))
        components["EventBatch"] = batch
    return api.openapi_schema


api.openapi = _openapi
_metrics: list = []  # one AppMetrics per ingress process, made on the first request (never at import)


def app_metrics() -> AppMetrics:
    if not _metrics:
        _metrics.append(AppMetrics())
    return _metrics[0]


@api.middleware("http")
async def count_requests(request: Request, call_next):
    """Every answer counted by endpoint and status, errors included."""
    response = await call_next(request)
    route = getattr(request.scope.get("route"), "path", "unmatched")  # the template: bounded tag values
    app_metrics().count(route, response.status_code)
    return response


def _public_understanding(u: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    if not u:
        return None
    return {k: u.get(k) for k in ("intent", "raw_intent", "confidence", "entities", "version") if u.get(k) is not None}
# (defined above the class: @serve.ingress serialises the class when it is decorated)


@serve.deployment(
    name="SearchIngress",
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=64,
    max_queued_requests=128,
    backpressure_config={"status_code": 503, "retry_after_s": 1},  # a full queue: 503 + Retry-After
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
)
@serve.ingress(api)
class SearchIngress:
    def __init__(self, config: dict[str, Any], understanding: DeploymentHandle, retriever: DeploymentHandle,
                 ranker: Optional[DeploymentHandle], suggest: Optional[DeploymentHandle],
                 recommender: Optional[DeploymentHandle] = None, events: Optional[DeploymentHandle] = None):
        from ray_app.search.rules import load_rules
        from serve.auth import load_keys

        self.config = ServeAppConfig(**config)
        self.understanding, self.retriever, self.ranker, self.suggester = understanding, retriever, ranker, suggest
        self.recommender, self.events = recommender, events
        self.rules = load_rules(self.config.rules) if self.config.rules else None
        self.key, _ = resolve_key()
        self.api_keys = load_keys(self.config.api_keys_file) if events is not None else []
        self.metrics = app_metrics()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        from ray_app.search.rules import load_rules

        if user_config.get("rules"):
            self.rules = load_rules(str(user_config["rules"]))

    def _arm(self, req: SearchRequest) -> str:
        exp = self.config.experiment
        if not exp:
            return "production" if self.ranker is not None and self.config.ranker_model.lower() != "none" else ""
        unit = req.user_id if exp.unit == "user" else req.session_id
        unit = unit or req.session_id or req.query  # anonymous and session-less: by query, still stable
        return assign_arm(pseudonymise(unit, self.key), exp)  # the same unit feedback events will carry

    @api.post("/v1/search", response_model=SearchResponse, response_model_exclude_none=True)
    async def search(self, req: SearchRequest, request: Request) -> Any:
        started = time.perf_counter()
        rid = request_id(request)
        timings: dict[str, float] = {}
        degraded: list[str] = []
        understood = self.understanding.understand.remote(req.query)
        affinity_resp = None
        if req.user_id and self.suggester is not None and self.config.personal_weight > 0:
            affinity_resp = self.suggester.affinity.remote(pseudonymise(req.user_id, self.key))
        body = req.model_dump(mode="json", exclude={"user_id", "session_id"})
        first_resp = self.retriever.retrieve.remote(body, understood)
        understanding: Optional[dict[str, Any]] = None
        try:
            first = await first_resp
        except BackPressureError:
            raise
        except Exception as exc:  # noqa: BLE001 - understanding failed: search without it
            degraded.append(f"understanding: {type(exc).__name__}")
            first_resp = self.retriever.retrieve.remote(body, None)
            first = await first_resp
        else:  # the Retriever had the understanding: it is resolved, awaiting it again costs nothing
            understanding = await self._understanding(understood, degraded)
        timings["retrieve"] = round((time.perf_counter() - started) * 1000, 2)
        arm = self._arm(req)
        ranked = None
        if self.ranker is not None and first["candidates"]:
            t0 = time.perf_counter()
            try:
                deadline = time.time() + self.config.ranker_timeout_s  # the Ranker drops work nobody waits for
                ranked = await asyncio.wait_for(self.ranker.rank.remote(req.query, first_resp, arm, deadline),
                                                self.config.ranker_timeout_s)
            except Exception as exc:  # noqa: BLE001 - overloaded, slow or failed ranker: first-stage order, flagged
                degraded.append(f"ranker: {type(exc).__name__}")
                self.metrics.degraded("ranker")
            timings["rank"] = round((time.perf_counter() - t0) * 1000, 2)
        affinity = None
        if affinity_resp is not None:
            try:
                affinity = await asyncio.wait_for(affinity_resp, self.config.understanding_timeout_s)
            except Exception as exc:  # noqa: BLE001 - no affinity: the unpersonalised order, flagged
                degraded.append(f"personalisation: {type(exc).__name__}")
        final = await final_hits(req, first, ranked, self.rules, self.retriever.lookup.remote, affinity,
                                 self.config.personal_weight, self.config.personal_price_share)
        versions = {"understanding": (understanding or {}).get("version", ""), "retriever": first.get("version", ""),
                    "catalogue": str(first.get("catalogue_version", ""))}
        if ranked:
            versions["ranker"] = ranked["version"]
        if self.rules is not None:
            versions["rules"] = self.rules.version
        if final.pop("personalised"):
            versions["personalisation"] = (f"affinity w={self.config.personal_weight:g} "
                                           f"price={self.config.personal_price_share:g}")
        degraded += first.get("degraded", []) + ([understanding["degraded"]] if (understanding or {}).get("degraded") else [])
        timings["total"] = round((time.perf_counter() - started) * 1000, 2)
        self.metrics.search(timings, zero=final["total"] == 0)
        return SearchResponse(request_id=rid, query=req.query, page=req.page, size=req.size, **final,
                              understanding=_public_understanding(understanding), filters_applied=first.get("filters_applied", {}),
                              versions=versions, arm=ranked["arm"] if ranked else arm,
                              degraded=degraded, timings_ms=timings,
                              served_by={"retriever": first.get("replica", ""), "ranker": (ranked or {}).get("replica", "")}
                              if req.explain else None)

    async def _understanding(self, understood, degraded: list[str]) -> Optional[dict[str, Any]]:
        try:
            return await asyncio.wait_for(understood, self.config.understanding_timeout_s)
        except Exception as exc:  # noqa: BLE001
            degraded.append(f"understanding: {type(exc).__name__}")
            return None

    @api.post("/v1/understand", response_model=UnderstandResponse)
    async def understand(self, req: UnderstandRequest, request: Request) -> Any:
        rid = request_id(request)
        out = await self.understanding.understand.remote(req.query)
        if out.get("version") == "none":
            return json_error(404, "understanding is off (understanding_model: none)", [("query", "no model")], rid)
        if out.get("degraded"):
            return json_error(503, "understanding unavailable", [("query", out["degraded"])], rid, retry_after=1)
        return UnderstandResponse(request_id=rid, **_public_understanding(out))

    @api.get("/v1/suggest", response_model=SuggestResponse)
    async def suggest(self, request: Request, q: str = Query(..., min_length=1, max_length=MAX_PREFIX_CHARS),
                      user_id: Optional[str] = Query(None, max_length=128),
                      size: int = Query(10, ge=1, le=MAX_SUGGESTIONS)) -> Any:
        rid = request_id(request)
        if self.suggester is None:
            return json_error(404, "suggestions are off (suggest: false)", [("q", "no Suggest deployment")], rid)
        if not q.strip():
            return json_error(422, "validation failed", [("q", "prefix is empty")], rid)
        uid = pseudonymise(user_id, self.key) if user_id else None
        out = await self.suggester.suggest.remote(q, uid, size)
        return SuggestResponse(request_id=rid, prefix=q, suggestions=out["suggestions"], version=out["version"])

    # ---- recommendations -------------------------------------------------------------------

    def _shopper(self, user_id: Optional[str], session_id: Optional[str]) -> tuple[Optional[str], Optional[str]]:
        """(user, session) pseudonyms as the events table holds them; a shopper without an account
        is the anonymous user of their session, as jobs.ingest and POST /v1/events store them."""
        sid = pseudonymise_session(session_id, self.key) if session_id else None
        if user_id:
            return pseudonymise(user_id, self.key), sid
        return (ANONYMOUS_USER_PREFIX + sid if sid else None), sid

    async def _recommend(self, rid: str, call, size: int, locale: Optional[str], device: Optional[str]) -> Any:
        if self.recommender is None:
            return json_error(404, "recommendations are off (recommend: false)", [("path", "no Recommender deployment")], rid)
        out = await call
        if out.get("error"):
            return json_error(404, out["error"], [("product_id", "unknown product")], rid)
        items, applied = out["items"], []
        if self.rules is not None:
            from ray_app.search.rules import apply_rules

            items, applied = apply_rules(self.rules, items, "", {"locale": locale or out.get("locale"), "device": device})
        versions = dict(out["versions"], **({"rules": self.rules.version} if self.rules is not None else {}))
        self.metrics.count_recommendation(out["strategy"])
        return RecommendResponse(request_id=rid, strategy=out["strategy"], cold_start=out["cold_start"], items=items[:size],
                                 versions=versions, rules_applied=applied, locale=out.get("locale") or locale or "",
                                 unknown_products=out.get("unknown", []))

    def _depth(self, size: int) -> int:
        return min(size * self.config.recs_candidates, 1000)

    @api.get("/v1/recommend/home", response_model=RecommendResponse, response_model_exclude_none=True)
    async def recommend_home(self, request: Request, user_id: Optional[str] = Query(None, max_length=MAX_USER_ID_CHARS),
                             session_id: Optional[str] = Query(None, max_length=MAX_USER_ID_CHARS),
                             locale: Optional[str] = Query(None, max_length=16),
                             device: Optional[Device] = Query(None),
                             size: int = Query(10, ge=1, le=MAX_RECOMMENDATIONS)) -> Any:
        """The shopper's home-page list: precomputed by jobs.recommend, merged with their latest
        events; popular in the locale for a shopper we know nothing about (cold start)."""
        rid = request_id(request)
        uid, sid = self._shopper(user_id, session_id)
        call = self.recommender.home.remote(uid, sid, locale, self._depth(size)) if self.recommender is not None else None
        return await self._recommend(rid, call, size, locale, device)

    @api.get("/v1/recommend/similar", response_model=RecommendResponse, response_model_exclude_none=True)
    async def recommend_similar(self, request: Request, product_id: str = Query(..., min_length=1, max_length=MAX_ID_CHARS),
                                locale: Optional[str] = Query(None, max_length=16), device: Optional[Device] = Query(None),
                                size: int = Query(10, ge=1, le=MAX_RECOMMENDATIONS)) -> Any:
        """Products like this one: bought together with it, and near it by text vector (so a
        product nobody bought yet has neighbours too)."""
        rid = request_id(request)
        call = self.recommender.similar.remote(product_id, self._depth(size)) if self.recommender is not None else None
        return await self._recommend(rid, call, size, locale, device)

    @api.post("/v1/recommend/cart", response_model=RecommendResponse, response_model_exclude_none=True)
    async def recommend_cart(self, req: CartRequest, request: Request) -> Any:
        """Complements for a basket: what is bought with its items, and the model's read of the basket."""
        rid = request_id(request)
        uid, sid = self._shopper(req.user_id, req.session_id)
        call = (self.recommender.cart.remote(req.product_ids, uid, sid, req.locale, self._depth(req.size))
                if self.recommender is not None else None)
        return await self._recommend(rid, call, req.size, req.locale, req.device)

    # ---- feedback ---------------------------------------------------------------------------

    @api.post("/v1/events", response_model=EventsResponse, openapi_extra=EVENTS_BODY,
              responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 413: {"model": ErrorResponse}})
    async def post_events(self, request: Request) -> Any:
        """A batch of impressions, clicks, add-to-carts, purchases and returns (behind an API key).
        Answered only once every event is committed; a retry with the same event ids stores nothing twice."""
        from serve.auth import HEADER, check

        rid = request_id(request)
        if self.events is None:
            return json_error(404, "feedback events are off (events: false)", [("path", "no EventWriter deployment")], rid)
        refused = check(request.headers.get(HEADER), self.api_keys)
        if refused:
            return json_error(refused[0], refused[1], [(HEADER, refused[1])], rid)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_EVENTS_BODY_BYTES:
            return json_error(413, "payload too large", [("body", f"{int(declared):,} bytes; at most {MAX_EVENTS_BODY_BYTES:,}")], rid)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_EVENTS_BODY_BYTES:
                return json_error(413, "payload too large", [("body", f"more than {MAX_EVENTS_BODY_BYTES:,} bytes")], rid)
        try:
            batch = EventBatch.model_validate_json(bytes(raw))
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]) from None
        rows = [self._stored_event(e) for e in batch.events]
        try:
            out = await self.events.append.remote(rows)
        except BackPressureError:
            raise
        except Exception as exc:  # noqa: BLE001 - writer died or restarting: nothing was acknowledged, a retry is safe
            return json_error(503, f"event writer unavailable ({type(exc).__name__}): nothing of this batch was "
                                   "acknowledged; retry it with the same event ids", [("events", "not stored")], rid, retry_after=1)
        self.metrics.count_events(out["accepted"], out["duplicates"])
        return EventsResponse(request_id=rid, **out)

    def _stored_event(self, e: EventIn) -> dict[str, Any]:
        """The events-table row of an event: ids pseudonymised here, at the edge."""
        uid, sid = self._shopper(e.user_id, e.session_id)
        return {"event_id": e.event_id, "event_type": e.event_type, "user_id": uid, "session_id": sid or "",
                "query_id": e.query_id or "", "product_id": e.product_id, "position": e.position, "timestamp": e.timestamp,
                "device": e.device or "", "locale": e.locale or "us", "quantity": e.quantity, "value": e.value,
                "ref_event_id": e.ref_event_id, "request_id": e.request_id, "arm": e.arm,
                "model_versions": json.dumps(e.model_versions, sort_keys=True) if e.model_versions else None}

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz(self) -> Any:
        stages = {"QueryUnderstanding": self.understanding, "Retriever": self.retriever, "Ranker": self.ranker,
                  "Suggest": self.suggester, "Recommender": self.recommender, "EventWriter": self.events}
        out: dict[str, dict] = {}
        for name, handle in stages.items():
            if handle is None:
                continue
            try:
                out[name] = await asyncio.wait_for(handle.health.remote(), 5.0)
            except Exception as exc:  # noqa: BLE001
                out[name] = {"ready": False, "detail": f"{type(exc).__name__}: {exc}"}
        ok = all(d.get("ready") for d in out.values())
        return JSONResponse(HealthResponse(ok=ok, deployments=out).model_dump(), status_code=200 if ok else 503)

    @api.get("/", include_in_schema=False)
    async def page(self) -> Any:
        return FileResponse(STATIC / "index.html", media_type="text/html")


__all__ = ["SearchIngress", "api"]
