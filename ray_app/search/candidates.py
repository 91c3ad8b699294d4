"""First-stage candidates over the whole catalogue: LanceDB's BM25 full-text search and a
bi-encoder's vectors (exact cosine, or the table's ANN index)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_app.index import HASH_COLUMN, MODEL_COLUMN, VECTOR_COLUMN, exact_search, fts_search, refine_for, text_hash, vector_search


class BM25:
    """LanceDB native full-text search (BM25) over the given text columns."""

    def __init__(self, tbl, columns: list[str]):
        self.tbl, self.columns = tbl, columns
        self.about = f"LanceDB native FTS (BM25), multi-match over {', '.join(columns)}"

    def prepare(self, queries: list[dict]) -> None:
        pass

    def judged(self, q: dict, pids: list[str]) -> dict[str, Optional[float]]:
        return dict(fts_search(self.tbl, q["text"], self.columns, len(pids), restrict_to=pids))

    def search(self, text: str, depth: int, where: Optional[str] = None) -> list[tuple[str, float]]:
        """(product_id, BM25 score) best first, prefiltered by a LanceDB `where` when given."""
        return fts_search(self.tbl, text, self.columns, depth, where=where)

    def retrieve(self, q: dict, depth: int) -> list[str]:
        return [p for p, _ in self.search(q["text"], depth)]


class Dense:
    """A bi-encoder over the full catalogue: exact cosine (or the table's ANN index with --ann)."""

    def __init__(self, encoder, products: pa.Table, texts: dict[str, str], tbl, ann: bool, log):
        self.encoder, self.tbl = encoder, tbl
        self.ids = products.column("product_id").to_pylist()
        self.row = {p: i for i, p in enumerate(self.ids)}
        self.matrix, reused = product_matrix(encoder, products, texts, log)
        self.ann = ann and reused == len(self.ids)
        self.about = (f"{encoder.key} (dim {encoder.dim}), {reused:,}/{len(self.ids):,} product vectors from the table, "
                      + ("ANN index search" if self.ann else "exact brute-force cosine"))
        self.qvec: dict[str, np.ndarray] = {}

    def prepare(self, queries: list[dict]) -> None:
        vectors = self.encoder.encode([q["text"] for q in queries])
        self.qvec = {q["query_id"]: v for q, v in zip(queries, vectors)}

    def judged(self, q: dict, pids: list[str]) -> dict[str, Optional[float]]:
        sims = self.matrix[[self.row[p] for p in pids]] @ self.qvec[q["query_id"]]
        return dict(zip(pids, sims.tolist()))

    def search(self, vector: np.ndarray, depth: int, mask: Optional[np.ndarray] = None,
               where: Optional[str] = None) -> list[tuple[str, float]]:
        """(product_id, cosine) best first over the products `mask` keeps (the ANN path takes the same
        filter as a LanceDB `where`); ties broken by catalogue row, so the order is deterministic."""
        if self.ann:
            return vector_search(self.tbl, vector, depth, where=where, refine_factor=refine_for(len(self.ids)))
        if mask is None:
            idx, scores = exact_search(self.matrix, vector, depth)
            return [(self.ids[i], float(s)) for i, s in zip(idx[0], scores[0])]
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return []
        idx, scores = exact_search(self.matrix[rows], vector, depth)
        return [(self.ids[rows[i]], float(s)) for i, s in zip(idx[0], scores[0])]

    def retrieve(self, q: dict, depth: int) -> list[str]:
        return [p for p, _ in self.search(self.qvec[q["query_id"]], depth)]


def product_matrix(encoder, products: pa.Table, texts: dict[str, str], log) -> tuple[np.ndarray, int]:
    """Product vectors of `encoder`: reused from the table where model and text hash match, else encoded."""
    ids = products.column("product_id").to_pylist()
    matrix = np.zeros((len(ids), encoder.dim), dtype=np.float32)
    fresh = np.zeros(len(ids), dtype=bool)
    if VECTOR_COLUMN in products.column_names and products.schema.field(VECTOR_COLUMN).type.list_size == encoder.dim:
        models, hashes = products.column(MODEL_COLUMN).to_pylist(), products.column(HASH_COLUMN).to_pylist()
        valid = pc.is_valid(products.column(VECTOR_COLUMN)).to_numpy(zero_copy_only=False)
        fresh = np.array([v and m == encoder.key and h == text_hash(texts[p])
                          for v, m, h, p in zip(valid, models, hashes, ids)], dtype=bool)
        if fresh.any():
            col = products.column(VECTOR_COLUMN).filter(pa.array(fresh)).combine_chunks()
            matrix[fresh] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, encoder.dim)
    missing = np.flatnonzero(~fresh)
    if missing.size:
        log(f"evaluate: encoding {missing.size:,} product texts with {encoder.key} (not in the table's vectors)")
        matrix[missing] = encoder.encode([texts[ids[i]] for i in missing])
    return matrix, int(fresh.sum())
