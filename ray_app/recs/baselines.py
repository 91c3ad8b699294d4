"""Non-neural recommendation baselines behind the one `Recommender` interface the evaluation calls.

Every baseline ranks the items seen in train: a system-specific primary score, ties (and users
it knows nothing about) broken by global popularity, then by product id. That one rule gives
exactly k distinct, non-excluded items whenever the catalogue allows, and makes `score` the
system's own ranking (minus the position), so AUC measures the same ordering as the top-k.
Items never sold in train cannot be recommended or scored (-inf): only a content-based system
can reach them, which is what the new-item slice of the report shows.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

Exclude = Mapping[str, set[str]]


@runtime_checkable
class Recommender(Protocol):
    """What the offline evaluation needs from a system: fit on train purchases, top-k lists, item scores."""

    name: str

    def fit(self, train: pd.DataFrame) -> "Recommender":
        """Learn from train purchase rows (user_id, product_id, session_id, locale, ...); returns self."""

    def recommend(self, users: list[str], k: int, exclude: Exclude, locales: Mapping[str, str]) -> dict[str, list[str]]:
        """Top-k distinct product ids per user, none of them in exclude[user]."""

    def score(self, user: str, items: list[str]) -> np.ndarray:
        """One score per item, higher = better (for AUC)."""


class CatalogueRecommender:
    """Shared machinery: the train user x item matrices, popularity, tie-breaking, exclusion, top-k."""

    name = "catalogue"
    baseline = True  # the evaluation picks its default reference among baselines
    batch_size = 512  # users scored at once: 512 x 4,000 items x 8 bytes = 16 MB

    def fit(self, train: pd.DataFrame) -> "CatalogueRecommender":
        """Index users and items, build the matrices and fit the system-specific part."""
        missing = [c for c in ("user_id", "product_id") if c not in train.columns]
        if missing or train.empty:
            raise ValueError(f"{self.name}: train must be non-empty with user_id, product_id; lacks {missing}")
        users, items = train["user_id"].astype(str), train["product_id"].astype(str)
        self.items_ = np.asarray(sorted(items.unique()), dtype=object)
        self._item_pos = {p: i for i, p in enumerate(self.items_)}
        self._user_pos = {u: i for i, u in enumerate(sorted(users.unique()))}
        sessions = train["session_id"].astype(str) if "session_id" in train.columns else pd.Series(np.arange(len(train)))
        pairs = pd.DataFrame({"u": users.map(self._user_pos).to_numpy(), "i": items.map(self._item_pos).to_numpy(),
                              "s": sessions.to_numpy()}).drop_duplicates()
        counts = pairs.groupby(["u", "i"]).size()
        shape = (len(self._user_pos), len(self.items_))
        # confidence = baskets the user bought the item in (factor models); binary = bought at all
        self.counts_ = csr_matrix((counts.to_numpy(np.float32), (counts.index.get_level_values(0),
                                                                 counts.index.get_level_values(1))), shape=shape)
        self.binary_ = self.counts_.copy()
        self.binary_.data[:] = 1.0
        self.popularity_ = np.asarray(self.binary_.sum(axis=0), dtype=np.float64).ravel()
        self._fit(train)
        return self

    def _fit(self, train: pd.DataFrame) -> None:
        """System-specific fitting after the matrices exist."""

    def _primary(self, users: list[str], locales: Mapping[str, str]) -> np.ndarray:
        """(len(users), n_items) primary scores; popularity breaks ties."""
        return np.broadcast_to(self.popularity_, (len(users), self.popularity_.size))

    def _order(self, primary: np.ndarray) -> np.ndarray:
        tie = np.broadcast_to(-self.popularity_, primary.shape)
        return np.lexsort((tie, -primary), axis=-1)  # stable: equal keys keep item-id order

    def recommend(self, users: list[str], k: int, exclude: Exclude, locales: Mapping[str, str]) -> dict[str, list[str]]:
        """Top-k distinct train items per user, excluded items removed, short only when the catalogue is."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        out: dict[str, list[str]] = {}
        for start in range(0, len(users), self.batch_size):
            batch = list(users[start:start + self.batch_size])
            primary = np.array(self._primary(batch, locales), dtype=np.float64)
            for row, user in enumerate(batch):
                banned = [self._item_pos[p] for p in exclude.get(user, ()) if p in self._item_pos]
                primary[row, banned] = -np.inf  # sorts last; dropped below if the list reaches them
            order = self._order(primary)[:, :k]
            for row, user in enumerate(batch):
                keep = order[row][np.isfinite(primary[row, order[row]])]
                out[user] = [str(p) for p in self.items_[keep]]
        return out

    def score(self, user: str, items: list[str]) -> np.ndarray:
        """Minus the item's position in this system's ranking of the train catalogue (-inf if unseen)."""
        order = self._order(np.array(self._primary([user], {}), dtype=np.float64))[0]
        position = np.empty(order.size, dtype=np.float64)
        position[order] = np.arange(order.size)
        idx = np.asarray([self._item_pos.get(i, -1) for i in items], dtype=np.int64)
        return np.where(idx >= 0, -position[np.maximum(idx, 0)], -np.inf)


class Popularity(CatalogueRecommender):
    """Most-bought items overall, by number of distinct buyers."""

    def __init__(self, name: str = "popularity") -> None:
        self.name = name


class LocalePopularity(CatalogueRecommender):
    """Most-bought items in the user's country; countries with few buyers and unknown users use global counts."""

    def __init__(self, min_buyers: int = 20, user_locale: Optional[Mapping[str, str]] = None,
                 name: str = "locale_popularity") -> None:
        self.name = name
        self.min_buyers = min_buyers
        # a locale known at request time (e.g. the split's user_locale) lets `score` use it too
        self._given_locale = dict(user_locale or {})

    def _fit(self, train: pd.DataFrame) -> None:
        if "locale" not in train.columns:
            raise ValueError(f"{self.name}: train needs a locale column")
        rows = train[["user_id", "product_id", "locale"]].astype(str).drop_duplicates()
        main = rows.groupby(["user_id", "locale"]).size().rename("n").reset_index()
        main = main.sort_values(["user_id", "n", "locale"], ascending=[True, False, True]).drop_duplicates("user_id")
        self._user_locale = dict(zip(main["user_id"], main["locale"])) | self._given_locale
        buyers = rows.groupby("locale")["user_id"].nunique()
        self._locale_pop: dict[str, np.ndarray] = {}
        for locale, group in rows[rows["locale"].isin(buyers[buyers >= self.min_buyers].index)].groupby("locale"):
            counts = group.groupby("product_id")["user_id"].nunique()
            vec = np.zeros(self.items_.size)
            vec[[self._item_pos[p] for p in counts.index]] = counts.to_numpy()
            self._locale_pop[str(locale)] = vec

    def _primary(self, users: list[str], locales: Mapping[str, str]) -> np.ndarray:
        rows = [self._locale_pop.get(locales.get(u) or self._user_locale.get(u, ""), self.popularity_) for u in users]
        return np.vstack(rows) if rows else np.zeros((0, self.items_.size))


def cosine_neighbours(binary: csr_matrix, neighbours: int) -> csr_matrix:
    """items x items cosine of a binary (users or baskets) x items matrix, each item's `neighbours`
    strongest kept (ties by neighbour index, so it is deterministic); the diagonal is dropped."""
    co = (binary.T @ binary).tocoo()  # items x items co-occurrence counts
    norm = np.sqrt(np.asarray(binary.sum(axis=0), dtype=np.float64).ravel())
    off = co.row != co.col
    row, col = co.row[off], co.col[off]
    sim = co.data[off] / (norm[row] * norm[col])
    order = np.lexsort((col, -sim, row))
    row, col, sim = row[order], col[order], sim[order]
    n = binary.shape[1]
    starts = np.searchsorted(row, np.arange(n))
    keep = (np.arange(row.size) - starts[row]) < neighbours
    return csr_matrix((sim[keep], (row[keep], col[keep])), shape=(n, n))


class ItemKNN(CatalogueRecommender):
    """Co-purchase item-item cosine over the binary user x item matrix, top `neighbours` kept per item."""

    def __init__(self, neighbours: int = 50, name: str = "item_knn") -> None:
        self.name = name
        self.neighbours = neighbours

    def _fit(self, train: pd.DataFrame) -> None:
        self.similarity_ = cosine_neighbours(self.binary_, self.neighbours)

    def _primary(self, users: list[str], locales: Mapping[str, str]) -> np.ndarray:
        out = np.zeros((len(users), self.items_.size))
        known = [(r, self._user_pos[u]) for r, u in enumerate(users) if u in self._user_pos]
        if known:
            rows, idx = zip(*known)
            # score(u, j) = sum over u's train items i of sim(i, j), j among i's kept neighbours
            out[list(rows)] = (self.binary_[list(idx)] @ self.similarity_).toarray()
        return out


class _FactorBaseline(CatalogueRecommender):
    """A matrix-factorisation model from `implicit` (CPU); users unseen in train get popularity."""

    def _model(self) -> Any:
        raise NotImplementedError

    def _matrix(self) -> csr_matrix:
        return self.binary_

    def _fit(self, train: pd.DataFrame) -> None:
        import implicit.cpu.als  # noqa: F401  loads scipy's BLAS first, so the limit below reaches it
        from threadpoolctl import threadpool_limits

        # implicit warns (and runs up to 10x slower) when BLAS has its own thread pool
        with threadpool_limits(1, "blas"):
            self.model_ = self._model()
            self.model_.fit(self._matrix(), show_progress=False)
        self.user_factors_ = np.asarray(self.model_.user_factors, dtype=np.float64)
        self.item_factors_ = np.asarray(self.model_.item_factors, dtype=np.float64)

    def _primary(self, users: list[str], locales: Mapping[str, str]) -> np.ndarray:
        out = np.tile(self.popularity_, (len(users), 1))
        known = [(r, self._user_pos[u]) for r, u in enumerate(users) if u in self._user_pos]
        if known:
            rows, idx = zip(*known)
            out[list(rows)] = self.user_factors_[list(idx)] @ self.item_factors_.T
        return out


class ALSBaseline(_FactorBaseline):
    """Implicit-feedback ALS (Hu, Koren, Volinsky 2008): a bought pair weighs alpha x its baskets, the rest 1."""

    def __init__(self, factors: int = 64, regularization: float = 0.05, iterations: int = 15, alpha: float = 10.0,
                 seed: int = 0, num_threads: int = 1, name: str = "als") -> None:
        self.name = name
        self.factors, self.regularization, self.iterations, self.alpha = factors, regularization, iterations, alpha
        self.seed, self.num_threads = seed, num_threads

    def _model(self) -> Any:
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                                       iterations=self.iterations, num_threads=self.num_threads,
                                       random_state=self.seed)

    def _matrix(self) -> csr_matrix:
        return self.counts_


class BPRBaseline(_FactorBaseline):
    """Bayesian personalised ranking (Rendle et al. 2009) on the binary user x item matrix."""

    def __init__(self, factors: int = 64, learning_rate: float = 0.05, regularization: float = 0.01,
                 iterations: int = 100, seed: int = 0, num_threads: int = 1, name: str = "bpr") -> None:
        self.name = name
        self.factors, self.learning_rate, self.regularization = factors, learning_rate, regularization
        self.iterations, self.seed, self.num_threads = iterations, seed, num_threads

    def _model(self) -> Any:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                           regularization=self.regularization, iterations=self.iterations,
                                           num_threads=self.num_threads, random_state=self.seed)
