"""benchmarks/rerank_variants.py on a tiny random BERT: FLOP counting of a ranker forward, and the
int8 / ONNX Runtime variants scoring like the fp32 torch ranker."""
from __future__ import annotations

import importlib.util
from datetime import datetime, timezone

import pytest
import torch

from benchmarks.rerank_variants import OnnxScorer, build_variants, export_onnx, onnx_int8, pair_flops
from ray_app.models.encoder import tiny_bert
from ray_app.models.heads import CrossEncoderRanker
from ray_app.registry import LoadedModel
from ray_app.search.rerank import score_pairs
from schemas.training import ModelVersion

pytestmark = pytest.mark.unit
HAS_ORT = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx"))
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime and onnx (dev extras) are not installed")

QUERIES = ["red running shoes"] * 3 + ["usb c charger 65w"] * 2
DOCS = ["Nike running shoe, red, size 10", "a blue winter hat", "shoes", "Anker 65W USB-C charger, GaN, two ports",
        "a long product text about chargers and cables " * 6]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    backbone, tokenizer = tiny_bert()
    model = CrossEncoderRanker(backbone, pooling="residual").eval()
    with torch.random.fork_rng(devices=[]):  # the cross term starts at zero: weights make the joint encoding count
        torch.manual_seed(1)
        torch.nn.init.normal_(model.score_head.cross.weight, std=0.5)
    version = ModelVersion(name="ranker-v1", task="ranker", version=1, base_model="tiny-bert", lora=False, path="",
                           created_at=datetime.now(timezone.utc))
    return LoadedModel(model=model, tokenizer=tokenizer, version=version, max_length=32)


def _pass_flops(layers: int, hidden: int, inter: int, batch: int, length: int) -> int:
    per_layer = 4 * (hidden * hidden + hidden) + (hidden * inter + inter) + (inter * hidden + hidden) + 4 * hidden
    return 2 * layers * per_layer * batch * length + 4 * layers * batch * length * length * hidden


def test_pair_flops_counts_every_encoder_pass_of_the_residual_ranker(loaded):
    tok = loaded.tokenizer
    pair_len = tok(QUERIES, DOCS, padding=True, truncation="only_second", max_length=16)["input_ids"]
    doc_len = tok(DOCS, padding=True, truncation=True, max_length=16)["input_ids"]
    query_len = tok(sorted(set(QUERIES)), padding=True, truncation=True, max_length=16)["input_ids"]
    assert len(pair_len[0]) == 16 and len(doc_len[0]) == 16  # the long text is cut at max_length
    expected = sum(_pass_flops(2, 32, 64, len(ids), len(ids[0])) for ids in (pair_len, doc_len, query_len))
    got = pair_flops(loaded.model.backbone, tok, QUERIES, DOCS, 16, "residual")
    assert got == expected  # each distinct query encoded once (2 rows), each product and each pair once
    segments = pair_flops(loaded.model.backbone, tok, QUERIES, DOCS, 16, "segments")
    assert segments == _pass_flops(2, 32, 64, len(pair_len), 16)  # one joint pass only
    assert pair_flops(loaded.model.backbone, tok, QUERIES, DOCS, 12, "residual") < got


@needs_ort
def test_onnx_export_scores_like_torch_on_other_shapes(loaded, tmp_path):
    export_onnx(loaded.model, loaded.tokenizer, tmp_path / "r.onnx")
    assert not loaded.model.training  # the exporter must leave the model in eval (no dropout in later scores)
    scorer = OnnxScorer(tmp_path / "r.onnx", loaded.tokenizer, "residual", threads=1)
    for n in (32, 12):  # shapes unlike the export's sample: 5 pairs of 2 queries, other lengths
        torch_scores = score_pairs(LoadedModel(loaded.model, loaded.tokenizer, loaded.version, n), QUERIES, DOCS)
        onnx_scores = scorer.score_pairs(QUERIES, DOCS, n)
        assert max(abs(a - b) for a, b in zip(torch_scores, onnx_scores)) < 1e-3
        assert max(torch_scores) - min(torch_scores) > 0.01  # not a constant: the agreement means something
    q8 = OnnxScorer(onnx_int8(tmp_path / "r.onnx", tmp_path / "q8.onnx"), loaded.tokenizer, "residual", threads=1)
    fp32 = scorer.score_pairs(QUERIES, DOCS, 32)
    assert max(abs(a - b) for a, b in zip(fp32, q8.score_pairs(QUERIES, DOCS, 32))) < 0.5


def test_variants_time_count_and_agree(loaded, tmp_path):
    precisions = ["fp32", "int8"] + (["onnx"] if HAS_ORT else [])
    variants, missing = build_variants(loaded, precisions, [4, 2], [32, 16], tmp_path, 1, lambda msg: None)
    assert missing == {}
    assert [v.name for v in variants][:len(precisions)] == [f"{p}@4/32" for p in precisions]
    assert len(variants) == 4 * len(precisions)
    by = {v.name: v for v in variants}
    query, docs = QUERIES[0], DOCS[:4]
    for v in variants:
        scores = v.score(query, docs[:v.depth])
        assert len(scores) == v.depth and len(v.ms) == 1 and v.ms[0] > 0
        assert v.gflop[0] * 1e9 == pair_flops(loaded.model.backbone, loaded.tokenizer, [query] * v.depth,
                                              docs[:v.depth], v.max_length, "residual")
        assert v.version.name == f"ranker-v1 {v.name}"
    fp32, int8 = by["fp32@4/32"].seen, by["int8@4/32"].seen
    assert set(fp32) == set(int8)
    assert 0 < max(abs(fp32[k] - int8[k]) for k in fp32) < 0.5  # quantised (not the fp32 path), and close
