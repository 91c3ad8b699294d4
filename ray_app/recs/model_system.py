"""The trained two-tower model behind the offline evaluation's `Recommender` interface (and the
batch job's scoring): item vectors for the WHOLE catalogue from product text (items never sold
included: that is the cold-start path), user vectors from each user's train history.

`fit(train)` builds histories as of the end of train (the cut of a time split): the last
`max_history` distinct items, with days between their last purchase and then.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd
import torch

from ray_app.models.recommender import age_bucket
from ray_app.recs.split import ANON_PREFIX, user_locales


def user_histories(purchases: pd.DataFrame, max_history: int,
                   now: Optional[pd.Timestamp] = None) -> dict[str, tuple[list[str], list[float]]]:
    """Each known user's last `max_history` distinct items (oldest first) with their age in days at `now`
    (default: the last purchase in the frame)."""
    now = pd.Timestamp(now) if now is not None else pd.to_datetime(purchases["timestamp"]).max()
    rows = purchases[~purchases["user_id"].astype(str).str.startswith(ANON_PREFIX)]
    last = rows.groupby(["user_id", "product_id"])["timestamp"].max().reset_index().sort_values(["user_id", "timestamp"])
    out: dict[str, tuple[list[str], list[float]]] = {}
    for user, g in last.groupby("user_id", sort=False):
        g = g.tail(max_history)
        out[str(user)] = (list(map(str, g["product_id"])), [max(0.0, (now - t).total_seconds() / 86400) for t in g["timestamp"]])
    return out


class TwoTowerSystem:
    """A registry `recommender` version ranking every product with a text."""

    baseline = False

    def __init__(self, loaded: Any, texts: Mapping[str, str], name: str = "two_tower", batch_size: int = 256,
                 user_locale: Optional[Mapping[str, str]] = None):
        self.loaded, self.name, self.batch_size = loaded, name, batch_size
        self.model = loaded.model
        self.max_history = int(self.model.max_history)
        self.items_ = np.asarray(sorted(texts), dtype=object)
        self._pos = {p: i for i, p in enumerate(self.items_)}
        self._texts = [texts[p] for p in self.items_]
        self.user_locale = dict(user_locale or {})
        self.item_vectors: Optional[np.ndarray] = None
        self.item_bias: Optional[np.ndarray] = None
        self.history: dict[str, tuple[list[int], list[float]]] = {}

    @torch.no_grad()
    def encode_items(self) -> np.ndarray:
        """(n_items, d) item vectors from product text, in `items_` order."""
        from ray_app.recs.task import encode_base

        base = torch.from_numpy(encode_base(self.model, self.loaded.tokenizer, self._texts, self.loaded.max_length, "cpu",
                                            self.batch_size))
        ids = self.model.item_ids(list(self.items_))
        self.item_bias = self.model.item_bias(base, ids).float().numpy()
        return self.model.finish_items(base, ids).float().numpy()

    def fit(self, train: pd.DataFrame) -> "TwoTowerSystem":
        """Item vectors once; each known user's history and locale as of the end of train."""
        self.item_vectors = self.encode_items()
        self.history = {}
        for user, (ids, ages) in user_histories(train, self.max_history).items():
            self.set_history(user, ids, ages)
        if not self.user_locale and "locale" in train.columns:
            self.user_locale = user_locales(train[~train["user_id"].astype(str).str.startswith(ANON_PREFIX)])
        return self

    def set_history(self, user: str, ids: list[str], ages: list[float]) -> None:
        """A user's recent items (oldest first) and their ages in days; items without a text are skipped."""
        self.history[str(user)] = self.positions(ids, ages)

    def user_vectors(self, users: list[str], locales: Mapping[str, str]) -> np.ndarray:
        """(len(users), d); a user without history is the locale's [USER] vector (cold start)."""
        return self.history_vectors([self.history.get(u, ([], [])) for u in users],
                                    [locales.get(u) or self.user_locale.get(u, "") for u in users])

    def positions(self, ids: list[str], ages: list[float]) -> tuple[list[int], list[float]]:
        """A history (product ids oldest first, ages in days) as catalogue rows; items without a text skipped."""
        keep = [(self._pos[i], a) for i, a in zip(ids, ages) if i in self._pos][-self.max_history:]
        return [p for p, _ in keep], [a for _, a in keep]

    @torch.no_grad()
    def history_vectors(self, hist: list[tuple[list[int], list[float]]], locales: list[str]) -> np.ndarray:
        """(len(hist), d) user vectors of histories given as catalogue rows with their ages (no state kept)."""
        width = max(1, max((len(h[0]) for h in hist), default=1))
        vecs = torch.from_numpy(self.item_vectors)
        h = torch.zeros((len(hist), width, vecs.shape[1]))
        mask = torch.zeros((len(hist), width), dtype=torch.bool)
        ages = torch.zeros((len(hist), width), dtype=torch.long)
        for r, (idx, days) in enumerate(hist):
            if idx:
                h[r, :len(idx)] = vecs[idx]
                mask[r, :len(idx)] = True
                ages[r, :len(idx)] = torch.tensor([age_bucket(d) for d in days])
        return self.model.user_tower(h, mask, ages, self.model.locale_ids(list(locales))).float().numpy()

    def top_k(self, users: list[str], k: int, exclude: Mapping[str, set[str]],
              locales: Mapping[str, str]) -> dict[str, tuple[list[str], list[float]]]:
        """Per user: the top-k product ids by the model's score (cosine / temperature + item bias) over
        the whole catalogue, excluded items removed, and those scores."""
        out: dict[str, tuple[list[str], list[float]]] = {}
        for start in range(0, len(users), self.batch_size):
            chunk = users[start:start + self.batch_size]
            scores = self.scores(self.user_vectors(chunk, locales))
            for r, u in enumerate(chunk):
                banned = [self._pos[i] for i in exclude.get(u, ()) if i in self._pos]
                scores[r, banned] = -np.inf
                top = np.argpartition(-scores[r], min(k, len(self.items_) - 1))[:k + len(banned)]
                top = [j for j in top[np.argsort(-scores[r, top], kind="stable")] if np.isfinite(scores[r, j])][:k]
                out[u] = ([self.items_[j] for j in top], [float(scores[r, j]) for j in top])
        return out

    def recommend(self, users: list[str], k: int, exclude: Mapping[str, set[str]], locales: Mapping[str, str]) -> dict[str, list[str]]:
        """Top-k product ids per user (the evaluation's Recommender interface)."""
        return {u: items for u, (items, _) in self.top_k(users, k, exclude, locales).items()}

    @torch.no_grad()
    def score(self, user: str, items: list[str]) -> np.ndarray:
        """Purchase probability (the scoring head) per item; -inf for items without a product text."""
        every = self.scores(self.user_vectors([user], {}))[0]
        logit = np.array([every[self._pos[i]] if i in self._pos else -np.inf for i in items])
        finite = np.isfinite(logit)
        out = np.full(len(items), -np.inf)
        if finite.any():
            out[finite] = self.model.probability(torch.as_tensor(logit[finite], dtype=torch.float32)).numpy()
        return out

    def scores(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_items) ranking scores of user vectors against the whole catalogue."""
        return users @ self.item_vectors.T / self.model.temperature + self.item_bias[None]
