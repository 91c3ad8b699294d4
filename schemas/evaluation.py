"""Contracts of the product index job (`jobs.embed`) and the offline evaluation (`jobs.evaluate`).

Flat fields so every setting is one CLI flag; results are what the jobs print as their last line.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field, field_validator

from schemas.config import MODELS_ENV, JobConfig, workspace_path

DEFAULT_FTS_COLUMNS: tuple[str, ...] = ("title", "brand")  # description hurt BM25 on the ESCI train split


class EmbedConfig(JobConfig):
    """`python -m jobs.embed`: product vectors into the products table, then ANN + BM25 indexes."""

    model: str = Field("minilm", description="encoder: minilm (packaged all-MiniLM-L6-v2), tiny-bert, a retriever "
                                             "registry version or alias (retriever-v3, production), a folder or an HF id")
    models_dir: Optional[str] = workspace_path("models", "model registry folder", env=MODELS_ENV)
    batch_size: int = Field(64, ge=1, le=4096, description="texts per encoder call (Ray Data map_batches batch size)")
    concurrency: int = Field(1, ge=1, le=256, description="encoder actors in the Ray Data actor pool")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per encoder actor (also its torch threads)")
    use_gpu: bool = Field(False, description="one GPU per encoder actor")
    max_length: Optional[int] = Field(None, ge=8, le=512, description="max tokens per product text (default: the model's)")
    force: bool = Field(False, description="re-embed every product, even unchanged ones")
    index: Literal["auto", "none", "ivf_pq", "ivf_hnsw_sq"] = Field(
        "auto", description="vector index: auto = IVF_PQ from --ann-min-rows rows on, else none (exact flat search)")
    ann_min_rows: int = Field(10_000, ge=1, description="auto: smallest catalogue that gets an ANN index")
    num_partitions: Optional[int] = Field(None, ge=1, description="IVF partitions (default round(sqrt(rows)))")
    num_sub_vectors: Optional[int] = Field(None, ge=1, description="PQ sub-vectors (default dim/8)")
    fts: bool = Field(True, description="build the BM25 full-text indexes")
    fts_columns: list[str] = Field(default_factory=lambda: list(DEFAULT_FTS_COLUMNS),
                                   description="text columns that get a BM25 (FTS) index")
    snapshot: Optional[str] = Field(None, description="after indexing, pin every table under this snapshot name")


class VectorIndexInfo(BaseModel):
    type: str  # "none" (flat exact search), "IVF_PQ", "IVF_HNSW_SQ"
    params: dict[str, Any] = Field(default_factory=dict)
    rebuilt: bool = False
    reason: str = ""


class EmbedResult(BaseModel):
    """What `jobs.embed` prints as its last line."""

    ok: bool = True
    model: str
    dim: int
    total: int
    embedded: int
    skipped: int
    reset_reason: str = ""
    vector_index: VectorIndexInfo
    fts_columns: list[str] = Field(default_factory=list)
    embed_seconds: float = 0.0
    vectors_per_s: float = 0.0
    seconds: float
    table_version: int
    snapshot: Optional[str] = None


class EvaluateConfig(JobConfig):
    """`python -m jobs.evaluate`: ranking, retrieval and query understanding on held-out data."""

    dataset: str = Field("", description="only queries of this dataset (queries.dataset, e.g. esci, snips); '' = all")
    split: str = Field("test", description="split of the queries evaluated")
    snapshot: Optional[str] = Field(None, description="read queries/judgments/labels as pinned by this snapshot "
                                                      "(products are always the live, indexed table)")
    baseline: str = Field("minilm", description="untuned bi-encoder compared against ('none' skips it)")
    retriever: Optional[str] = Field(None, description="fine-tuned bi-encoder: registry version or alias (retriever@production)")
    ranker: list[str] = Field(default_factory=list, description="fine-tuned cross-encoder: registry version or alias; "
                                                                "repeat to compare several over the same candidates")
    intent_model: Optional[str] = Field(None, description="joint intent + entity model: registry version or alias")
    fusion: Optional[str] = Field(None, description="also score the hybrid with these fitted fusion settings: a registry "
                                                    "fusion version or alias (fusion@production; python -m jobs.fuse)")
    models_dir: Optional[str] = workspace_path("models", "model registry folder", env=MODELS_ENV)
    fts_columns: list[str] = Field(default_factory=lambda: list(DEFAULT_FTS_COLUMNS),
                                   description="columns BM25 searches (each needs an FTS index: run jobs.embed)")
    k: int = Field(10, ge=1, description="cut-off of NDCG@k in the full-catalogue protocol")
    recall_k: int = Field(100, ge=1, description="depth retrieved per query (Recall@k)")
    rerank_depth: int = Field(50, ge=1, description="candidates the cross-encoder re-ranks")
    rerank_base: Literal["auto", "retriever", "hybrid"] = Field(
        "auto", description="whose top candidates the cross-encoder re-ranks (auto: the hybrid)")
    rerank_fusion: bool = Field(True, description="also report the re-ranking stage that fuses the cross-encoder's order "
                                                   "with the first stage's (reciprocal-rank fusion, --rrf-k)")
    rrf_k: int = Field(60, ge=1, description="reciprocal-rank fusion constant: score = sum 1/(rrf_k + rank)")
    ann: bool = Field(False, description="vector search through the table's ANN index when its vectors are the "
                                         "model's (default: exact brute force, so models compare without index error)")
    compare_to: str = Field("bm25", description="reference system for the paired bootstrap comparison of every other "
                            "system (a system name from the report, e.g. bm25, hybrid; 'none' skips it)")
    bootstrap: int = Field(2000, ge=100, le=100_000, description="bootstrap resamples of the queries for the comparison")
    max_queries: Optional[int] = Field(None, ge=1, description="evaluate only the first N queries (smoke runs)")
    batch_size: int = Field(64, ge=1, description="encoder batch size")
    report_dir: Optional[str] = workspace_path("reports", "where eval-<timestamp>.md goes")
    out: Optional[str] = Field(None, description="figures as JSON (default <report_dir>/eval-<timestamp>.json)")

    @field_validator("ranker", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else [] if value is None else value


class EvaluateResult(BaseModel):
    """What `jobs.evaluate` prints as its last line."""

    ok: bool = True
    queries: int
    products: int
    products_version: int
    # judgments of the split that could not be scored: product or query not in the snapshot/store
    unscored: dict[str, int] = Field(default_factory=dict)
    grade_scales: list[str] = Field(default_factory=list)  # specs of the grade scales judged (schemas.grades)
    judged_list: dict[str, dict[str, Optional[Union[int, float]]]] = Field(default_factory=dict)  # None: undefined
    full_catalogue: dict[str, dict[str, Optional[Union[int, float]]]] = Field(default_factory=dict)
    query_understanding: dict[str, Optional[Union[int, float]]] = Field(default_factory=dict)
    intent_model: Optional[str] = None  # the version --intent-model resolved to
    skipped: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    report_path: str
    out_path: str
    seconds: float


class FuseConfig(JobConfig):
    """`python -m jobs.fuse`: fit the hybrid's fusion of BM25 and an encoder on validation queries, register it."""

    snapshot: str = Field(..., description="dataset snapshot whose queries and judgments the fusion is fitted on")
    retriever: str = Field("minilm", description="encoder fused with BM25: minilm, a retriever registry version "
                                                 "or alias, a folder")
    split: str = Field("validation", description="split fitted on; validation is carved from train (by the training "
                                                 "job's query hash) when the snapshot has none")
    dataset: str = Field("", description="only queries of this dataset (queries.dataset); '' = all")
    validation_fraction: Optional[float] = Field(None, gt=0, lt=0.9, description="share of train queries carved off "
                                                 "(default: the retriever version's training setting, else 0.1)")
    seed: Optional[int] = Field(None, description="seed of the carve's query hash (default: the retriever's, else 13)")
    methods: list[Literal["rrf", "minmax", "zscore"]] = Field(default_factory=lambda: ["rrf", "minmax", "zscore"],
                                                              description="fusion methods tried")
    weight_step: float = Field(0.05, gt=0, le=0.5, description="grid step of the dense list's share of the weight, 0 to 1")
    rrf_ks: list[int] = Field(default_factory=lambda: [10, 30, 60], description="rrf constants tried")
    depth: int = Field(100, ge=1, description="products each list holds per query (jobs.evaluate's --recall-k)")
    k: int = Field(10, ge=1, description="cut-off of the NDCG@k maximised (full catalogue)")
    fts_columns: list[str] = Field(default_factory=lambda: list(DEFAULT_FTS_COLUMNS), description="columns BM25 searches")
    models_dir: Optional[str] = workspace_path("models", "model registry folder", env=MODELS_ENV)
    alias: Optional[str] = Field(None, description="alias to point at the new fusion version (e.g. candidate)")
    top: int = Field(8, ge=1, description="settings shown in the printed table, best first")
    batch_size: int = Field(64, ge=1, description="encoder batch size")

    @field_validator("rrf_ks")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if not ks or min(ks) < 1:
            raise ValueError(f"rrf_ks must be one or more integers >= 1; got {ks}")
        return ks


class FuseResult(BaseModel):
    """What `jobs.fuse` prints as its last line."""

    ok: bool = True
    fusion_version: str
    alias: Optional[str] = None
    spec: dict[str, Any]
    about: str
    fitted_for: str  # the encoder key fused with BM25
    snapshot: str
    split: str
    carved: bool  # the validation split was carved from train here
    queries: int
    metric: str
    chosen: float  # validation figure of the chosen setting
    rrf_default: float  # of today's hybrid (rrf k=60, equal weights)
    bm25_only: float
    dense_only: float
    tried: int
    top: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    seconds: float
