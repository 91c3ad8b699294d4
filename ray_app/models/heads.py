"""Task heads on one shared BERT-family encoder (kept as `.backbone`).

All three heads are plain `nn.Module`s whose own layers are named `*_head`, so LoRA's
`target_modules` (query, key, value, dense) never wrap them and `modules_to_save` keeps them
fully trainable. The BERT pooler is dropped: none of the heads uses it, and an unused
parameter would break DDP's gradient reduction. `head_config()` is everything needed, with the
base encoder's name, to rebuild the head when a saved model is loaded.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ray_app.models.encoder import mean_pool
from ray_app.models.tokenize import IGNORE_INDEX, WORD_SHAPES, batch_shape_ids, bio_tags, decode_entities
from schemas.grades import ESCI


def _drop_pooler(backbone: nn.Module) -> nn.Module:
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    return backbone


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class JointIntentEntityModel(nn.Module):
    """Intent classification from [CLS] + BIO entity tagging per token, one summed loss."""

    task = "intent_entity"
    head_names = ["intent_head", "tag_head"]

    def __init__(self, backbone: nn.Module, intents: Sequence[str], entity_types: Sequence[str],
                 dropout: float = 0.1, oos_threshold: float = 0.5, fallback_intent: str = "out_of_scope",
                 tag_loss_weight: float = 1.0, word_shape: bool = False):
        super().__init__()
        self.backbone = _drop_pooler(backbone)
        self.intents, self.entity_types = list(intents), list(entity_types)
        self.tags = bio_tags(self.entity_types)
        self.tag_index = {t: i for i, t in enumerate(self.tags)}
        self.oos_threshold, self.fallback_intent = oos_threshold, fallback_intent
        self.tag_loss_weight = tag_loss_weight
        hidden = backbone.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.intent_head = nn.Linear(hidden, len(self.intents))
        self.tag_head = nn.Linear(hidden, len(self.tags))
        self.word_shape = word_shape
        if word_shape:
            # A learned vector per word shape added to the input embeddings, zero at the start (the
            # untrained model is the plain one); the encoder's layers see where capitalised runs begin and end.
            self.shape_head = nn.Embedding(len(WORD_SHAPES), hidden)
            nn.init.zeros_(self.shape_head.weight)
            self.head_names = [*type(self).head_names, "shape_head"]

    def head_config(self) -> dict[str, Any]:
        return {"intents": self.intents, "entity_types": self.entity_types, "dropout": self.dropout.p,
                "oos_threshold": self.oos_threshold, "fallback_intent": self.fallback_intent,
                "tag_loss_weight": self.tag_loss_weight, "word_shape": self.word_shape}

    def forward(self, input_ids, attention_mask, token_type_ids=None, intent_labels=None, tag_labels=None,
                shape_ids=None):
        if self.word_shape:
            if shape_ids is None:
                raise ValueError("this intent_entity model reads word shapes: pass shape_ids (tokenize.batch_shape_ids)")
            tokens = {"inputs_embeds": self.backbone.get_input_embeddings()(input_ids) + self.shape_head(shape_ids)}
        else:
            tokens = {"input_ids": input_ids}
        hidden = self.backbone(**tokens, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        hidden = self.dropout(hidden)
        intent_logits = self.intent_head(hidden[:, 0])
        tag_logits = self.tag_head(hidden)
        out = {"intent_logits": intent_logits, "tag_logits": tag_logits}
        if intent_labels is not None or tag_labels is not None:
            # A batch without any label of one kind still touches that head (x0): DDP needs a
            # gradient for every parameter on every rank, and an all-ignored CE would be NaN.
            loss = intent_logits.sum() * 0.0 + tag_logits.sum() * 0.0
            if intent_labels is not None and (intent_labels != IGNORE_INDEX).any():
                loss = loss + F.cross_entropy(intent_logits.float(), intent_labels, ignore_index=IGNORE_INDEX)
            if tag_labels is not None and (tag_labels != IGNORE_INDEX).any():
                loss = loss + self.tag_loss_weight * F.cross_entropy(
                    tag_logits.float().reshape(-1, len(self.tags)), tag_labels.reshape(-1), ignore_index=IGNORE_INDEX)
            out["loss"] = loss
        return out

    @torch.no_grad()
    def predict(self, texts: Sequence[str], tokenizer, max_length: int = 64, threshold: Optional[float] = None,
                batch_size: int = 64) -> list[dict[str, Any]]:
        """Per text: intent (fallback when confidence < threshold), raw_intent, confidence, entities."""
        threshold = self.oos_threshold if threshold is None else threshold
        was_training = self.training
        self.eval()
        results: list[dict[str, Any]] = []
        try:
            for start in range(0, len(texts), batch_size):
                chunk = [str(t) for t in texts[start:start + batch_size]]
                enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                                return_offsets_mapping=True, return_tensors="pt")
                inputs = {k: enc[k].to(_device(self)) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
                if self.word_shape:
                    inputs["shape_ids"] = torch.tensor(batch_shape_ids(chunk, enc), dtype=torch.long, device=_device(self))
                out = self.forward(**inputs)
                probs = out["intent_logits"].float().softmax(-1).cpu()
                tag_logits = out["tag_logits"].float().cpu().numpy()
                for i, text in enumerate(chunk):
                    conf, idx = probs[i].max(-1)
                    raw = self.intents[int(idx)]
                    results.append({
                        "intent": raw if float(conf) >= threshold else self.fallback_intent,
                        "raw_intent": raw, "confidence": float(conf),
                        "entities": decode_entities(text, enc["offset_mapping"][i].tolist(), enc.word_ids(i),
                                                    tag_logits[i], self.tags),
                    })
        finally:
            self.train(was_training)
        return results


def listwise_loss(scores: torch.Tensor, gains: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy per query list (TF-Ranking's SoftmaxLoss, a ListNet top-one loss):
    target p_i = (2^gain_i - 1) / sum_j (2^gain_j - 1), the NDCG gains, so with ESCI grades
    E:S:C = 7:3:1 and irrelevant items get no mass (softmax(gains) as target would give I items
    1/20 of E's and make lists nearly flat). Lists with nothing relevant are skipped."""
    losses = []
    for g in torch.unique(groups):
        idx = groups == g
        rel = torch.pow(2.0, gains[idx].float()) - 1.0
        if idx.sum() < 2 or float(rel.sum()) <= 0:
            continue
        target = rel / rel.sum()
        losses.append(-(target * torch.log_softmax(scores[idx].float(), dim=0)).sum())
    return torch.stack(losses).mean() if losses else scores.sum() * 0.0


def pointwise_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against graded targets in [0, 1]: each gain's place in its scale's range
    (ray_app.training.gains; ESCI: gain / 3, so E=1, S=2/3, C=1/3, I=0)."""
    return F.binary_cross_entropy_with_logits(scores.float(), targets.float())


def esci_targets(gains: torch.Tensor) -> torch.Tensor:
    """Pointwise targets of gains on ESCI's 0-3 range, for batches that carry no targets of their own."""
    lo, hi = ESCI.gain_range
    return (gains.float() - lo) / (hi - lo)


POOLINGS = ("residual", "segments", "mean", "cls")


class CosineScore(nn.Module):
    """exp(log_scale) * cos(a, b) + bias: a learned temperature and offset on a cosine."""

    def __init__(self, init_scale: float = 20.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * F.cosine_similarity(a.float(), b.float(), dim=-1) + self.bias


class ResidualScore(CosineScore):
    """CosineScore(query, product) + linear(pair): a bi-encoder similarity plus a cross-encoder
    correction whose weights start at zero, so the untrained score IS the sentence encoder's
    ranking and fine-tuning can only start from there."""

    def __init__(self, hidden_size: int, init_scale: float = 20.0):
        super().__init__(init_scale)
        self.cross = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.cross.weight)
        nn.init.zeros_(self.cross.bias)

    def forward(self, query: torch.Tensor, product: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        return super().forward(query, product) + self.cross(pair.float()).squeeze(-1)


def ranker_inputs(tokenizer, queries: Sequence[str], docs: Sequence[str], max_length: int,
                  pooling: str, docs_alone: bool = True) -> dict[str, torch.Tensor]:
    """Tensors a CrossEncoderRanker takes: the (query, product) pairs, plus, for the residual
    pooling's bi-encoder term, each product alone (`d_`, left out with `docs_alone=False` when the
    caller passes cached `d_vectors`) and each DISTINCT query alone (`q_`) with `q_index` giving
    every pair its query's row: a list of 50 products for one query encodes the query once."""
    keys = ("input_ids", "attention_mask", "token_type_ids")
    enc = tokenizer(list(queries), list(docs), padding=True, truncation="only_second", max_length=max_length,
                    return_tensors="pt")
    out = {k: enc[k] for k in keys if k in enc}
    if pooling == "residual":
        row: dict[str, int] = {}
        index = [row.setdefault(str(q), len(row)) for q in queries]
        for prefix, texts in (("q_", list(row)), ("d_", docs))[:2 if docs_alone else 1]:
            single = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out.update({prefix + k: single[k] for k in ("input_ids", "attention_mask")})
        out["q_index"] = torch.tensor(index, dtype=torch.long)
    return out


class CrossEncoderRanker(nn.Module):
    """Scores a (query, product text) pair encoded together; pointwise or listwise training loss.

    Pooling (what the score is read from):
    - "residual" (default): exp(s) * cos(query alone, product alone) + b + w . mean(pair): the
      sentence encoder's own similarity (each text encoded alone, mean-pooled) plus a linear
      cross-encoder term on the joint encoding that starts at zero. One shared, LoRA-tuned encoder
      runs on each pair, each product alone and each distinct query alone. Without cross-encoder pre-training this is
      what learns from a hundred judged queries: training starts from the bi-encoder's ranking.
    - "segments": the cosine of the mean query-token vector and the mean product-token
      vector of the joint encoding (split by token_type_ids), times a learned scale, plus a bias.
      Query and product still attend to each other in every layer (a cross-encoder), but the
      score starts where a sentence encoder such as all-MiniLM-L6-v2 is already good: with no
      cross-encoder pre-training, a fresh linear head learns nothing useful from a hundred
      judged queries, while this starts near the bi-encoder's ranking and is fine-tuned from there.
    - "mean" / "cls": a linear head on the mean of all tokens / on [CLS] (for encoders that were
      pre-trained as cross-encoders, or tokenizers without segment ids).
    """

    task = "ranker"
    head_names = ["score_head"]

    def __init__(self, backbone: nn.Module, loss: str = "listwise", dropout: float = 0.1, pooling: str = "residual",
                 init_scale: float = 20.0):
        super().__init__()
        if loss not in ("pointwise", "listwise"):
            raise ValueError(f"ranker loss must be pointwise or listwise, got {loss!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"ranker pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.backbone = _drop_pooler(backbone)
        self.loss_type = loss
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        # one head module either way (no unused parameters under DDP; LoRA's modules_to_save keeps it trainable)
        hidden = backbone.config.hidden_size
        self.score_head = (ResidualScore(hidden, init_scale) if pooling == "residual"
                           else CosineScore(init_scale) if pooling == "segments" else nn.Linear(hidden, 1))
        self.init_scale = init_scale

    def head_config(self) -> dict[str, Any]:
        return {"loss": self.loss_type, "dropout": self.dropout.p, "pooling": self.pooling, "init_scale": self.init_scale}

    def _alone(self, input_ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor], what: str) -> torch.Tensor:
        if input_ids is None:
            raise ValueError(f"ranker pooling 'residual' needs the {what} encoded alone (see heads.ranker_inputs)")
        return self.encode_alone(input_ids, attention_mask)

    def encode_alone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled encoding of texts on their own (the residual score's bi-encoder side)."""
        return mean_pool(self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,
                         attention_mask)

    def _score(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: Optional[torch.Tensor], alone: dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
        if self.pooling == "residual":
            query = self._alone(alone.get("q_input_ids"), alone.get("q_attention_mask"), "query")
            if alone.get("q_index") is not None:  # distinct queries -> one row per pair
                query = query[alone["q_index"]]
            product = alone.get("d_vectors")  # cached product-alone vectors (models.scoring) or encoded here
            if product is None:
                product = self._alone(alone.get("d_input_ids"), alone.get("d_attention_mask"), "product")
            return self.score_head(query, product, self.dropout(mean_pool(hidden, attention_mask)))
        if self.pooling == "cls":
            return self.score_head(self.dropout(hidden[:, 0])).squeeze(-1)
        if self.pooling == "mean":
            return self.score_head(self.dropout(mean_pool(hidden, attention_mask))).squeeze(-1)
        if token_type_ids is None:
            raise ValueError("ranker pooling 'segments' needs token_type_ids (a BERT-style tokenizer); "
                             "use pooling 'mean' or 'cls' for this encoder")
        valid = attention_mask.bool()
        query = mean_pool(hidden, (valid & (token_type_ids == 0)).long())
        product = mean_pool(hidden, (valid & (token_type_ids == 1)).long())
        return self.score_head(query, product)

    def forward(self, input_ids, attention_mask, token_type_ids=None, gains=None, groups=None,
                q_input_ids=None, q_attention_mask=None, d_input_ids=None, d_attention_mask=None, q_index=None,
                targets=None, d_vectors=None):
        """Scores, and with `gains` the loss: listwise on the gains, pointwise on `targets` in [0, 1]
        (the batch's own normalisation by grade scale; without them, gains are read as ESCI's)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
        alone = {"q_input_ids": q_input_ids, "q_attention_mask": q_attention_mask,
                 "d_input_ids": d_input_ids, "d_attention_mask": d_attention_mask, "q_index": q_index,
                 "d_vectors": d_vectors}
        scores = self._score(hidden, attention_mask, token_type_ids, alone)
        out = {"scores": scores}
        if gains is not None:
            if self.loss_type == "listwise" and groups is not None:
                out["loss"] = listwise_loss(scores, gains, groups)
            else:
                out["loss"] = pointwise_loss(scores, esci_targets(gains) if targets is None else targets)
        return out

    def score(self, query: str, docs: Sequence[str], tokenizer, max_length: int = 128,
              batch_size: int = 64, cache=None) -> list[float]:
        """Relevance scores (logits) of `docs` for `query`, in input order (see models.scoring)."""
        from ray_app.models.scoring import score_pairs

        return score_pairs(self, tokenizer, [query] * len(docs), docs, max_length, batch_size, cache)


class BiEncoder(nn.Module):
    """Query and product embeddings from one shared encoder; InfoNCE with in-batch negatives."""

    task = "retriever"
    head_names: list[str] = []

    def __init__(self, backbone: nn.Module, temperature: float = 0.05):
        super().__init__()
        self.backbone = _drop_pooler(backbone)
        self.temperature = temperature

    def head_config(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
        return F.normalize(mean_pool(hidden.float(), attention_mask), dim=-1)

    def forward(self, q_input_ids, q_attention_mask, d_input_ids, d_attention_mask,
                n_input_ids=None, n_attention_mask=None, groups=None):
        """Loss over candidates [positives; hard negatives]; row i's target is positive i.

        `groups` (query ids as ints) masks the other positives of the same query, which would
        otherwise be counted as in-batch negatives.
        """
        q = self.embed(q_input_ids, q_attention_mask)
        cands = self.embed(d_input_ids, d_attention_mask)
        if n_input_ids is not None and n_input_ids.shape[0] > 0:
            cands = torch.cat([cands, self.embed(n_input_ids, n_attention_mask)], dim=0)
        logits = q @ cands.T / self.temperature
        n = q.shape[0]
        if groups is not None:
            same = groups[:, None] == groups[None, :]
            same.fill_diagonal_(False)
            mask = torch.zeros_like(logits, dtype=torch.bool)
            mask[:, :n] = same
            logits = logits.masked_fill(mask, torch.finfo(logits.dtype).min)
        loss = F.cross_entropy(logits, torch.arange(n, device=logits.device))
        return {"loss": loss, "scores": logits}


HEADS: dict[str, type[nn.Module]] = {"intent_entity": JointIntentEntityModel, "ranker": CrossEncoderRanker,
                                     "retriever": BiEncoder}


def build_head(task: str, backbone: nn.Module, head_config: dict[str, Any]) -> nn.Module:
    """A head of `task` on `backbone` from its saved `head_config()`."""
    if task == "recommender":  # its own module: the two towers are not an encoder head like the others
        from ray_app.models.recommender import TwoTowerRecommender

        return TwoTowerRecommender(backbone, **head_config)
    if task not in HEADS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(HEADS)}")
    if task == "ranker":  # rankers saved before `pooling` existed read [CLS]
        head_config = {"pooling": "cls", **head_config}
    return HEADS[task](backbone, **head_config)
