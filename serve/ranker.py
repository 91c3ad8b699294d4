"""Ranker: the cross-encoder re-scores the first stage's top `rerank_depth`, batched over the
(query, product) pairs of several requests (`@serve.batch`), and its order is fused with the first
stage's by RRF exactly as `jobs.evaluate` scores it (`rerank+rrf`), or replaces it
(`rerank_fusion_k: null`, the plain `rerank` system).

Every arm of an A/B experiment is held by every replica (one base encoder, a few MB of LoRA-merged
weights per arm at these sizes), so a batch mixes arms and each arm runs one forward pass over its
pairs. A shadow model scores the same pairs after the answer has gone out; its agreement with the
served order (overlap of the top 10) is logged and kept per replica.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, Optional

import numpy as np
from ray import serve

from ray_app.index import rrf
from ray_app.search.rerank import score_pairs
from schemas.serving import ServeAppConfig
from serve.models import ModelSlot, Watcher, batch_settings, set_torch_threads

logger = logging.getLogger("ray.serve")
TASK = "ranker"
SCORE_DECIMALS = 4  # pairs padded with other requests' pairs differ in the last bits; rounding keeps orders repeatable


def arms_of(config: ServeAppConfig) -> dict[str, str]:
    """{arm name: model spec}: the experiment's arms, else one arm `production` (the ranker_model)."""
    if config.experiment:
        return {name: arm.model for name, arm in config.experiment.arms.items()}
    return {"production": config.ranker_model}


def rerank_order(head: list[str], scores: list[float], tail: list[str], fusion_k: Optional[int]) -> list[tuple[str, float]]:
    """The final order: `head` re-ordered by `scores` (stable: ties keep the first-stage order), fused
    with the first stage by RRF when `fusion_k`, followed by `tail` in the first-stage order."""
    order = np.argsort(-np.round(np.asarray(scores, dtype=np.float64), SCORE_DECIMALS), kind="stable")
    reranked = [head[i] for i in order]
    if fusion_k:  # RRF of the whole first-stage list with the re-ranked head: tail items get one term, so stay below
        return [(p, float(s)) for p, s in rrf([head + tail, reranked], fusion_k)]
    by = dict(zip(head, scores))
    low = min(scores) if scores else 0.0
    return [(p, float(by[p])) for p in reranked] + [(p, low - 1.0 - i * 1e-6) for i, p in enumerate(tail)]


@serve.deployment(
    name="Ranker",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=16,
    max_queued_requests=32,
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4},
    user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
)
class Ranker:
    def __init__(self, config: dict[str, Any]):
        self.config = ServeAppConfig(**config)
        set_torch_threads(self.config.torch_threads)
        self.slots = {arm: ModelSlot(spec, TASK, self.config.models_dir) for arm, spec in arms_of(self.config).items()}
        self.shadow = ModelSlot(self.config.shadow_model, TASK, self.config.models_dir) if self.config.shadow_model else None
        self.shadow_agreement: list[float] = []
        self.watcher = Watcher(self.config.reload_s, self.refresh, "ranker-alias")
        self.replica = serve.get_replica_context().replica_id.unique_id

    def refresh(self) -> None:
        for slot in list(self.slots.values()) + ([self.shadow] if self.shadow else []):
            slot.refresh()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batch_settings(self._score, user_config)
        for arm, spec in (user_config.get("arms") or {}).items():
            if arm in self.slots:
                self.slots[arm].point_to(str(spec))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _score(self, jobs: list[tuple[str, str, list[str]]]) -> list[tuple[str, list[float]]]:
        """Per request (arm, query, product texts) -> (version, scores); one forward per arm."""
        by_arm: dict[str, list[int]] = defaultdict(list)
        for i, (arm, _, _) in enumerate(jobs):
            by_arm[arm].append(i)
        out: list[Any] = [None] * len(jobs)
        for arm, members in by_arm.items():
            version, model = self.slots[arm].current
            queries = [jobs[i][1] for i in members for _ in jobs[i][2]]
            docs = [d for i in members for d in jobs[i][2]]
            flat = await asyncio.to_thread(score_pairs, model, queries, docs)
            at = 0
            for i in members:
                n = len(jobs[i][2])
                out[i] = (version, flat[at:at + n])
                at += n
        return out

    async def rank(self, query: str, first: dict[str, Any], arm: str = "production") -> dict[str, Any]:
        """The first stage's candidates re-ranked: (product_id, score, ranker stage) in the final order."""
        if arm not in self.slots:
            arm = next(iter(self.slots))
        candidates = first["candidates"]
        depth = self.config.rerank_depth
        head, tail = candidates[:depth], candidates[depth:]
        version, scores = await self._score((arm, query, [c["text"] for c in head]))
        ids = [c["product_id"] for c in head]
        order = rerank_order(ids, scores, [c["product_id"] for c in tail], self.config.rerank_fusion_k)
        if self.shadow is not None and head:
            asyncio.get_running_loop().create_task(self._shadow(query, head, order))
        ranker_stage = {p: {"rank": i + 1, "score": round(float(s), 6)}
                        for i, (p, s) in enumerate(sorted(zip(ids, scores), key=lambda x: -round(x[1], SCORE_DECIMALS)))}
        return {"order": [(p, round(s, 6)) for p, s in order], "ranker": ranker_stage, "version": version, "arm": arm,
                "replica": self.replica}

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
        versions = {arm: slot.version for arm, slot in self.slots.items()}
        detail = {"arms": versions}
        if self.shadow is not None:
            agree = self.shadow_agreement
            detail["shadow"] = {"version": self.shadow.version, "requests": len(agree),
                                "mean_top10_agreement": round(sum(agree) / len(agree), 4) if agree else None}
        errors = "; ".join(s.error for s in self.slots.values() if s.error)
        return {"ready": True, "version": ",".join(f"{a}={v}" for a, v in versions.items()), "detail": str(detail) + errors}
