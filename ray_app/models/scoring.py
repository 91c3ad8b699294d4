"""Cross-encoder scoring at inference, with each product's encoding-alone kept between requests.

The residual ranker (heads.CrossEncoderRanker, pooling "residual") runs its encoder three times
per request: on every (query, product) pair, on every product alone and on the query alone. The
product-alone vector depends only on the product text and the model's weights, and at serving
time the same products come back in request after request (the head of a popular query, a
category's best sellers), so a loaded model keeps those vectors in a bounded LRU cache: a hit
saves close to half of the model's FLOPs for that pair (benchmarks/serve.py). Training never uses
the cache (weights change under it); only a registry LoadedModel, whose weights are fixed, has one.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch

DEFAULT_CACHE_ITEMS = 20_000  # 384 floats each for MiniLM: about 30 MB


class ProductVectorCache:
    """(max_length, product text) -> its mean-pooled encoding alone, least recently used evicted past `max_items`."""

    def __init__(self, max_items: int = DEFAULT_CACHE_ITEMS):
        if max_items < 1:
            raise ValueError(f"a product vector cache holds at least 1 item, got {max_items}")
        self.max_items = max_items
        self._items: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[int, str]) -> Optional[torch.Tensor]:
        vector = self._items.get(key)
        if vector is not None:
            self._items.move_to_end(key)
        return vector

    def put(self, key: tuple[int, str], vector: torch.Tensor) -> None:
        self._items[key] = vector
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def stats(self) -> dict[str, float]:
        seen = self.hits + self.misses
        return {"items": len(self), "hits": self.hits, "misses": self.misses,
                "hit_rate": round(self.hits / seen, 4) if seen else 0.0}


def _product_vectors(model, tokenizer, docs: list[str], max_length: int, cache: ProductVectorCache) -> torch.Tensor:
    """One row per doc: cached vectors, the misses encoded alone in one padded batch and cached
    (keyed by max_length too: a text truncated at another length is another encoding)."""
    keys = [(max_length, d) for d in docs]
    missing = [k for k in dict.fromkeys(keys) if cache.get(k) is None]
    new = set(missing)
    cache.misses += sum(1 for k in keys if k in new)
    cache.hits += sum(1 for k in keys if k not in new)
    if missing:
        texts = [text for _, text in missing]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        device = next(model.parameters()).device
        fresh = model.encode_alone(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        for key, vector in zip(missing, fresh):
            cache.put(key, vector.detach())
    return torch.stack([cache.get(k) for k in keys])


def quantised_int8(loaded):
    """A copy of a registry LoadedModel with int8 dynamic quantisation on its Linear layers (CPU
    inference: weights in int8, activations quantised per batch), with its own product cache."""
    import copy
    from dataclasses import replace

    model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(loaded.model), {torch.nn.Linear}, dtype=torch.qint8)
    cache = ProductVectorCache(loaded.product_cache.max_items) if loaded.product_cache is not None else None
    return replace(loaded, model=model, product_cache=cache)


@torch.no_grad()
def score_pairs(model, tokenizer, queries: Sequence[str], docs: Sequence[str], max_length: int,
                batch_size: int = 64, cache: Optional[ProductVectorCache] = None) -> list[float]:
    """Scores of (query, product text) pairs, any number of distinct queries, one forward pass per
    `batch_size` pairs; with `cache` (residual pooling only) products already seen are not re-encoded."""
    from ray_app.models.heads import ranker_inputs

    queries, docs = [str(q) for q in queries], [str(d) for d in docs]
    use_cache = cache is not None and getattr(model, "pooling", None) == "residual"
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    try:
        for start in range(0, len(docs), batch_size):
            q, d = queries[start:start + batch_size], docs[start:start + batch_size]
            enc = ranker_inputs(tokenizer, q, d, max_length, model.pooling, docs_alone=not use_cache)
            inputs = {k: v.to(device) for k, v in enc.items()}
            if use_cache:
                inputs["d_vectors"] = _product_vectors(model, tokenizer, d, max_length, cache)
            scores += model(**inputs)["scores"].float().cpu().tolist()
    finally:
        model.train(was_training)
    return scores
