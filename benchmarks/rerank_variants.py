"""The cross-encoder's serving variants for benchmarks/rerank_cost.py: the registry model in fp32
torch, int8 dynamic quantisation (benchmarks/serve_models.quantised), ONNX Runtime (fp32, and int8
through ORT's own dynamic quantisation), each at a chosen max_length; every variant scores through
the same tokenisation (`heads.ranker_inputs`) and counts its FLOPs from the fp32 backbone's shapes.

`Variant` is what `ray_app.search.Rerank` takes as its ranker (`score(query, docs)` and a `version`
with a `name`), so re-ranking, fusion and the metrics are the evaluation's own code; it times each
scoring call (tokenisation included, as served) and keeps the scores to compare variants by.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks.serve_models import flops, ranker_shapes

PRECISIONS = ("fp32", "int8", "onnx", "onnx-int8")


def pair_flops(backbone: torch.nn.Module, tokenizer, queries: Sequence[str], docs: Sequence[str], max_length: int,
               pooling: str) -> float:
    """Estimated FLOPs of one ranker forward over these (query, doc) pairs: every encoder pass it makes
    (pairs; with residual pooling also each product and each distinct query alone), padded shapes."""
    from ray_app.models.heads import ranker_inputs

    return flops(backbone, ranker_shapes(ranker_inputs(tokenizer, list(queries), list(docs), max_length, pooling)))


class _Exportable(torch.nn.Module):
    """A CrossEncoderRanker taking its inputs positionally, in `names` order (what the exporter traces)."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]):
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors)))["scores"]


def _axes(name: str) -> dict[int, str]:
    """Dynamic axes of one ranker input: pairs, or distinct queries (`q_`), by their own padded length."""
    if name == "q_index":
        return {0: "pairs"}
    prefix = name[:2] if name[1] == "_" else ""
    return {0: "queries" if prefix == "q_" else "pairs", 1: {"q_": "query_len", "d_": "doc_len"}.get(prefix, "pair_len")}


def export_onnx(model: torch.nn.Module, tokenizer, path: str | Path, opset: int = 17) -> list[str]:
    """Export a CrossEncoderRanker (backbone and score head) to ONNX with dynamic batch and lengths;
    returns the input names. TorchScript exporter (`dynamo=False`: the dynamo one needs onnxscript)."""
    from ray_app.models.heads import ranker_inputs

    sample = ranker_inputs(tokenizer, ["a query", "a query"], ["one product text", "another, longer product text"],
                           32, model.pooling)
    names = list(sample)
    # the exporter restores the module's own train/eval flag afterwards: keep the wrapper in eval so
    # the model is left in eval (a wrapper in train mode would switch dropout on in the model)
    wrapper = _Exportable(model, names).eval()
    torch.onnx.export(wrapper, tuple(sample[n] for n in names), str(path), input_names=names, output_names=["scores"],
                      dynamic_axes={n: _axes(n) for n in names}, opset_version=opset, dynamo=False)
    return names


def onnx_int8(src: str | Path, dst: str | Path) -> Path:
    """ONNX Runtime's dynamic int8 quantisation of an exported model (weights int8, activations per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


class OnnxScorer:
    """An exported ranker in an ONNX Runtime session: scores of (query, doc) pairs, tokenised as torch does."""

    def __init__(self, path: str | Path, tokenizer, pooling: str, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1  # the same cores torch gets
        # no busy-waiting between runs: the variants alternate in one process, and spinning ORT threads
        # would take the cores from the torch variant scoring next
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer, self.pooling = tokenizer, pooling

    def bound(self, max_length: int) -> Callable[[Sequence[str], Sequence[str]], list[float]]:
        """`score_pairs` at a fixed max_length."""
        return lambda queries, docs: self.score_pairs(queries, docs, max_length)

    def score_pairs(self, queries: Sequence[str], docs: Sequence[str], max_length: int) -> list[float]:
        """One session run over the pairs (the caller's batch, as `score_pairs` does for up to 64 pairs)."""
        from ray_app.models.heads import ranker_inputs

        enc = ranker_inputs(self.tokenizer, list(queries), list(docs), max_length, self.pooling)
        return self.session.run(None, {n: enc[n].numpy() for n in self.inputs})[0].astype(float).tolist()


def _torch_pairs(loaded, max_length: int) -> Callable[[Sequence[str], Sequence[str]], list[float]]:
    """`score_pairs` (serving's scoring path) of a registry model at `max_length` tokens, without a
    product-vector cache: every product is encoded alone on every call, as ONNX does, and as a
    replica does for products it has not seen (a cache shared across variants would also hand one
    max_length's vectors to another, and the variants' order would decide who pays the encoding)."""
    from ray_app.search.rerank import score_pairs

    no_cache = {"product_cache": None} if hasattr(loaded, "product_cache") else {}
    ranker = dataclasses.replace(loaded, max_length=max_length, **no_cache)
    return lambda queries, docs: score_pairs(ranker, queries, docs)


@dataclasses.dataclass
class Variant:
    """One way of serving the ranker, as `Rerank` calls it; records ms, FLOPs and scores per call."""

    name: str
    precision: str
    depth: int
    max_length: int
    version: Any  # the registry version, renamed after the variant (Rerank's `about` names it)
    pairs: Callable[[Sequence[str], Sequence[str]], list[float]]
    count: Callable[[Sequence[str], Sequence[str]], float]
    ms: list[float] = dataclasses.field(default_factory=list)
    gflop: list[float] = dataclasses.field(default_factory=list)
    seen: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        """Scores of `docs` for `query`; the call is timed, its FLOPs counted outside the clock."""
        self.gflop.append(self.count([query] * len(docs), docs) / 1e9)
        started = time.perf_counter()
        out = self.pairs([query] * len(docs), docs)
        self.ms.append(1000 * (time.perf_counter() - started))
        self.seen.update({(query, d): s for d, s in zip(docs, out)})
        return out


def build_variants(loaded, precisions: Sequence[str], depths: Sequence[int], max_lengths: Sequence[int],
                   onnx_dir: Path, threads: int, log: Callable[[str], None]) -> tuple[list[Variant], dict[str, str]]:
    """Every precision x depth x max_length variant of a registry ranker, and why any precision is missing."""
    from ray_app.models.scoring import quantised_int8

    backbone, pooling, tokenizer = loaded.model.backbone, loaded.model.pooling, loaded.tokenizer
    makers: dict[str, Callable[[int], Callable[[Sequence[str], Sequence[str]], list[float]]]] = {}
    missing: dict[str, str] = {}
    if "fp32" in precisions:
        makers["fp32"] = lambda n: _torch_pairs(loaded, n)
    if "int8" in precisions:
        int8 = quantised_int8(loaded)
        makers["int8"] = lambda n: _torch_pairs(int8, n)
    if {"onnx", "onnx-int8"} & set(precisions):
        try:
            onnx_dir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            export_onnx(loaded.model, tokenizer, onnx_dir / "ranker.onnx")
            log(f"rerank_cost: ONNX export {time.perf_counter() - started:.1f} s")
            files = {"onnx": onnx_dir / "ranker.onnx"}
            if "onnx-int8" in precisions:
                files["onnx-int8"] = onnx_int8(onnx_dir / "ranker.onnx", onnx_dir / "ranker-int8.onnx")
            for p, path in files.items():
                if p in precisions:
                    makers[p] = OnnxScorer(path, tokenizer, pooling, threads).bound
        except Exception as exc:  # noqa: BLE001 - a failed export is a finding for the results' notes
            missing.update({p: f"{type(exc).__name__}: {exc}" for p in ("onnx", "onnx-int8")
                            if p in precisions and p not in makers})
    variants = []
    for depth in depths:
        for n in max_lengths:
            for p in precisions:
                if p in makers:
                    name = f"{p}@{depth}/{n}"
                    variants.append(Variant(
                        name, p, depth, n, loaded.version.model_copy(update={"name": f"{loaded.version.name} {name}"}),
                        makers[p](n), lambda q, d, n=n: pair_flops(backbone, tokenizer, q, d, n, pooling)))
    return variants, missing
