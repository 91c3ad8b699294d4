"""Per-task batch building and validation, shared by the Ray Train loop and offline checks.

`collate` turns a Ray Data numpy batch (raw text + JSON fields) into model kwargs, tokenizing
in the worker so padding is per batch. `evaluate` returns SUMS (not means) so the loop can
all-reduce them across workers and every rank sees the same metric (same early-stopping
decision, no DDP hang); `finalize` turns the reduced sums into metrics.
"""
from __future__ import annotations

import json
import math
import zlib
from typing import Any, Iterable

import numpy as np
import torch

from ray_app.metrics import ndcg_at_k, prf_from_counts, retrieval_metrics
from ray_app.models.heads import esci_targets, ranker_inputs
from ray_app.models.tokenize import IGNORE_INDEX, batch_shape_ids, bio_tags, decode_entities, encode_with_tags

ENC_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _tensors(enc: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: torch.as_tensor(np.asarray(enc[k]), dtype=torch.long) for k in ENC_KEYS if k in enc
            and (not prefix or k != "token_type_ids")}


def _group_ids(query_ids: Iterable[str]) -> torch.Tensor:
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(str(q), len(index)) for q in query_ids], dtype=torch.long)


# -- intent_entity ------------------------------------------------------------------------
def collate_intent_entity(batch: dict[str, np.ndarray], tokenizer, cfg: dict[str, Any], epoch: int = 0) -> dict[str, torch.Tensor]:
    intents = cfg["head_config"]["intents"]
    intent_index = {c: i for i, c in enumerate(intents)}
    tag_index = {t: i for i, t in enumerate(bio_tags(cfg["head_config"]["entity_types"]))}
    spans = [json.loads(s) for s in batch["spans"]]
    with_shapes = bool(cfg["head_config"].get("word_shape"))
    enc = encode_with_tags(tokenizer, [str(t) for t in batch["text"]], [s or [] for s in spans], tag_index, cfg["max_length"],
                           with_shapes=with_shapes)
    tags = [row if s is not None else [IGNORE_INDEX] * len(row) for row, s in zip(enc.pop("tag_labels"), spans)]
    out = _tensors(enc)
    if with_shapes:
        out["shape_ids"] = torch.tensor(enc["shape_ids"], dtype=torch.long)
    out["tag_labels"] = torch.tensor(tags, dtype=torch.long)
    out["intent_labels"] = torch.tensor([intent_index.get(str(i), IGNORE_INDEX) for i in batch["intent"]], dtype=torch.long)
    return out


@torch.no_grad()
def evaluate_intent_entity(model, batches, tokenizer, cfg, device) -> dict[str, float]:
    intents = model.intents
    n_cls = len(intents)
    sums = {"n": 0.0, "n_intent": 0.0, "intent_correct": 0.0, "exact": 0.0, "n_exact": 0.0, "tp": 0.0, "fp": 0.0, "fn": 0.0}
    cls = np.zeros((3, n_cls))  # per-class tp, fp, fn for macro-F1
    for batch in batches:
        texts = [str(t) for t in batch["text"]]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=cfg["max_length"], return_offsets_mapping=True)
        inputs = _tensors(enc)
        if model.word_shape:
            inputs["shape_ids"] = torch.tensor(batch_shape_ids(texts, enc), dtype=torch.long)
        out = model(**{k: v.to(device) for k, v in inputs.items()})
        pred_int = out["intent_logits"].argmax(-1).cpu().tolist()
        tag_logits = out["tag_logits"].float().cpu().numpy()
        for i, text in enumerate(texts):
            sums["n"] += 1
            gold_intent, ok_intent, ok_spans = str(batch["intent"][i]), True, True
            if gold_intent:
                sums["n_intent"] += 1
                ok_intent = intents[pred_int[i]] == gold_intent
                sums["intent_correct"] += ok_intent
                if gold_intent in intents:
                    cls[0 if ok_intent else 2, intents.index(gold_intent)] += 1
                if not ok_intent:
                    cls[1, pred_int[i]] += 1
            gold_spans = json.loads(batch["spans"][i])
            if gold_spans is not None:
                pred = {(s["start"], s["end"], s["type"]) for s in decode_entities(
                    text, enc["offset_mapping"][i], enc.word_ids(i), tag_logits[i], model.tags)}
                gold = {(s["start"], s["end"], s["type"]) for s in gold_spans}
                sums["tp"] += len(pred & gold)
                sums["fp"] += len(pred - gold)
                sums["fn"] += len(gold - pred)
                ok_spans = pred == gold
            if gold_intent or gold_spans is not None:
                sums["n_exact"] += 1
                sums["exact"] += ok_intent and ok_spans
    for j in range(n_cls):
        sums[f"cls_tp_{j}"], sums[f"cls_fp_{j}"], sums[f"cls_fn_{j}"] = cls[:, j]
    return sums


def finalize_intent_entity(sums: dict[str, float]) -> dict[str, float]:
    acc = sums["intent_correct"] / sums["n_intent"] if sums["n_intent"] else float("nan")
    f1 = prf_from_counts(sums["tp"], sums["fp"], sums["fn"])["f1"] if sums["tp"] + sums["fp"] + sums["fn"] else float("nan")
    parts = [v for v in (acc, f1) if not math.isnan(v)]
    classes = sorted({int(k.rsplit("_", 1)[1]) for k in sums if k.startswith("cls_tp_")})
    f1s = [2 * sums[f"cls_tp_{j}"] / d for j in classes
           if (d := 2 * sums[f"cls_tp_{j}"] + sums[f"cls_fp_{j}"] + sums[f"cls_fn_{j}"]) > 0]
    return {"val_intent_acc": acc, "val_span_f1": f1, "val_score": float(np.mean(parts)) if parts else 0.0,
            "val_exact_match": sums["exact"] / sums["n_exact"] if sums["n_exact"] else 0.0,
            "val_intent_macro_f1": float(np.mean(f1s)) if f1s else 0.0, "val_examples": sums["n"]}


# -- ranker ------------------------------------------------------------------------------
def collate_ranker(batch, tokenizer, cfg, epoch: int = 0, sample: bool = True) -> dict[str, torch.Tensor]:
    """Per query: its judged list (a fresh sub-list of `list_size` each epoch when training), plus,
    when training, `batch_negatives` products judged for OTHER queries of the batch with gain 0 and
    target 0. `gains` feed the listwise loss and NDCG, `targets` (gains normalised by their grade
    scale, training.gains) the pointwise loss; rows without targets are read as ESCI gains.

    The borrowed products are what a full-catalogue search puts in front of the ranker: items off
    the query's topic. Trained on judged lists alone, where every item was retrieved for the query,
    a ranker learns fine distinctions and forgets coarse relevance (ESCI150: it fell below the
    untuned encoder it started from)."""
    lists = []
    for i, (qid, query) in enumerate(zip(batch["query_id"], batch["query"])):
        d, g = json.loads(batch["docs"][i]), json.loads(batch["gains"][i])
        t = (json.loads(batch["targets"][i]) if "targets" in batch
             else esci_targets(torch.tensor(g, dtype=torch.float32)).tolist())
        if sample and len(d) > cfg["list_size"]:  # a fresh, reproducible sub-list each epoch
            rng = np.random.default_rng(zlib.crc32(f"{qid}:{epoch}:{cfg['seed']}".encode()))
            keep = sorted(rng.choice(len(d), cfg["list_size"], replace=False).tolist())
            d, g, t = [d[k] for k in keep], [g[k] for k in keep], [t[k] for k in keep]
        lists.append((str(qid), str(query), d, g, t))
    n_borrow = int(cfg.get("batch_negatives", 0)) if sample else 0
    queries, docs, gains, targets, groups = [], [], [], [], []
    for i, (qid, query, d, g, t) in enumerate(lists):
        if n_borrow and len(lists) > 1:
            own = set(d)
            pool = [doc for j, other in enumerate(lists) if j != i for doc in other[2] if doc not in own]
            rng = np.random.default_rng(zlib.crc32(f"neg:{qid}:{epoch}:{cfg['seed']}".encode()))
            picked = [pool[k] for k in rng.choice(len(pool), min(n_borrow, len(pool)), replace=False)] if pool else []
            d, g, t = d + picked, g + [0.0] * len(picked), t + [0.0] * len(picked)
        queries += [query] * len(d)
        docs += d
        gains += g
        targets += t
        groups += [i] * len(d)
    out = ranker_inputs(tokenizer, queries, docs, cfg["max_length"], cfg["head_config"]["pooling"])
    out["gains"] = torch.tensor(gains, dtype=torch.float32)
    out["targets"] = torch.tensor(targets, dtype=torch.float32)
    out["groups"] = torch.tensor(groups, dtype=torch.long)
    return out


@torch.no_grad()
def evaluate_ranker(model, batches, tokenizer, cfg, device) -> dict[str, float]:
    sums = {"ndcg10": 0.0, "ndcg5": 0.0, "n_queries": 0.0}
    for batch in batches:
        inputs = collate_ranker(batch, tokenizer, cfg, sample=False)
        groups, gains = inputs.pop("groups"), inputs.pop("gains")
        inputs.pop("targets")
        scores = model(**{k: v.to(device) for k, v in inputs.items()})["scores"].float().cpu()
        for g in torch.unique(groups):
            idx = groups == g
            n10 = ndcg_at_k(scores[idx].numpy(), gains[idx].numpy(), 10)
            if not math.isnan(n10):
                sums["ndcg10"] += n10
                sums["ndcg5"] += ndcg_at_k(scores[idx].numpy(), gains[idx].numpy(), 5)
                sums["n_queries"] += 1
    return sums


def finalize_ranker(sums: dict[str, float]) -> dict[str, float]:
    n = sums["n_queries"]
    return {"val_ndcg@10": sums["ndcg10"] / n if n else 0.0, "val_ndcg@5": sums["ndcg5"] / n if n else 0.0,
            "val_queries": n}


# -- retriever ---------------------------------------------------------------------------
def collate_retriever(batch, tokenizer, cfg, epoch: int = 0) -> dict[str, torch.Tensor]:
    kw = dict(padding=True, truncation=True, max_length=cfg["max_length"])
    out = _tensors(tokenizer([str(q) for q in batch["query"]], **kw), "q_")
    out.update(_tensors(tokenizer([str(d) for d in batch["positive"]], **kw), "d_"))
    negatives = [n for row in batch["negatives"] for n in json.loads(row)[:cfg["hard_negatives"]]]
    if negatives:
        out.update(_tensors(tokenizer(negatives, **kw), "n_"))
    out["groups"] = _group_ids(batch["query_id"])
    return out


@torch.no_grad()
def evaluate_retriever(model, batches, tokenizer, cfg, device) -> dict[str, float]:
    """MRR / recall@k of each validation query against all candidates of this worker's shard."""
    from ray_app.models.encoder import encode_texts

    positives: dict[str, set[str]] = {}
    query_text: dict[str, str] = {}
    docs: dict[str, None] = {}
    for batch in batches:
        for qid, q, pos, negs in zip(batch["query_id"], batch["query"], batch["positive"], batch["negatives"]):
            query_text[str(qid)] = str(q)
            positives.setdefault(str(qid), set()).add(str(pos))
            docs[str(pos)] = None
            docs.update(dict.fromkeys(json.loads(negs)))
    if not query_text:
        return {"mrr": 0.0, "recall@1": 0.0, "recall@10": 0.0, "n_queries": 0.0}
    qids, doc_list = list(query_text), list(docs)
    qv = encode_texts(model, tokenizer, [query_text[q] for q in qids], max_length=cfg["max_length"], device=device)
    dv = encode_texts(model, tokenizer, doc_list, max_length=cfg["max_length"], device=device)
    relevant = np.array([[d in positives[q] for d in doc_list] for q in qids])
    m = retrieval_metrics(qv @ dv.T, relevant, ks=(1, 10))
    n = float(m["queries"])
    return {"mrr": m["mrr"] * n, "recall@1": m["recall@1"] * n, "recall@10": m["recall@10"] * n, "n_queries": n}


def finalize_retriever(sums: dict[str, float]) -> dict[str, float]:
    n = sums["n_queries"]
    return {"val_mrr": sums["mrr"] / n if n else 0.0, "val_recall@1": sums["recall@1"] / n if n else 0.0,
            "val_recall@10": sums["recall@10"] / n if n else 0.0, "val_queries": n}


def _recommender_epoch_start(*args, **kwargs):
    from ray_app.recs.task import epoch_start

    return epoch_start(*args, **kwargs)


EPOCH_START = {"recommender": _recommender_epoch_start}


def _recommender_funcs():
    from ray_app.recs.task import collate_recommender, evaluate_recommender, finalize_recommender

    return collate_recommender, evaluate_recommender, finalize_recommender


TASK_FUNCS = {
    "recommender": _recommender_funcs(),
    "intent_entity": (collate_intent_entity, evaluate_intent_entity, finalize_intent_entity),
    "ranker": (collate_ranker, evaluate_ranker, finalize_ranker),
    "retriever": (collate_retriever, evaluate_retriever, finalize_retriever),
}
