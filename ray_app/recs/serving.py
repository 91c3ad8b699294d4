"""What the recommendation endpoints compute, without Ray: one `RecsIndex` per catalogue and
behaviour version, held by each `Recommender` replica (serve/recommender.py).

- **popular** (cold start): distinct buyers per product, each purchase weighted by
  0.5 ** (age / `trend_half_life_days`) at the newest event, so what sells now outranks what sold
  once; per locale when the locale has at least `min_locale_buyers` buyers, else over every locale.
- **co-purchase**: item-item cosine over baskets (a session; events without a session are grouped
  per user and day), each item's `neighbours` strongest kept, as the evaluation's item kNN.
- **vectors**: the recommender's item tower over product text when a model is served (so a
  product nobody bought yet has a vector the day it lands), else the catalogue's retrieval vectors
  (`jobs.embed`); cosine over the whole catalogue.
- **personal**: the model's user tower over the shopper's latest items (oldest first, with their
  age), scored against every product; none without a model.

Lists are merged by reciprocal-rank fusion (k = 60) so the sources need no common scale (for a
cart, co-purchase counts twice the model's read of the basket); each item says which sources put
it there. Products out of stock (stock known and <= 0) and the
excluded ids never appear; the business rules (serve/rules.yaml) run after this, at the ingress.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

from ray_app.recs.baselines import cosine_neighbours

RRF_K = 60
INTEREST_TYPES = ("purchase", "add_to_cart", "click")  # events that say what a shopper wants
BASKET_TYPES = ("purchase", "add_to_cart")  # what co-purchase counts
ITEM_FIELDS = ("title", "brand", "category_path", "price", "currency", "stock", "image_url", "locale")
Ranked = list[tuple[str, float]]
CART_WEIGHTS = {"co_purchase": 1.0, "session": 0.5}


@dataclass
class Pick:
    """One recommended product: its fused score and the sources that put it there."""

    product_id: str
    score: float
    sources: list[str] = field(default_factory=list)


def fuse(lists: Mapping[str, Ranked], k: int, exclude: Iterable[str] = (),
         weights: Optional[Mapping[str, float]] = None) -> list[Pick]:
    """Reciprocal-rank fusion of named ranked lists: score = sum weight / (RRF_K + rank) (weight 1
    unless given); ties by product id."""
    banned = set(exclude)
    score: dict[str, float] = {}
    sources: dict[str, list[str]] = {}
    for name, ranked in lists.items():
        for rank, (pid, _) in enumerate(ranked, start=1):
            if pid in banned:
                continue
            score[pid] = score.get(pid, 0.0) + (weights or {}).get(name, 1.0) / (RRF_K + rank)
            sources.setdefault(pid, []).append(name)
    order = sorted(score, key=lambda p: (-score[p], p))[:k]
    return [Pick(p, round(score[p], 6), sources[p]) for p in order]


def baskets(events: pd.DataFrame) -> pd.Series:
    """The basket key of each event: its session, else its user and UTC day."""
    session = events["session_id"].fillna("").astype(str)
    day = pd.to_datetime(events["timestamp"], utc=True).dt.strftime("%Y-%m-%d")
    return session.where(session != "", "day:" + events["user_id"].astype(str) + ":" + day)


class Behaviour:
    """Popularity by locale (recency-weighted) and co-purchase neighbours from an events frame."""

    def __init__(self, events: pd.DataFrame, items: Sequence[str], trend_half_life_days: float = 14.0,
                 min_locale_buyers: int = 20, neighbours: int = 50):
        self.items = list(items)
        pos = {p: i for i, p in enumerate(self.items)}
        n = len(self.items)
        rows = events[events["event_type"].isin(BASKET_TYPES) & events["product_id"].isin(pos)].copy()
        self.events = int(len(rows))
        self.global_pop = np.zeros(n)
        self.locale_pop: dict[str, np.ndarray] = {}
        self.similarity = csr_matrix((n, n))
        if rows.empty:
            return
        ts = pd.to_datetime(rows["timestamp"], utc=True)
        age_days = (ts.max() - ts).dt.total_seconds().to_numpy() / 86400.0
        rows["w"] = np.power(0.5, age_days / max(trend_half_life_days, 1e-6))
        rows["i"] = rows["product_id"].map(pos).astype(np.int64)
        rows["locale"] = rows["locale"].fillna("").astype(str).str.lower()
        # a buyer counts once per product: their most recent (highest-weight) purchase of it
        best = rows.groupby(["user_id", "i", "locale"], sort=False)["w"].max().reset_index()
        np.add.at(self.global_pop, best["i"].to_numpy(), best["w"].to_numpy())
        buyers = best.groupby("locale")["user_id"].nunique()
        for locale in buyers[buyers >= min_locale_buyers].index:
            part = best[best["locale"] == locale]
            vec = np.zeros(n)
            np.add.at(vec, part["i"].to_numpy(), part["w"].to_numpy())
            self.locale_pop[str(locale)] = vec
        keys = baskets(rows)
        codes, _ = pd.factorize(keys)
        pairs = pd.DataFrame({"b": codes, "i": rows["i"].to_numpy()}).drop_duplicates()
        binary = csr_matrix((np.ones(len(pairs)), (pairs["b"].to_numpy(), pairs["i"].to_numpy())),
                            shape=(int(codes.max()) + 1, n))
        self.similarity = cosine_neighbours(binary, neighbours)

    def popularity(self, locale: Optional[str]) -> tuple[np.ndarray, str]:
        """(scores, what they are): the locale's when it has enough buyers, else every locale's."""
        key = str(locale or "").strip().lower()
        if key in self.locale_pop:
            return self.locale_pop[key], f"popular:{key}"
        return self.global_pop, "popular"


def _top(scores: np.ndarray, ids: Sequence[str], k: int, allowed: np.ndarray) -> Ranked:
    """The k best of `scores` among `allowed` rows with a positive score, ties by row (= product id)."""
    s = np.where(allowed & (scores > 0), scores, -np.inf)
    if not np.isfinite(s).any():
        return []
    take = min(k, int(np.isfinite(s).sum()))
    idx = np.argpartition(-s, take - 1)[:take] if take < s.size else np.arange(s.size)
    idx = idx[np.lexsort((idx, -s[idx]))]
    return [(ids[i], float(s[i])) for i in idx if np.isfinite(s[i])]


class RecsIndex:
    """One catalogue version with its behaviour statistics, item vectors and (optionally) a model."""

    def __init__(self, products: list[dict[str, Any]], behaviour_events: pd.DataFrame,
                 vectors: Optional[np.ndarray] = None, system: Any = None, *, in_stock_only: bool = True,
                 trend_half_life_days: float = 14.0, min_locale_buyers: int = 20, neighbours: int = 50):
        """`products` sorted by product_id (as the model system orders them); `vectors` one row per
        product (zeros where none), used when no model `system` is given."""
        self.ids = [str(p["product_id"]) for p in products]
        if self.ids != sorted(self.ids):
            raise ValueError("products must be sorted by product_id")
        self.pos = {p: i for i, p in enumerate(self.ids)}
        self.fields = {str(p["product_id"]): {k: p.get(k) for k in ITEM_FIELDS if p.get(k) is not None} for p in products}
        stock = np.array([p.get("stock") if p.get("stock") is not None else 1 for p in products], dtype=np.float64)
        self.available = (stock > 0) if in_stock_only else np.ones(len(self.ids), dtype=bool)
        self.system = system
        if system is not None:
            if list(system.items_) != self.ids:
                raise ValueError("the model system's catalogue differs from the products given")
            vectors = np.asarray(system.item_vectors, dtype=np.float32)
        self.vectors = _normalised(vectors) if vectors is not None else None
        self.behaviour = Behaviour(behaviour_events, self.ids, trend_half_life_days, min_locale_buyers, neighbours)

    @property
    def size(self) -> int:
        return len(self.ids)

    def _allowed(self, exclude: Iterable[str]) -> np.ndarray:
        ok = self.available.copy()
        banned = [self.pos[p] for p in exclude if p in self.pos]
        ok[banned] = False
        return ok

    def popular(self, locale: Optional[str], k: int, exclude: Iterable[str] = ()) -> tuple[Ranked, str]:
        """The k most bought lately in the locale, topped up from every locale's when it has fewer."""
        scores, what = self.behaviour.popularity(locale)
        allowed = self._allowed(exclude)
        out = _top(scores, self.ids, k, allowed)
        if len(out) < k and scores is not self.behaviour.global_pop:
            allowed[[self.pos[p] for p, _ in out]] = False
            out += _top(self.behaviour.global_pop, self.ids, k - len(out), allowed)
        return out, what

    def co_purchase(self, items: Sequence[str], k: int, exclude: Iterable[str] = ()) -> Ranked:
        """Summed co-purchase similarity to `items` (the basket or recent items)."""
        rows = [self.pos[p] for p in items if p in self.pos]
        if not rows:
            return []
        scores = np.asarray(self.behaviour.similarity[rows].sum(axis=0)).ravel()
        return _top(scores, self.ids, k, self._allowed(list(exclude) + list(items)))

    def nearest(self, item: str, k: int, exclude: Iterable[str] = ()) -> Ranked:
        """Products whose vectors are closest to `item`'s (cosine); none when it has no vector."""
        if self.vectors is None or item not in self.pos:
            return []
        v = self.vectors[self.pos[item]]
        if not np.any(v):
            return []
        scores = self.vectors @ v
        return _top(scores + 1.0, self.ids, k, self._allowed(list(exclude) + [item]))  # +1: cosine in (0, 2]

    def personal(self, history: Sequence[tuple[str, float]], locale: Optional[str], k: int,
                 exclude: Iterable[str] = ()) -> Ranked:
        """The model's top-k for a history of (product_id, age in days), oldest first; [] without a model."""
        if self.system is None:
            return []
        rows, ages = self.system.positions([p for p, _ in history], [a for _, a in history])
        if not rows:
            return []
        user = self.system.history_vectors([(rows, ages)], [locale or ""])
        scores = self.system.scores(user)[0]
        scores = scores - scores.min() + 1.0  # positive, order kept (_top keeps positive scores)
        return _top(scores, self.ids, k, self._allowed(exclude))

    # ---- the three endpoints -------------------------------------------------------------

    def home(self, precomputed: Optional[Sequence[str]], history: Sequence[tuple[str, float]], recent: Sequence[str],
             bought: Iterable[str], locale: Optional[str], k: int) -> tuple[list[Pick], str]:
        """(picks, strategy): the precomputed list merged with what the shopper did since it was made
        (`recent`; the model re-reads the whole `history` when there is one), popular for a stranger."""
        bought = set(bought)
        precomputed = list(precomputed) if precomputed is not None else []
        lists: dict[str, Ranked] = {}
        if precomputed:
            lists["precomputed"] = [(p, 0.0) for p in precomputed if p in self.pos and self.available[self.pos[p]]]
        if recent or (history and not precomputed):
            live = self.personal(history, locale, k, bought)
            if live:
                lists["session"] = live
            else:
                lists["co_purchase"] = self.co_purchase(list(recent) or [p for p, _ in history][-10:], k, bought)
        lists = {n: r for n, r in lists.items() if r}
        if lists:
            strategy = "personal" if "precomputed" in lists and len(lists) == 1 else "session"
            picks = fuse(lists, k, bought)
            if len(picks) >= k:
                return picks, strategy
            popular, what = self.popular(locale, k, bought | {p.product_id for p in picks})
            return picks + fuse({what: popular}, k - len(picks)), strategy
        popular, what = self.popular(locale, k, bought)
        return fuse({what: popular}, k), "popular"

    def similar(self, item: str, k: int) -> list[Pick]:
        """Products like `item`: co-purchase neighbours fused with vector neighbours. KeyError when unknown."""
        if item not in self.pos:
            raise KeyError(item)
        lists = {"co_purchase": self.co_purchase([item], k), "vector": self.nearest(item, k)}
        return fuse({n: r for n, r in lists.items() if r}, k, [item])

    def cart(self, items: Sequence[str], history: Sequence[tuple[str, float]], locale: Optional[str],
             k: int) -> tuple[list[Pick], str]:
        """Complements of a basket: co-purchase with its items fused with the model's read of basket
        (and history) as a session; popular in the locale when neither knows anything."""
        basket = [p for p in items if p in self.pos]
        lists = {"co_purchase": self.co_purchase(basket, k),
                 "session": self.personal(list(history) + [(p, 0.0) for p in basket], locale, k, basket)}
        lists = {n: r for n, r in lists.items() if r}
        if lists:  # what was bought with these items is evidence; the model's read of the basket a generalisation
            return fuse(lists, k, basket, CART_WEIGHTS), "cart"
        popular, what = self.popular(locale, k, basket)
        return fuse({what: popular}, k), "popular"

    def item(self, pick: Pick) -> dict[str, Any]:
        """A pick as a result row: catalogue fields, score, sources."""
        return {**self.fields.get(pick.product_id, {}), "product_id": pick.product_id, "score": pick.score,
                "sources": pick.sources}


def _normalised(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)


def user_history(events: pd.DataFrame, max_items: int, now: Optional[pd.Timestamp] = None
                 ) -> tuple[list[tuple[str, float]], set[str]]:
    """(the latest `max_items` distinct products a shopper showed interest in, oldest first, with
    their age in days at `now`; everything they bought) from their events frame."""
    if events.empty:
        return [], set()
    rows = events[events["event_type"].isin(INTEREST_TYPES)]
    bought = set(events.loc[events["event_type"] == "purchase", "product_id"].astype(str))
    if rows.empty:
        return [], bought
    now = pd.Timestamp(now) if now is not None else pd.Timestamp.now(tz="UTC")
    now = now.tz_localize("UTC") if now.tzinfo is None else now
    frame = pd.DataFrame({"p": rows["product_id"].astype(str), "t": pd.to_datetime(rows["timestamp"], utc=True)})
    last = frame.groupby("p")["t"].max().sort_values(kind="stable").tail(max_items)
    return [(p, max(0.0, (now - t).total_seconds() / 86400)) for p, t in last.items()], bought
