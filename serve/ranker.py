"""Ranker: the cross-encoder re-scores the first stage's top `rerank_depth`, batched over the
(query, product) pairs of several requests (`@serve.batch`), and its order is fused with the first
stage's by RRF exactly as `jobs.evaluate` scores it (`rerank+rrf`), or replaces it
(`rerank_fusion_k: null`, the plain `rerank` system).

Every arm of an A/B experiment is held by every replica (each a full encoder with its LoRA merged,
about 100-150 MB of RSS for MiniLM), so a batch mixes arms and each arm runs one forward pass over
its pairs. Measured against Serve's model multiplexing (benchmarks/serve_multiplex.py): the same
throughput on one replica, and one arm per replica reloads models under load; multiplexing pays
only once the arms no longer fit in one replica. A shadow model scores the same pairs after the
answer has gone out; its agreement with the served order (overlap of the top 10) is logged and
kept per replica. With no arm (`ranker_model: none`) the first stage's order is served and the
shadow model is compared against it.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from typing import Any, Optional

from ray import serve

from ray_app.models.scoring import quantised_int8
from ray_app.registry import Registry
from ray_app.search.pipeline import ranked_result, rerank_order
from ray_app.search.rerank import score_pairs
from schemas.serving import ServeAppConfig
from serve.models import ModelSlot, Watcher, batch_settings, set_torch_threads

logger = logging.getLogger("ray.serve")
TASK = "ranker"


def arms_of(config: ServeAppConfig) -> dict[str, str]:
    """{arm name: model spec}: the experiment's arms, else one arm `production` (the ranker_model),
    else none (`ranker_model: none` with a shadow model: the first stage's order is served)."""
    if config.experiment:
        return {name: arm.model for name, arm in config.experiment.arms.items()}
    return {} if config.ranker_model.lower() == "none" else {"production": config.ranker_model}


@serve.deployment(
    name="Ranker",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=16,
    max_queued_requests=32,
    backpressure_config={"status_code": 503, "retry_after_s": 1},  # a full queue: 503 + Retry-After
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4},
    # On CPU one request's 20 pairs already keep the cores busy, so a bigger batch only adds waiting
    # (benchmarks/serve.py); raise max_batch_size on a GPU, where batches of pairs pay.
    user_config={"max_batch_size": 2, "batch_wait_timeout_s": 0.005},
)
class Ranker:
    def __init__(self, config: dict[str, Any]):
        self.config = ServeAppConfig(**config)
        set_torch_threads(self.config.torch_threads)
        self.suffix = "+int8" if self.config.ranker_quantize == "int8" else ""
        self.slots = {arm: self._slot(spec) for arm, spec in arms_of(self.config).items()}
        self.shadow = self._slot(self.config.shadow_model) if self.config.shadow_model else None
        self.shadow_agreement: list[float] = []
        self.watcher = Watcher(self.config.reload_s, self.refresh, "ranker-alias")
        self.replica = serve.get_replica_context().replica_id.unique_id

    def _slot(self, spec: str) -> ModelSlot:
        """An arm's model by alias; quantised to int8 on load when the config says so."""
        registry = Registry(self.config.models_dir)

        def load(name: str):
            loaded = registry.load_model(name, task=TASK)
            return quantised_int8(loaded) if self.suffix else loaded

        return ModelSlot(spec, TASK, self.config.models_dir, load=load, optional_alias=True)

    def refresh(self) -> None:
        for slot in list(self.slots.values()) + ([self.shadow] if self.shadow else []):
            slot.refresh()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batch_settings(self._score, user_config)
        for arm, spec in (user_config.get("arms") or {}).items():
            if arm in self.slots:
                self.slots[arm].point_to(str(spec))

    @serve.batch(max_batch_size=2, batch_wait_timeout_s=0.005)
    async def _score(self, jobs: list[tuple[str, str, list[str], float]]) -> list[tuple[str, Optional[list[float]]]]:
        """Per request (arm, query, product texts, deadline) -> (version, scores); one forward per arm.
        A request whose deadline has passed (the ingress answered without it) is not scored."""
        by_arm: dict[str, list[int]] = defaultdict(list)
        out: list[Any] = [None] * len(jobs)
        now = time.time()
        for i, (arm, _, _, deadline) in enumerate(jobs):
            if deadline and now > deadline:
                out[i] = (self.slots[arm].version + self.suffix, None)
            else:
                by_arm[arm].append(i)
        for arm, members in by_arm.items():
            version, model = self.slots[arm].current
            queries = [jobs[i][1] for i in members for _ in jobs[i][2]]
            docs = [d for i in members for d in jobs[i][2]]
            flat = await asyncio.to_thread(score_pairs, model, queries, docs)
            at = 0
            for i in members:
                n = len(jobs[i][2])
                out[i] = (version + self.suffix, flat[at:at + n])
                at += n
        return out

    async def rank(self, query: str, first: dict[str, Any], arm: str = "production",
                   deadline: float = 0.0) -> dict[str, Any]:
        """The first stage's candidates re-ranked: (product_id, score) in the final order, the ranker
        stage. `deadline` (epoch seconds, 0 = none): past it the request is dropped unscored."""
        head = first["candidates"][:self.config.rerank_depth]
        if arm not in self.slots and self.slots:
            arm = next(iter(self.slots))
        if arm not in self.slots or self.slots[arm].current[1] is None:
            # no ranker (shadow only), or its alias names no version yet: the first stage's order
            order = [(c["product_id"], c["score"]) for c in first["candidates"]]
            self._maybe_shadow(query, head, order)
            return {"order": order, "ranker": {}, "version": "none", "arm": arm, "replica": self.replica}
        version, scores = await self._score((arm, query, [c["text"] for c in head], deadline))
        if scores is None:
            raise TimeoutError("the ranking deadline passed before the request was scored")
        out = ranked_result(first, self.config.rerank_depth, scores, self.config.rerank_fusion_k, version, arm)
        self._maybe_shadow(query, head, out["order"])
        return {**out, "replica": self.replica}

    def _maybe_shadow(self, query: str, head: list[dict], served: list[tuple[str, float]]) -> None:
        """Score this request with the shadow model after answering, for `shadow_share` of requests."""
        if (self.shadow is not None and self.shadow.current[1] is not None and head
                and random.random() < self.config.shadow_share):
            asyncio.get_running_loop().create_task(self._shadow(query, head, served))

    async def _shadow(self, query: str, head: list[dict], served: list[tuple[str, float]]) -> None:
        try:
            _, model = self.shadow.current
            scores = await asyncio.to_thread(score_pairs, model, [query] * len(head), [c["text"] for c in head])
            ids = [c["product_id"] for c in head]
            theirs = rerank_order(ids, scores, [], self.config.rerank_fusion_k)
            top = min(10, len(ids))
            agreement = len({p for p, _ in served[:top]} & {p for p, _ in theirs[:top]}) / max(top, 1)
            self.shadow_agreement = (self.shadow_agreement + [agreement])[-1000:]
            logger.info("shadow %s top-%d agreement %.2f", self.shadow.version, top, agreement)
        except Exception:  # noqa: BLE001 - the shadow never affects serving
            logger.exception("shadow scoring failed")

    def health(self) -> dict[str, Any]:
        versions = {arm: slot.version + (self.suffix if slot.current[1] is not None else "")
                    for arm, slot in self.slots.items()}
        caches = {arm: getattr(slot.current[1], "product_cache", None) for arm, slot in self.slots.items()}
        detail = {"arms": versions, "product_cache": {a: c.stats() for a, c in caches.items() if c is not None}}
        if self.shadow is not None:
            agree = self.shadow_agreement
            detail["shadow"] = {"version": self.shadow.version, "requests": len(agree),
                                "mean_top10_agreement": round(sum(agree) / len(agree), 4) if agree else None}
        errors = "; ".join(s.error for s in self.slots.values() if s.error)
        return {"ready": True, "version": ",".join(f"{a}={v}" for a, v in versions.items()) or "none (shadow only)",
                "detail": str(detail) + errors}
