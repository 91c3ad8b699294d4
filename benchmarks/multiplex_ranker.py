"""The two ways benchmarks/serve_multiplex.py serves the A/B arms of the ranking stage, instrumented
alike: every `@serve.batch` call and every model load is logged with its time inside the replica,
and `bench_stats(since, until)` summarises those of the measured window with the replica's RSS.

- `MeasuredRanker`: the real `serve.ranker.Ranker` (every arm held by every replica, a batch mixes
  arms, one forward per arm), its code unchanged; the subclass only counts.
- `MultiplexedRanker`: Serve's model multiplexing. The model id is a registry version
  (`handle.options(multiplexed_model_id="ranker-v2")`), loaded on first use by
  `@serve.multiplexed` (LRU past `max_models` per replica); `@serve.batch` scores with
  `score_pairs`, and in Ray 2.60 Serve splits each batch by model id before calling it, so one
  call holds one model's requests.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, deque
from typing import Any, Iterable, Optional

from ray import serve

from ray_app.registry import Registry
from ray_app.search.pipeline import ranked_result
from ray_app.search.rerank import score_pairs
from schemas.serving import ServeAppConfig
from serve.models import set_torch_threads
from serve.ranker import Ranker

TASK = "ranker"
EVENTS = 200_000  # (time, requests, forwards, concurrent forwards) per batch call; a run makes far fewer


def batch_summary(events: Iterable[tuple[float, int, int, int]], loads: Iterable[tuple[float, str, float]],
                  since: float, until: float) -> dict[str, Any]:
    """Batch calls and model loads inside [since, until]: requests per call and per model forward,
    the batch-size histogram, the most forward passes that ran at once, loads and their seconds."""
    inside = [e for e in events if since <= e[0] <= until]
    calls, requests, forwards = len(inside), sum(e[1] for e in inside), sum(e[2] for e in inside)
    loads = list(loads)
    window_loads = [ld for ld in loads if since <= ld[0] <= until]
    return {"batch_calls": calls, "requests": requests, "forwards": forwards,
            "mean_requests_per_batch_call": round(requests / calls, 3) if calls else None,
            "mean_requests_per_forward": round(requests / forwards, 3) if forwards else None,
            "batch_size_histogram": {str(k): v for k, v in sorted(Counter(e[1] for e in inside).items())},
            "max_concurrent_forwards": max((e[3] for e in inside), default=0),
            "model_loads_total": len(loads), "model_loads_in_window": len(window_loads),
            "model_load_s_mean": round(sum(ld[2] for ld in loads) / len(loads), 2) if loads else None}


def _replica_facts() -> dict[str, Any]:
    import psutil

    info = psutil.Process().memory_info()
    return {"replica": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid(),
            "rss_mb": round(info.rss / 2 ** 20, 1)}


_RANKER = Ranker.func_or_class


class MeasuredRanker(_RANKER):
    """serve.ranker.Ranker with its batch calls and arm loads logged (same batching, same scoring)."""

    def __init__(self, config: dict[str, Any]):
        self.events: deque = deque(maxlen=EVENTS)
        self.loads: list[tuple[float, str, float]] = []
        super().__init__(config)

    def _slot(self, spec: str):
        t0 = time.perf_counter()
        slot = super()._slot(spec)
        self.loads.append((time.time(), spec, time.perf_counter() - t0))
        return slot

    @serve.batch(max_batch_size=2, batch_wait_timeout_s=0.005)
    async def _score(self, jobs: list[tuple[str, str, list[str], float]]) -> list[tuple[str, Optional[list[float]]]]:
        # Ranker._score runs its arms one after another: forwards = arms in the batch, one at a time
        self.events.append((time.time(), len(jobs), len({j[0] for j in jobs}), 1))
        return await _RANKER._score.__wrapped__(self, jobs)

    def bench_stats(self, since: float, until: float) -> dict[str, Any]:
        """The measured window's batches and loads, the arms held, this replica's RSS."""
        return {**_replica_facts(), "models_held": sorted(s.version for s in self.slots.values()),
                **batch_summary(self.events, self.loads, since, until)}


@serve.deployment(
    name="RankerMultiplexed",
    ray_actor_options={"num_cpus": 0.5},  # as the Ranker
    max_ongoing_requests=16,
    max_queued_requests=32,
)
class MultiplexedRanker:
    """The ranking stage with one model per multiplexed id (a registry version), Serve-routed."""

    def __init__(self, config: dict[str, Any], max_models: int, max_batch_size: int, batch_wait_timeout_s: float):
        self.config = ServeAppConfig(**config)
        set_torch_threads(self.config.torch_threads)
        self.events: deque = deque(maxlen=EVENTS)
        self.loads: list[tuple[float, str, float]] = []
        self.in_flight = 0
        registry = Registry(self.config.models_dir)

        async def load(version: str):
            # Off the event loop: a load (base encoder + LoRA merge) takes seconds
            t0 = time.perf_counter()
            model = await asyncio.to_thread(registry.load_model, version, TASK)
            self.loads.append((time.time(), version, time.perf_counter() - t0))
            return model

        # Wired at init (a plain function, as Serve's multiplex wrapper keeps its state on it) so
        # that max_num_models_per_replica is a constructor argument; Serve 2.60 detects this form.
        self.model = serve.multiplexed(max_num_models_per_replica=max_models)(load)
        self._score.set_max_batch_size(max_batch_size)
        self._score.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=2, batch_wait_timeout_s=0.005)
    async def _score(self, jobs: list[tuple[str, list[str]]]) -> list[tuple[str, list[float]]]:
        """Per request (query, product texts) -> (version, scores); all of one model id (Serve split the batch)."""
        version = serve.get_multiplexed_model_id()
        model = await self.model(version)
        self.in_flight += 1
        self.events.append((time.time(), len(jobs), 1, self.in_flight))
        try:
            queries = [q for q, docs in jobs for _ in docs]
            flat = await asyncio.to_thread(score_pairs, model, queries, [d for _, docs in jobs for d in docs])
        finally:
            self.in_flight -= 1
        out, at = [], 0
        for _, docs in jobs:
            out.append((version, flat[at:at + len(docs)]))
            at += len(docs)
        return out

    async def rank(self, query: str, first: dict[str, Any]) -> dict[str, Any]:
        """As Ranker.rank: the first stage's candidates re-ranked by the model the request's id names."""
        head = first["candidates"][:self.config.rerank_depth]
        version, scores = await self._score((query, [c["text"] for c in head]))
        out = ranked_result(first, self.config.rerank_depth, scores, self.config.rerank_fusion_k, version, version)
        return {**out, "replica": serve.get_replica_context().replica_id.unique_id}

    def bench_stats(self, since: float, until: float) -> dict[str, Any]:
        """The measured window's batches and loads, the models held now, this replica's RSS."""
        # Serve's LRU, read only: kept on the function it wraps (ray/serve/api.py _multiplex_wrapper)
        wrapper = getattr(getattr(self.model, "__wrapped__", None), "__serve_multiplex_wrapper", None)
        held = sorted(wrapper.models) if wrapper is not None else []
        return {**_replica_facts(), "models_held": held, **batch_summary(self.events, self.loads, since, until)}
