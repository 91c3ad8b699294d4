"""The single-process baseline of benchmarks/serve.py: one FastAPI/uvicorn process running the
same library code as the Serve graph (understand -> first_stage -> score_pairs -> ranked_result ->
rules and page), with the same models loaded once, answering the same JSON shape.

Model work runs on a `--workers` thread pool (default 1: requests are served one after another,
torch using `--torch-threads` intra-op threads, no batching across requests), so the event loop
keeps accepting connections meanwhile.

  python -m benchmarks.single_process --workspace /tmp/mainrun --port 8301 --torch-threads 2 [--ranker-model none]
"""
from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from schemas.api import SearchRequest, SearchResponse, SuggestResponse
from schemas.serving import ServeAppConfig

RULES = Path(__file__).resolve().parents[1] / "serve" / "rules.yaml"


class SingleProcessSearch:
    """Every stage of a search in this process: the models, catalogue, rules and suggestions, loaded once."""

    def __init__(self, config: ServeAppConfig, torch_threads: int, workers: int = 1):
        from datetime import timedelta

        import lancedb
        import torch

        from ray_app.index import load_text_encoder
        from ray_app.registry import Registry
        from ray_app.search.pipeline import LiveCatalogue
        from ray_app.search.rules import load_rules
        from schemas.fusion import FusionSpec

        torch.set_num_threads(torch_threads)
        self.config, self.torch_threads, self.workers = config, torch_threads, workers
        registry = Registry(config.models_dir)
        self.encoder = load_text_encoder(config.encoder, config.models_dir)
        self.spec, self.fusion_version = FusionSpec(), "rrf (default)"
        if config.fusion:
            self.spec, version = registry.load_fusion(config.fusion)
            self.fusion_version = version.name
        self.understander = (registry.load_model(config.understanding_model, task="intent_entity")
                             if config.understanding_model.lower() != "none" else None)
        self.ranker = registry.load_model(config.ranker_model, task="ranker") if config.ranker_model.lower() != "none" else None
        if self.ranker is not None and config.ranker_quantize == "int8":  # as the Ranker deployment serves it
            from ray_app.models.scoring import quantised_int8

            self.ranker = quantised_int8(self.ranker)
        db = lancedb.connect(config.db, read_consistency_interval=timedelta(seconds=config.refresh_s))
        self.cat = LiveCatalogue(db.open_table("products"), self.encoder, config)
        self.rules = load_rules(config.rules) if config.rules else None
        self.suggester = None
        if config.suggest:
            from ray_app.search.suggest import SuggestIndex
            from ray_app.store import Store

            self.suggester = SuggestIndex.from_store(Store(config.db))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="search")

    def _models(self, body: dict[str, Any], started: float) -> tuple[Optional[dict], dict, Optional[dict], dict]:
        """The model stages of one request, as the Serve graph runs them (in the same order)."""
        from ray_app.search.pipeline import first_stage, ranked_result, round_vectors
        from ray_app.search.rerank import score_pairs

        timings: dict[str, float] = {"queue": round((time.perf_counter() - started) * 1000, 2)}
        query = body["query"]
        understanding = None
        t0 = time.perf_counter()
        if self.understander is not None:
            understanding = {**self.understander.predict([query])[0], "version": self.understander.version.name}
        timings["understand"] = round((time.perf_counter() - t0) * 1000, 2)
        vector = round_vectors(self.encoder.encode([query]))[0]
        first = first_stage(self.cat, self.spec, self.config, body, understanding, vector)
        first["version"] = f"{self.encoder.key}+{self.fusion_version}"
        timings["retrieve"] = round((time.perf_counter() - started) * 1000, 2)  # from the request's start, as Serve's
        ranked = None
        if self.ranker is not None and first["candidates"]:
            t0 = time.perf_counter()
            head = first["candidates"][:self.config.rerank_depth]
            scores = score_pairs(self.ranker, [query] * len(head), [c["text"] for c in head])
            ranked = ranked_result(first, self.config.rerank_depth, scores, self.config.rerank_fusion_k,
                                   self.ranker.version.name, "production")
            timings["rank"] = round((time.perf_counter() - t0) * 1000, 2)
        return understanding, first, ranked, timings

    async def search(self, req: SearchRequest) -> SearchResponse:
        """One search: the model stages on the pool, then rules and the page (serve/ranking.py) on the loop."""
        from serve.ingress import _public_understanding
        from serve.ranking import apply_business_rules, ordered_hits, page_of

        started = time.perf_counter()
        body = req.model_dump(mode="json", exclude={"user_id", "session_id"})
        understanding, first, ranked, timings = await asyncio.get_running_loop().run_in_executor(
            self.pool, self._models, body, started)

        async def lookup(ids: list[str]) -> list[dict[str, Any]]:
            return self.cat.lookup(ids)

        hits, applied = await apply_business_rules(self.rules, ordered_hits(first, ranked), req, first, lookup)
        versions = {"understanding": (understanding or {}).get("version", ""), "retriever": first["version"],
                    "catalogue": str(first.get("catalogue_version", ""))}
        if ranked:
            versions["ranker"] = ranked["version"]
        if self.rules is not None:
            versions["rules"] = self.rules.version
        timings["total"] = round((time.perf_counter() - started) * 1000, 2)
        return SearchResponse(request_id=uuid.uuid4().hex, query=req.query, results=page_of(req, hits), page=req.page,
                              size=req.size, total=len(hits), understanding=_public_understanding(understanding),
                              filters_applied=first.get("filters_applied", {}), rules_applied=applied, versions=versions,
                              arm="production" if ranked else "", degraded=list(first.get("degraded", [])),
                              timings_ms=timings)


def build_api(search: SingleProcessSearch) -> FastAPI:
    """POST /v1/search, GET /v1/suggest and GET /healthz over one SingleProcessSearch."""
    api = FastAPI(title="shop search (single process baseline)")

    @api.post("/v1/search", response_model=SearchResponse, response_model_exclude_none=True)
    async def do_search(req: SearchRequest) -> Any:
        return await search.search(req)

    @api.get("/v1/suggest", response_model=SuggestResponse)
    async def suggest(q: str = Query(..., min_length=1, max_length=100), size: int = Query(10, ge=1, le=20)) -> Any:
        found = search.suggester.complete(q, None, size) if search.suggester else []
        return SuggestResponse(request_id=uuid.uuid4().hex, prefix=q, suggestions=found)

    @api.get("/healthz")
    async def healthz() -> Any:
        return JSONResponse({"ok": True, "torch_threads": search.torch_threads, "workers": search.workers,
                             "ranker": search.ranker.version.name if search.ranker else "none"})

    return api


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8301)
    parser.add_argument("--ranker-model", default="ranker@production", help="'none': the first stage's order")
    parser.add_argument("--understanding-model", default="intent_entity@production")
    parser.add_argument("--rules", default=str(RULES), help="business rules YAML ('none': no rules)")
    parser.add_argument("--rerank-depth", type=int, default=20)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="threads running the model stages")
    parser.add_argument("--ranker-quantize", default="none", choices=["none", "int8"])
    args = parser.parse_args()
    config = ServeAppConfig(workspace=args.workspace, ranker_model=args.ranker_model, ranker_quantize=args.ranker_quantize,
                            understanding_model=args.understanding_model, rerank_depth=args.rerank_depth,
                            rules=None if args.rules.lower() == "none" else args.rules)
    api = build_api(SingleProcessSearch(config, args.torch_threads, args.workers))
    uvicorn.run(api, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
