"""The product index: vector columns in `products`, ANN + BM25 indexes, and the search helpers.

Vectors live in the products table itself, in three nullable columns that the pydantic record
does not declare: `vector` (fixed_size_list<float32>[dim], L2-normalised), `vector_model` (which
encoder made it) and `vector_text_hash` (hash of the exact text embedded). Ingest upserts send
only the record's columns; LanceDB's merge_insert treats that as a partial update, so an updated
product keeps its old vector and old hash (stale, and detected: its text no longer hashes to
`vector_text_hash`) and a new product gets nulls. The embed job therefore re-embeds exactly the
rows whose text hash or model differ, and everything when the dimension changes.

Vector index rule (`index_plan`), for `n` embedded rows of dimension `dim`:
- n < ann_min_rows (default 10,000): no ANN index. A flat scan of 10k x 384 floats is ~4M
  multiply-adds per query (a few ms), exact, and there is nothing to train or go stale.
- otherwise IVF_PQ, cosine: num_partitions = round(sqrt(n)) (~100 rows per partition at 10k,
  ~1,000 at 1M), num_sub_vectors = dim/8 (8 dims per 8-bit code: 384 -> 48 bytes per vector),
  searched with nprobes=20 and refine_factor=10 (re-scores 10x the candidates with full vectors),
  50 from 500,000 rows (`refine_for`): benchmarks/index.py measured recall@10 0.995 with 10 at 100k
  rows, but 0.74 with 10 and 0.979 with 50 at 1M (17 ms vs 100 ms for exact numpy).
- IVF_HNSW_SQ on request (`--index ivf_hnsw_sq`): num_partitions = max(1, round(n / 100,000)),
  m=20, ef_construction=300; more memory, no PQ error.
BM25: one native LanceDB FTS index per text column (title and brand by default: adding the
description lowered BM25 on the ESCI train split; stemmed, lower-cased, stop words removed),
queried with a multi-match over those columns.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Optional, Sequence

import numpy as np
import pyarrow as pa

VECTOR_COLUMN = "vector"
MODEL_COLUMN = "vector_model"
HASH_COLUMN = "vector_text_hash"
VECTOR_COLUMNS = (VECTOR_COLUMN, MODEL_COLUMN, HASH_COLUMN)
ANN_MIN_ROWS = 10_000
PQ_MIN_ROWS = 256  # PQ trains 256 centroids per sub-vector
DEFAULT_NPROBES = 20
DEFAULT_REFINE_FACTOR = 10
LARGE_INDEX_ROWS = 500_000  # from here the PQ shortlist is re-scored with LARGE_REFINE_FACTOR
LARGE_REFINE_FACTOR = 50
HNSW_ROWS_PER_PARTITION = 100_000


def text_hash(text: str) -> str:
    """Stable hash of the embedded text (16 hex chars of SHA-1)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, dim) float array -> Arrow fixed_size_list<float32>[dim]."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def vector_dim(schema: pa.Schema) -> Optional[int]:
    """Dimension of the table's vector column, None when it has none."""
    if VECTOR_COLUMN not in schema.names:
        return None
    typ = schema.field(VECTOR_COLUMN).type
    return typ.list_size if pa.types.is_fixed_size_list(typ) else -1


def ensure_vector_columns(tbl, dim: int) -> str:
    """Add the vector columns (dropping ones of another dimension); returns why it reset, or ''."""
    current = vector_dim(tbl.schema)
    if current == dim and all(c in tbl.schema.names for c in VECTOR_COLUMNS):
        return ""
    reason = "no vector column yet" if current is None else f"vector dim {current} -> {dim}: re-embedding all"
    present = [c for c in VECTOR_COLUMNS if c in tbl.schema.names]
    if present:
        for idx in tbl.list_indices():
            if set(idx.columns) & set(present):
                tbl.drop_index(idx.name)
        tbl.drop_columns(present)
    tbl.add_columns([pa.field(VECTOR_COLUMN, pa.list_(pa.float32(), dim)), pa.field(MODEL_COLUMN, pa.string()),
                     pa.field(HASH_COLUMN, pa.string())])
    return reason


def plan_embedding(rows: list[dict[str, Any]], text_of: Callable[[dict], str], model_key: str,
                   force: bool = False) -> tuple[list[dict[str, str]], int]:
    """Rows to (re-)embed as {product_id, text, text_hash}, and how many are up to date.

    A row is up to date when its vector is present, made by `model_key`, from the same text.
    """
    todo, skipped = [], 0
    for row in rows:
        text = text_of(row)
        digest = text_hash(text)
        fresh = (row.get(VECTOR_COLUMN) is not None and row.get(MODEL_COLUMN) == model_key
                 and row.get(HASH_COLUMN) == digest)
        if fresh and not force:
            skipped += 1
        else:
            todo.append({"product_id": row["product_id"], "text": text, "text_hash": digest})
    return todo, skipped


def write_vectors(tbl, updates: pa.Table) -> int:
    """Merge (product_id, vector, vector_model, vector_text_hash) into matching rows; one commit.

    Rows deleted meanwhile are not re-created (update only). Returns the new table version.
    """
    if updates.num_rows == 0:
        return tbl.version
    result = tbl.merge_insert("product_id").when_matched_update_all().execute(updates.select(["product_id", *VECTOR_COLUMNS]))
    return result.version


def default_sub_vectors(dim: int) -> int:
    """dim/8 when it divides, else the largest divisor of dim not above dim/8 (at least 1)."""
    target = max(1, dim // 8)
    return next(d for d in range(target, 0, -1) if dim % d == 0)


def refine_for(n_rows: int) -> int:
    """The IVF_PQ refine factor for a table of `n_rows` vectors (module docstring)."""
    return LARGE_REFINE_FACTOR if n_rows >= LARGE_INDEX_ROWS else DEFAULT_REFINE_FACTOR


def index_plan(n_rows: int, dim: int, index: str = "auto", ann_min_rows: int = ANN_MIN_ROWS,
               num_partitions: Optional[int] = None, num_sub_vectors: Optional[int] = None) -> dict[str, Any]:
    """Which vector index a catalogue of `n_rows` vectors gets, with its parameters (module docstring)."""
    kind = index if index != "auto" else ("ivf_pq" if n_rows >= ann_min_rows else "none")
    if kind != "none" and n_rows < PQ_MIN_ROWS:
        return {"type": "none", "params": {"search": "exact flat scan", "rows": n_rows},
                "reason": f"{n_rows} rows are too few to train {kind} (needs >= {PQ_MIN_ROWS})"}
    if kind == "none":
        why = f"{n_rows} rows < ann_min_rows {ann_min_rows}" if index == "auto" else "requested"
        return {"type": "none", "params": {"search": "exact flat scan", "rows": n_rows}, "reason": why}
    if kind == "ivf_pq":
        parts = num_partitions or max(1, round(math.sqrt(n_rows)))
        params = {"distance_type": "cosine", "num_partitions": min(parts, n_rows),
                  "num_sub_vectors": num_sub_vectors or default_sub_vectors(dim), "num_bits": 8,
                  "nprobes": DEFAULT_NPROBES, "refine_factor": refine_for(n_rows)}
        return {"type": "IVF_PQ", "params": params, "reason": f"{n_rows} rows" + (" >= ann_min_rows" if index == "auto" else "")}
    parts = num_partitions or max(1, round(n_rows / HNSW_ROWS_PER_PARTITION))
    return {"type": "IVF_HNSW_SQ", "params": {"distance_type": "cosine", "num_partitions": parts, "m": 20,
                                              "ef_construction": 300, "nprobes": min(parts, DEFAULT_NPROBES)},
            "reason": "requested"}


def existing_vector_index(tbl) -> Optional[Any]:
    return next((i for i in tbl.list_indices() if VECTOR_COLUMN in i.columns), None)


def build_vector_index(tbl, plan: dict[str, Any]) -> None:
    """Create (replace) the planned vector index, or drop the existing one for a flat plan."""
    from lancedb.index import HnswSq, IvfPq

    current = existing_vector_index(tbl)
    if plan["type"] == "none":
        if current is not None:
            tbl.drop_index(current.name)
        return
    p = plan["params"]
    if plan["type"] == "IVF_PQ":
        config = IvfPq(distance_type=p["distance_type"], num_partitions=p["num_partitions"],
                       num_sub_vectors=p["num_sub_vectors"], num_bits=p["num_bits"])
    else:
        config = HnswSq(distance_type=p["distance_type"], num_partitions=p["num_partitions"], m=p["m"],
                        ef_construction=p["ef_construction"])
    tbl.create_index(VECTOR_COLUMN, config=config, replace=True)


def build_fts_indexes(tbl, columns: Sequence[str]) -> list[str]:
    """(Re)build one BM25 index per text column; returns the columns indexed."""
    from lancedb.index import FTS

    done = []
    for col in columns:
        if col not in tbl.schema.names or not pa.types.is_string(tbl.schema.field(col).type):
            raise ValueError(f"FTS column {col!r} is not a string column of {tbl.name}")
        tbl.create_index(col, config=FTS(), replace=True)
        done.append(col)
    return done


def fts_columns_indexed(tbl) -> list[str]:
    return sorted(c for i in tbl.list_indices() if i.index_type.upper() in ("FTS", "INVERTED") for c in i.columns)


def sql_list(ids: Sequence[str]) -> str:
    """Values as a quoted SQL list for `IN (...)` predicates."""
    return ", ".join("'" + str(i).replace("'", "''") + "'" for i in ids)


def fts_search(tbl, query: str, columns: Sequence[str], limit: int,
               restrict_to: Optional[Sequence[str]] = None, where: Optional[str] = None) -> list[tuple[str, float]]:
    """BM25 (product_id, score) best first; `restrict_to` limits the search to those product ids,
    `where` (LanceDB SQL) to the products it selects."""
    from lancedb.query import MatchQuery, MultiMatchQuery

    if not query or not query.strip() or limit <= 0:
        return []
    q = MatchQuery(query, columns[0]) if len(columns) == 1 else MultiMatchQuery(query, list(columns))
    builder = tbl.search(q, query_type="fts")
    if restrict_to is not None:
        if not restrict_to:
            return []
        where = f"product_id IN ({sql_list(restrict_to)})" + (f" AND ({where})" if where else "")
    if where:
        builder = builder.where(where, prefilter=True)
    rows = builder.select(["product_id", "_score"]).limit(limit).to_arrow()
    return list(zip(rows["product_id"].to_pylist(), rows["_score"].to_pylist()))


def vector_search(tbl, vector: np.ndarray, limit: int, nprobes: int = DEFAULT_NPROBES,
                  refine_factor: Optional[int] = DEFAULT_REFINE_FACTOR, where: Optional[str] = None) -> list[tuple[str, float]]:
    """Nearest products by cosine through the table's index (flat scan when it has none), prefiltered by `where`."""
    builder = tbl.search(np.asarray(vector, dtype=np.float32), vector_column_name=VECTOR_COLUMN).distance_type("cosine")
    builder = builder.nprobes(nprobes)
    if where:
        builder = builder.where(where, prefilter=True)
    if refine_factor:
        builder = builder.refine_factor(refine_factor)
    rows = builder.select(["product_id", "_distance"]).limit(limit).to_arrow()
    return list(zip(rows["product_id"].to_pylist(), (1.0 - np.asarray(rows["_distance"].to_pylist())).tolist()))


def exact_search(matrix: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by dot product (cosine for normalised vectors): (indices, scores), best first."""
    matrix = np.asarray(matrix, dtype=np.float32)
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    k = min(k, matrix.shape[0])
    idx_out = np.zeros((queries.shape[0], k), dtype=np.int64)
    score_out = np.zeros((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start:start + chunk] @ matrix.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < matrix.shape[0] else np.tile(np.arange(k), (sims.shape[0], 1))
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)  # score desc, then row index asc (deterministic ties)
        idx_out[start:start + chunk] = np.take_along_axis(part, order, axis=1)
        score_out[start:start + chunk] = np.take_along_axis(part_scores, order, axis=1)
    return idx_out, score_out


def rrf(rankings: Sequence[Sequence[Hashable]], k: int = 60, limit: Optional[int] = None) -> list[tuple[Hashable, float]]:
    """Reciprocal-rank fusion: score(d) = sum over lists of 1 / (k + rank), rank 1-based.

    Ties go to the item with the better best rank, then to first appearance (deterministic).
    """
    scores: dict[Hashable, float] = {}
    best: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    seen = 0
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            best[item] = min(best.get(item, rank), rank)
            if item not in first:
                first[item] = seen
                seen += 1
    fused = sorted(scores, key=lambda d: (-scores[d], best[d], first[d]))
    return [(d, scores[d]) for d in fused[:limit]]


@dataclass
class TextEncoder:
    """A loaded encoder: `encode(texts)` -> L2-normalised float32 (n, dim); `key` names it in `vector_model`."""

    key: str
    dim: int
    max_length: int
    encode: Callable[[Sequence[str]], np.ndarray]


def load_text_encoder(name: str, models_dir: Optional[str] = None, max_length: Optional[int] = None,
                      device: Optional[str] = None, batch_size: int = 64) -> TextEncoder:
    """Packaged minilm / tiny-bert, a saved retriever folder or a plain HF folder, a retriever registry
    version or alias, else a Hugging Face id (cache only when offline). JobError says what was tried."""
    from ray_app.cli import JobError
    from ray_app.models.encoder import (DEFAULT_MAX_LENGTH, MINILM_ALIASES, TINY_ALIASES, ModelLoadError,
                                        backbone_of, encode_texts, load_encoder)

    def need_retriever(task: str, what: str) -> None:
        if task != "retriever":
            raise JobError(f"{what} is a {task} model; product vectors need a retriever (or a plain encoder)")

    raw, length = name.strip(), DEFAULT_MAX_LENGTH
    path = Path(raw).expanduser()
    try:
        if raw.lower() in MINILM_ALIASES + TINY_ALIASES:
            key = "minilm" if raw.lower() in MINILM_ALIASES else "tiny-bert"
            model, tokenizer = load_encoder(key)
        elif (path / "meta.json").is_file():  # a saved-model folder written by jobs.train
            from ray_app.models.lora import load_saved_model

            model, tokenizer, meta = load_saved_model(path, merge=True)
            need_retriever(meta["task"], raw)
            key, length = str(path.resolve()), int(meta.get("max_length", 64))
        elif path.exists():
            key = str(path.resolve())
            model, tokenizer = load_encoder(key)
        else:
            from ray_app.registry import Registry, RegistryError

            try:
                version = Registry(models_dir).resolve(raw, task="retriever")
            except RegistryError as reg_exc:
                try:
                    model, tokenizer = load_encoder(raw)
                except ModelLoadError as exc:
                    raise JobError(f"{exc}; model registry: {reg_exc}") from exc
                key = raw
            else:
                need_retriever(version.task, version.name)
                loaded = Registry(models_dir).load_model(version.name)
                model, tokenizer, key, length = loaded.model, loaded.tokenizer, version.name, loaded.max_length
    except ModelLoadError as exc:
        raise JobError(str(exc)) from exc
    if device:
        model.to(device)
    model.eval()
    length = max_length or length

    def encode(texts: Sequence[str]) -> np.ndarray:
        return encode_texts(model, tokenizer, list(texts), batch_size=batch_size, max_length=length, device=device)

    return TextEncoder(key=key, dim=int(backbone_of(model).config.hidden_size), max_length=length, encode=encode)
