"""The `recommender` task: a two-tower purchase model whose item tower reads the product's text.

- Item tower: the shared BERT-family encoder (LoRA) over the product text, mean-pooled, plus a
  zero-initialised residual projection, L2-normalised. Its input is text alone, so a product
  nobody has bought yet gets a vector the day it lands.
- User tower: a small transformer over the user's recent item vectors (each plus an embedding of
  how many days before the prediction it was bought, and of its position), a learned [USER]
  token and the user's locale; its [USER] output, projected and normalised, is the user vector.
  A user without history is the [USER] token and the locale: popular-in-locale, learned.
- Training: contrastive on what the user bought next, against in-batch items (logQ-corrected
  for their popularity, which is why they are sampled as often as they are) and against items
  sampled uniformly from the catalogue; the user's other items of that basket are masked.
- Scoring head: p(purchase | history, item) = sigmoid(a * cos + b), fitted by BCE on the same
  positives and negatives; AUC reads it.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ray_app.models.encoder import mean_pool

AGE_BUCKETS = (0, 1, 3, 7, 14, 30, 60, 90, 180, 365)  # days before the prediction a history item was bought


def age_bucket(days: float) -> int:
    """Index of the recency bucket for an item bought `days` before the prediction time."""
    for i, edge in enumerate(AGE_BUCKETS[1:]):
        if days < edge:
            return i
    return len(AGE_BUCKETS) - 1


class UserTower(nn.Module):
    """[USER] token + locale over (item vector + recency + position) tokens -> user vector."""

    def __init__(self, dim: int, locales: int, max_history: int, heads: int = 2, layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.user_token = nn.Parameter(torch.zeros(dim))
        self.locale = nn.Embedding(locales + 1, dim)  # index 0: a locale not seen in training
        self.age = nn.Embedding(len(AGE_BUCKETS), dim)
        self.position = nn.Embedding(max_history, dim)
        for emb in (self.locale, self.age, self.position):
            nn.init.normal_(emb.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)  # the transformer's term starts at zero, like the item projection
        nn.init.zeros_(self.out.bias)

    def forward(self, history: torch.Tensor, mask: torch.Tensor, ages: torch.Tensor, locale: torch.Tensor) -> torch.Tensor:
        """history (B, L, d), mask (B, L) True where an item is, ages (B, L) buckets, locale (B,) -> (B, d)."""
        b, length, _ = history.shape
        pos = torch.arange(length, device=history.device).clamp(max=self.position.num_embeddings - 1)
        tokens = history + self.age(ages) + self.position(pos)[None]
        first = (self.user_token[None] + self.locale(locale))[:, None]
        x = torch.cat([first, tokens], dim=1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=mask.device), ~mask], dim=1)
        x = self.encoder(x, src_key_padding_mask=pad)
        # plus the mean of the history's item vectors: training starts from content-based similarity
        # (the items a user bought predict items with similar text) instead of from noise. The
        # [USER] token is not added back: a learned constant there grew into the same "popular
        # items" direction for every user (measured: 3% catalogue coverage, popularity's NDCG)
        m = mask[..., None].to(history.dtype)
        mean = (history * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(self.out(x[:, 0]) + mean, dim=-1)


class TwoTowerRecommender(nn.Module):
    """Item tower on the shared encoder (+ ID embeddings of items sold in train), user tower over
    item vectors, calibrated scoring head.

    An item's vector is normalise(text + proj(text) + id): `text` the encoder's mean-pooled
    product text (the "base" vector), `proj` a zero-initialised residual projection, `id` a
    learned embedding of items seen in training (dropped at random in training, and zero for an
    item never sold, so the text part alone must place it: the cold-start path).
    `frozen_text`: the encoder is not trained (base vectors are computed once and cached), so
    training on CPU costs the towers only; else the encoder is LoRA-tuned through the candidates.
    """

    task = "recommender"
    head_names = ["item_proj", "item_id", "bias_text", "bias_id", "user_tower", "score_head"]

    def __init__(self, backbone: nn.Module, locales: Optional[list[str]] = None, max_history: int = 20,
                 temperature: float = 0.05, heads: int = 2, layers: int = 1, items: Optional[list[str]] = None,
                 id_dropout: float = 0.3, frozen_text: bool = False):
        super().__init__()
        from ray_app.models.heads import _drop_pooler

        self.backbone = _drop_pooler(backbone)
        if frozen_text:
            self.backbone.requires_grad_(False)
        dim = backbone.config.hidden_size
        self.locales, self.items = list(locales or []), list(items or [])
        self.locale_index = {c: i + 1 for i, c in enumerate(self.locales)}
        self.item_index = {c: i + 1 for i, c in enumerate(self.items)}
        self.max_history, self.temperature, self.heads, self.layers = max_history, temperature, heads, layers
        self.id_dropout, self.frozen_text = id_dropout, frozen_text
        self.item_proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.item_proj.weight)  # starts as the encoder's own sentence vector
        nn.init.zeros_(self.item_proj.bias)
        self.item_id = nn.Embedding(len(self.items) + 1, dim, padding_idx=0)  # 0: never sold in training
        nn.init.normal_(self.item_id.weight, std=0.01)
        with torch.no_grad():
            self.item_id.weight[0].zero_()
        # an item's own appeal (how much it sells to anyone) as a bias beside the cosine, so the
        # vectors are free to say who likes it: forced into the cosine, popularity took the shared
        # direction and every user got the same top items (measured: catalogue coverage 3%). Part
        # of it is read from the text, so a new product gets the bias its text predicts.
        self.bias_text = nn.Linear(dim, 1)
        self.bias_id = nn.Embedding(len(self.items) + 1, 1, padding_idx=0)
        for p in (self.bias_text.weight, self.bias_text.bias, self.bias_id.weight):
            nn.init.zeros_(p)
        self.user_tower = UserTower(dim, len(self.locales), max_history, heads if dim % heads == 0 else 1, layers)
        self.score_head = nn.Linear(1, 1)  # p = sigmoid(a * logit + b)
        with torch.no_grad():
            self.score_head.weight.fill_(0.5)
            self.score_head.bias.fill_(-3.0)

    def warm_rows(self, old: "TwoTowerRecommender") -> dict[str, tuple[list[int], list[int]]]:
        """Id-keyed embedding rows shared with an older model (warm start): parameter name ->
        (rows here, rows there) of the products and locales both know (row 0, the unknown id, too)."""
        items = [0] + [self.item_index[i] for i in self.items if i in old.item_index]
        old_items = [0] + [old.item_index[i] for i in self.items if i in old.item_index]
        locales = [0] + [self.locale_index[c] for c in self.locales if c in old.locale_index]
        old_locales = [0] + [old.locale_index[c] for c in self.locales if c in old.locale_index]
        return {"item_id.weight": (items, old_items), "bias_id.weight": (items, old_items),
                "user_tower.locale.weight": (locales, old_locales)}

    def head_config(self) -> dict[str, Any]:
        return {"locales": self.locales, "max_history": self.max_history, "temperature": self.temperature,
                "heads": self.heads, "layers": self.layers, "items": self.items, "id_dropout": self.id_dropout,
                "frozen_text": self.frozen_text}

    def locale_ids(self, locales: list[str]) -> torch.Tensor:
        return torch.tensor([self.locale_index.get(str(c), 0) for c in locales], dtype=torch.long)

    def item_ids(self, items: list[str]) -> torch.Tensor:
        """ID-embedding rows of product ids (0 for an item not sold in training)."""
        return torch.tensor([self.item_index.get(str(i), 0) for i in items], dtype=torch.long)

    def base_vectors(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """(n, d) mean-pooled encoder vectors of tokenised product texts (what the item cache holds)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        return mean_pool(hidden.float(), attention_mask)

    def finish_items(self, base: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Item vectors from base vectors (..., d) and ID rows (...)."""
        idv = self.item_id(ids)
        if self.training and self.id_dropout > 0:  # keep the text part able to stand alone
            idv = idv * (torch.rand(ids.shape, device=idv.device) >= self.id_dropout)[..., None]
        text = F.normalize(base, dim=-1)  # unit text part, so the ID part is on the same scale from the start
        return F.normalize(text + self.item_proj(text) + idv, dim=-1)

    def item_bias(self, base: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(...,) the items' appeal to anyone, from their text and (items sold in training) their ID."""
        return self.bias_text(F.normalize(base, dim=-1))[..., 0] + self.bias_id(ids)[..., 0]

    def logits(self, users: torch.Tensor, items: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(B, n) ranking scores: cosine / temperature + the item's bias."""
        return users @ items.T / self.temperature + bias[None]

    def embed_users(self, item_vectors: torch.Tensor, history: torch.Tensor, ages: torch.Tensor,
                    locale: torch.Tensor) -> torch.Tensor:
        """User vectors from rows of `item_vectors`: history (B, L) indexes into it, -1 = padding."""
        mask = history >= 0
        vectors = item_vectors[history.clamp(min=0)] * mask[..., None]
        return self.user_tower(vectors, mask, ages, locale)

    def probability(self, logit: torch.Tensor) -> torch.Tensor:
        """Purchase probability from the ranking score `logits` gives (the scoring head)."""
        return torch.sigmoid(self.score_head(logit[..., None].float())[..., 0])

    def forward(self, candidate_ids, history_base, history_ids, history_mask, ages, locale, targets, item_logq, same_user,
                input_ids=None, attention_mask=None, token_type_ids=None, candidate_base=None) -> dict[str, torch.Tensor]:
        """The batch's candidate items (targets and sampled negatives): row i's positive is
        candidate `targets[i]`; every other candidate is a negative unless `same_user[i, j]` (the
        rest of the basket row i predicts). Candidates come as tokens (the encoder is tuned) or as
        cached base vectors (`candidate_base`, frozen text); history items always as cached base
        vectors (B, L, d): encoding every history item with gradients would cost ~5x the step (CPU:
        13 s for a batch of 32 users), and the user tower learns as well from vectors an epoch old."""
        base = candidate_base if candidate_base is not None else self.base_vectors(input_ids, attention_mask, token_type_ids)
        items = self.finish_items(base, candidate_ids)
        history = self.finish_items(history_base, history_ids) * history_mask[..., None]
        users = self.user_tower(history, history_mask, ages, locale)
        scores = self.logits(users, items, self.item_bias(base, candidate_ids))  # (B, n)
        # sampled softmax with logQ correction: in-batch items are negatives as often as they are
        # popular, so without it the model learns to push popular items down
        logits = (scores - item_logq[None]).masked_fill(same_user, torch.finfo(scores.dtype).min)
        loss = F.cross_entropy(logits, targets)
        rows = torch.arange(len(targets), device=scores.device)
        negatives = ~same_user
        negatives[rows, targets] = False
        pos, neg = scores[rows, targets].detach(), scores[negatives].detach()  # the head calibrates, the towers rank
        score = self.score_head(torch.cat([pos, neg])[:, None].float())[:, 0]
        labels = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
        weights = torch.cat([torch.full_like(pos, 0.5 / max(1, len(pos))), torch.full_like(neg, 0.5 / max(1, len(neg)))])
        bce = (F.binary_cross_entropy_with_logits(score, labels, reduction="none") * weights).sum()
        return {"loss": loss + bce, "scores": scores}
