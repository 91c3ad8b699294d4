"""QueryUnderstanding: intent, confidence and entity spans of the raw query text (casing kept:
word-shape models read it), batched across requests with `@serve.batch`.

It never fails a search: without a model (`understanding_model: none`) or when the model raises,
the answer is the fallback intent with `degraded` set, and retrieval goes on without entities.
"""
from __future__ import annotations

import asyncio
from typing import Any, Optional

from ray import serve

from schemas.serving import ServeAppConfig
from serve.models import ModelSlot, Watcher, batch_settings, set_torch_threads

TASK = "intent_entity"


@serve.deployment(
    name="QueryUnderstanding",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=32,
    max_queued_requests=64,
    backpressure_config={"status_code": 503, "retry_after_s": 1},  # a full queue: 503 + Retry-After
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    user_config={"max_batch_size": 16, "batch_wait_timeout_s": 0.005},
)
class QueryUnderstanding:
    def __init__(self, config: dict[str, Any]):
        self.config = ServeAppConfig(**config)
        set_torch_threads(self.config.torch_threads)
        self.slot: Optional[ModelSlot] = None
        if self.config.understanding_model.lower() != "none":
            self.slot = ModelSlot(self.config.understanding_model, TASK, self.config.models_dir)
            self.watcher = Watcher(self.config.reload_s, self.slot.refresh, "understanding-alias")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batch_settings(self._predict, user_config)
        if self.slot is not None and user_config.get("model"):
            self.slot.point_to(str(user_config["model"]))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _predict(self, texts: list[str]) -> list[dict[str, Any]]:
        version, model = self.slot.current
        preds = await asyncio.to_thread(model.predict, texts)  # the loop keeps queueing the next batch meanwhile
        return [{**p, "version": version} for p in preds]

    async def understand(self, text: str) -> dict[str, Any]:
        """Intent, raw_intent, confidence, entities and the model version for one query."""
        if self.slot is None:
            return {"intent": "", "confidence": 0.0, "entities": [], "version": "none"}  # switched off: not degraded
        try:
            return await self._predict(text)
        except Exception as exc:  # noqa: BLE001 - a search without understanding beats no search
            return {"intent": "", "confidence": 0.0, "entities": [], "version": self.slot.version,
                    "degraded": f"understanding: {type(exc).__name__}: {exc}"}

    def health(self) -> dict[str, Any]:
        if self.slot is None:
            return {"ready": True, "version": "none", "detail": "disabled"}
        return {"ready": True, "version": self.slot.version, "detail": self.slot.error}
