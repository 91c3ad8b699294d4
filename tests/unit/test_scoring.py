"""The ranker's product-vector cache: the same scores as encoding every product, fewer encoder runs."""
from __future__ import annotations

import pytest
import torch

from ray_app.models.encoder import tiny_bert
from ray_app.models.heads import CrossEncoderRanker
from ray_app.models.scoring import ProductVectorCache, score_pairs

DOCS = ["Nike running shoe", "Sony TV with a remote", "Adidas shoe", "Lego drill set for kids"]


@pytest.fixture(scope="module")
def ranker():
    model, tok = tiny_bert()
    torch.manual_seed(3)
    ranker = CrossEncoderRanker(model)
    with torch.no_grad():  # a non-zero cross term, so pair and alone encodings both count
        ranker.score_head.cross.weight.normal_(0, 0.5)
    return ranker.eval(), tok


def test_cached_scores_equal_uncached_across_queries_and_batches(ranker):
    model, tok = ranker
    queries = ["nike shoes", "tv", "nike shoes", "lego"]
    plain = score_pairs(model, tok, queries, DOCS, 32)
    cache = ProductVectorCache()
    first = score_pairs(model, tok, queries, DOCS, 32, cache=cache)
    again = score_pairs(model, tok, queries[::-1], DOCS[::-1], 32, batch_size=3, cache=cache)
    assert first == pytest.approx(plain, abs=1e-4)
    assert again == pytest.approx(plain[::-1], abs=1e-4)
    assert cache.stats() == {"items": 4, "hits": 4, "misses": 4, "hit_rate": 0.5}
    # the model's own score() and a repeated product inside one call
    assert model.score("tv", [DOCS[1], DOCS[1]], tok, max_length=32, cache=cache) == pytest.approx([plain[1]] * 2, abs=1e-4)
    # another max_length truncates differently: its own entries, the same scores as without a cache
    short = score_pairs(model, tok, queries, DOCS, 8, cache=cache)
    assert short == pytest.approx(score_pairs(model, tok, queries, DOCS, 8), abs=1e-4) and len(cache) == 8


def test_a_hit_skips_the_product_encoding(ranker, monkeypatch):
    model, tok = ranker
    cache, calls = ProductVectorCache(), []
    original = model.encode_alone
    monkeypatch.setattr(model, "encode_alone", lambda ids, mask: calls.append(ids.shape[0]) or original(ids, mask))
    score_pairs(model, tok, ["a"] * 3, DOCS[:3], 32, cache=cache)
    score_pairs(model, tok, ["b"] * 3, DOCS[1:], 32, cache=cache)
    # 3 new products then the query alone; then only the one product not seen yet, then the query
    assert calls == [3, 1, 1, 1]


def test_the_cache_is_bounded_least_recently_used_first():
    cache = ProductVectorCache(max_items=2)
    for text in ("a", "b"):
        cache.put((32, text), torch.zeros(2))
    assert cache.get((32, "a")) is not None  # a is now the most recent
    cache.put((32, "c"), torch.ones(2))
    assert cache.get((32, "b")) is None and cache.get((32, "a")) is not None and len(cache) == 2
    with pytest.raises(ValueError, match="at least 1"):
        ProductVectorCache(max_items=0)


def test_other_poolings_and_training_mode_ignore_the_cache(ranker):
    model, tok = ranker
    mean = CrossEncoderRanker(tiny_bert()[0], pooling="mean").eval()
    cache = ProductVectorCache()
    assert len(score_pairs(mean, tok, ["q"] * 2, DOCS[:2], 32, cache=cache)) == 2 and len(cache) == 0
    model.train()
    score_pairs(model, tok, ["q"], DOCS[:1], 32)
    assert model.training  # restored after scoring
    model.eval()
