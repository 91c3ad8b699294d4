"""Batch building and validation of the `recommender` task for the shared Ray Train loop.

`collate` gathers every distinct candidate of a batch once (targets, sampled negatives: tokens,
or cached base vectors when the text tower is frozen) and the users' history items as base
vectors from the epoch's item cache (`epoch_start`). `evaluate` ranks, for each validation user, every
item named in this worker's validation rows (as the retriever task ranks its shard's
candidates) with the user's history excluded, and returns SUMS for the loop's all-reduce.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import numpy as np
import torch

from ray_app.models.recommender import age_bucket
from ray_app.recs.metrics import ndcg_at_k, pair_auc, recall_at_k

ENC_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _tokenise(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length)
    return {k: torch.as_tensor(np.asarray(enc[k]), dtype=torch.long) for k in ENC_KEYS if k in enc}


def _history(batch: dict[str, np.ndarray], index: dict[str, int], max_history: int) -> tuple[torch.Tensor, torch.Tensor]:
    hist = [json.loads(h)[-max_history:] for h in batch["history_ids"]]
    ages = [json.loads(a)[-max_history:] for a in batch["history_ages"]]
    width = max(1, max(map(len, hist)))
    h = torch.full((len(hist), width), -1, dtype=torch.long)
    a = torch.zeros((len(hist), width), dtype=torch.long)
    for r, (ids, days) in enumerate(zip(hist, ages)):
        h[r, :len(ids)] = torch.tensor([index[i] for i in ids], dtype=torch.long)
        a[r, :len(ids)] = torch.tensor([age_bucket(d) for d in days], dtype=torch.long)
    return h, a


def batch_items(batch: dict[str, np.ndarray], also: str) -> tuple[list[str], list[str]]:
    """(ids, texts) of the batch's distinct items: its targets, then the items of the `also` columns
    (`also`_ids / `also`_texts: "negatives" for training, "history" for validation)."""
    texts: dict[str, str] = {}
    for r in range(len(batch["target_id"])):
        texts.setdefault(str(batch["target_id"][r]), str(batch["target_text"][r]))
        for i, t in zip(json.loads(batch[f"{also}_ids"][r]), json.loads(batch[f"{also}_texts"][r])):
            texts.setdefault(i, t)
    return list(texts), list(texts.values())


def _logq(batch: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    """Each candidate's log popularity share, as its row carries it."""
    logq: dict[str, float] = {}
    for r in range(len(batch["target_id"])):
        logq.setdefault(str(batch["target_id"][r]), float(batch["target_logq"][r]))
        logq.update(zip(json.loads(batch["negatives_ids"][r]), json.loads(batch["negatives_logq"][r])))
    return np.array([logq[k] for k in keys])


def collate_recommender(batch: dict[str, np.ndarray], tokenizer, cfg: dict[str, Any], epoch: int = 0) -> dict[str, torch.Tensor]:
    """Model kwargs of one training batch; base vectors from the epoch's item cache (see `epoch_start`)."""
    keys, texts = batch_items(batch, "negatives")
    index = {k: i for i, k in enumerate(keys)}
    cache: torch.Tensor = cfg["item_cache"]  # (n_cached, d) base vectors
    cached: dict[str, int] = cfg["cache_index"]  # product id -> row of the cache
    id_rows: torch.Tensor = cfg["cache_id_rows"]  # row of the cache -> ID-embedding row
    out: dict[str, torch.Tensor] = {}
    if cfg["head_config"].get("frozen_text"):
        out["candidate_base"] = cache[[cached[k] for k in keys]]
    else:
        out.update(_tokenise(tokenizer, texts, cfg["max_length"]))
    out["candidate_ids"] = torch.tensor([cfg["item_rows"].get(k, 0) for k in keys], dtype=torch.long)
    history, out["ages"] = _history(batch, cached, cfg["head_config"]["max_history"])
    mask = history >= 0
    out.update(history_base=cache[history.clamp(min=0)] * mask[..., None], history_ids=id_rows[history.clamp(min=0)] * mask,
               history_mask=mask)
    locales = cfg["head_config"]["locales"]
    out["locale"] = torch.tensor([locales.index(str(c)) + 1 if str(c) in locales else 0 for c in batch["locale"]], dtype=torch.long)
    out["targets"] = torch.tensor([index[str(t)] for t in batch["target_id"]], dtype=torch.long)
    out["item_logq"] = torch.from_numpy(mixed_logq(_logq(batch, keys), len(batch["target_id"]),
                                                   sum(len(json.loads(n)) for n in batch["negatives_ids"]),
                                                   max(1, len(cfg["item_rows"]))).astype(np.float32))
    same = torch.zeros((len(batch["target_id"]), len(keys)), dtype=torch.bool)
    for r in range(len(batch["target_id"])):
        for i in json.loads(batch["relevant"][r]):
            if i in index and i != str(batch["target_id"][r]):
                same[r, index[i]] = True  # the rest of the basket is not a negative of this row
    out["same_user"] = same
    return out


def mixed_logq(popularity_logq: np.ndarray, batch: int, uniform: int, catalogue: int) -> np.ndarray:
    """log of how likely each candidate is to be in the batch: as one of `batch` targets (drawn by
    popularity) or one of `uniform` negatives drawn uniformly from `catalogue` items. Correcting a
    uniform negative by its popularity instead would make rare items the hard negatives, and the
    model would learn popularity, not the user (measured: coverage 2%, NDCG at popularity's)."""
    return np.log(batch * np.exp(popularity_logq) + uniform / catalogue)


@torch.no_grad()
def center_items(model, base: np.ndarray) -> None:
    """Before the first step: start the item projection as "remove the catalogue's mean direction".

    Product titles of one shop share a large common component (mean pairwise user cosine 0.89
    when users are means of raw item vectors), so every user looked alike and got the same
    popular items. Only while the projection is untrained (all zeros), so a resumed run keeps its
    weights; the mean is all-reduced, so every DDP rank starts from the same parameters."""
    import torch.distributed as dist

    weight = model.item_proj.weight
    if bool(weight.abs().sum() > 0):
        return
    unit = base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-9)
    total = torch.tensor(np.concatenate([unit.sum(0), [len(unit)]]), dtype=torch.float64, device=weight.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    if float(total[-1]) == 0:
        return
    mu = (total[:-1] / total[-1]).float()
    mu = mu / mu.norm().clamp(min=1e-9)
    weight.copy_(-torch.outer(mu, mu))


@torch.no_grad()
def encode_base(model, tokenizer, texts: list[str], max_length: int, device, batch_size: int = 256) -> np.ndarray:
    """Base (pooled text) vectors of product texts, no gradients."""
    out = []
    for start in range(0, len(texts), batch_size):
        enc = _tokenise(tokenizer, texts[start:start + batch_size], max_length)
        out.append(model.base_vectors(**{k: v.to(device) for k, v in enc.items()}).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def epoch_start(model, shard, tokenizer, cfg: dict[str, Any], device) -> dict[str, Any]:
    """The item cache of an epoch: base vectors of the shard's history items as the encoder stands
    (frozen text: of every item the shard names, once for the whole run)."""
    frozen = bool(cfg["head_config"].get("frozen_text"))
    if frozen and "item_cache" in cfg:
        return {}
    columns = [("history_ids", "history_texts")] + ([("negatives_ids", "negatives_texts")] if frozen else [])
    texts: dict[str, str] = {}
    for batch in shard.iter_batches(batch_size=1024, batch_format="numpy"):
        for id_col, text_col in columns:
            for ids, tx in zip(batch[id_col], batch[text_col]):
                texts.update(zip(json.loads(ids), json.loads(tx)))
        if frozen:
            texts.update(zip(map(str, batch["target_id"]), map(str, batch["target_text"])))
    keys = list(texts)
    was = model.training
    model.eval()
    base = encode_base(model, tokenizer, [texts[k] for k in keys], cfg["max_length"], device)
    model.train(was)
    if not keys:
        base = np.zeros((0, model.item_proj.weight.shape[1]), np.float32)
    center_items(model, base)  # every rank joins its all-reduce
    item_rows = {k: i + 1 for i, k in enumerate(cfg["head_config"].get("items") or [])}
    return {"item_cache": torch.from_numpy(base), "cache_index": {k: i for i, k in enumerate(keys)},
            "cache_id_rows": torch.tensor([item_rows.get(k, 0) for k in keys], dtype=torch.long), "item_rows": item_rows}


@torch.no_grad()
def evaluate_recommender(model, batches: Iterable[dict[str, np.ndarray]], tokenizer, cfg, device) -> dict[str, float]:
    """NDCG@10 / recall@10 of each validation basket over the shard's items, and sampled AUC of the head."""
    rows: list[dict[str, Any]] = []
    for batch in batches:
        rows += [{k: batch[k][r] for k in batch} for r in range(len(batch["target_id"]))]
    sums = {"ndcg10": 0.0, "recall10": 0.0, "auc": 0.0, "n_auc": 0.0, "n_users": 0.0}
    if not rows:
        return sums
    merged = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    keys, texts = batch_items(merged, "history")
    index = {k: i for i, k in enumerate(keys)}
    base = torch.from_numpy(encode_base(model, tokenizer, texts, cfg["max_length"], device)).to(device)
    ids = model.item_ids(keys).to(device)
    items, bias = model.finish_items(base, ids), model.item_bias(base, ids)
    history, ages = _history(merged, index, cfg["head_config"]["max_history"])
    locale = model.locale_ids(list(merged["locale"])).to(device)
    users = model.embed_users(items, history.to(device), ages.to(device), locale)
    logits = model.logits(users, items, bias).cpu().numpy()  # the ranking score
    rng = np.random.default_rng(cfg.get("seed", 0))
    for r, row in enumerate(rows):
        seen = {index[i] for i in json.loads(row["history_ids"])}
        relevant = [i for i in json.loads(row["relevant"]) if i in index]
        scores = logits[r].copy()
        scores[list(seen)] = -np.inf
        ranked = [keys[j] for j in np.argsort(-scores, kind="stable")[:10]]
        sums["ndcg10"] += ndcg_at_k(ranked, relevant, 10)
        sums["recall10"] += recall_at_k(ranked, relevant, 10)
        sums["n_users"] += 1
        pos = [index[i] for i in relevant]
        pool = np.setdiff1d(np.arange(len(keys)), np.array(pos + list(seen), dtype=np.int64))
        if pos and len(pool):
            neg = rng.choice(pool, min(100, len(pool)), replace=False)
            prob = model.probability(torch.as_tensor(logits[r])).numpy()
            sums["auc"] += pair_auc(prob[pos], prob[neg])
            sums["n_auc"] += 1
    return sums


def finalize_recommender(sums: dict[str, float]) -> dict[str, float]:
    n, m = sums["n_users"], sums["n_auc"]
    return {"val_ndcg@10": sums["ndcg10"] / n if n else 0.0, "val_recall@10": sums["recall10"] / n if n else 0.0,
            "val_auc": sums["auc"] / m if m else 0.0, "val_users": n}
