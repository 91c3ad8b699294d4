"""Contracts of the recommendation stages: the offline evaluation's config and result."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from schemas.config import MODELS_ENV, JobConfig, workspace_path

BASELINES: tuple[str, ...] = ("popularity", "locale_popularity", "item_knn", "als", "bpr")


class EvaluateRecsConfig(JobConfig):
    """`python -m jobs.evaluate_recs`: recommendation systems side by side on held-out purchases."""

    snapshot: Optional[str] = Field(None, description="read events and products as this snapshot pinned them (default: the live tables)")
    splits: list[Literal["time", "per_user"]] = Field(default_factory=lambda: ["time", "per_user"],
                                                      description="protocols: time (train before a cut, test after) and/or per_user (75/25 of each user's items)")
    cut: Optional[str] = Field(None, description="time split: ISO date of the cut (default: the model's, else the date leaving --test-share after it)")
    test_share: Optional[float] = Field(None, gt=0, lt=1, description="share of purchases tested (default: time 0.2, per_user 0.25)")
    seed: int = Field(0, description="per-user split and bootstrap seed")
    k: int = Field(10, ge=1, le=100)
    baselines: list[Literal["popularity", "locale_popularity", "item_knn", "als", "bpr"]] = Field(
        default_factory=lambda: list(BASELINES), description="baselines to run beside the model")
    als_factors: int = Field(64, ge=2, description="ALS/BPR factors (implicit)")
    model: Optional[str] = Field(None, description="trained recommender: registry version or alias (recommender@production); "
                                                   "evaluated on the split it was trained for")
    models_dir: Optional[str] = workspace_path("models", "model registry folder", env=MODELS_ENV)
    resamples: int = Field(1000, ge=100, description="paired bootstrap resamples")
    auc_negatives: int = Field(100, ge=10)
    out: Optional[str] = Field(None, description="also write the figures as JSON here")
    report_dir: Optional[str] = workspace_path("reports", "folder of the markdown report")


class EvaluateRecsResult(BaseModel):
    """The job's last line: per split, every system's headline figures; the report's path."""

    ok: bool = True
    splits: dict[str, dict[str, Any]]
    model: Optional[str] = None
    report: str
    seconds: float
    notes: list[str] = Field(default_factory=list)


class RecommendConfig(JobConfig):
    """`python -m jobs.recommend`: every known user's top-N precomputed into the `recommendations` table."""

    model: str = Field("recommender@production", description="trained recommender: registry version or alias")
    models_dir: Optional[str] = workspace_path("models", "model registry folder", env=MODELS_ENV)
    snapshot: Optional[str] = Field(None, description="histories from this snapshot's events (default: the live tables)")
    k: int = Field(50, ge=1, le=1000, description="products per user")
    exclude_bought: bool = Field(True, description="leave out what the user already bought")
    in_stock_only: bool = Field(True, description="leave out products whose stock is 0 (unknown stock counts as in stock)")
    batch_size: int = Field(256, ge=1, description="users per model call (Ray Data map_batches batch size)")
    concurrency: int = Field(1, ge=1, le=256, description="recommender actors (the model and item vectors loaded once per actor)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs per actor (also its torch threads)")
    use_gpu: bool = Field(False, description="one GPU per actor")


class RecommendResult(BaseModel):
    """The batch job's last line."""

    ok: bool = True
    model_version: str
    users: int
    cold_users: int
    k: int
    table_version: int
    seconds: float
    users_per_s: float




class RefreshConfig(JobConfig):
    """`python -m jobs.refresh`: the online loop, one pass (run it on a schedule with `ray job submit`)."""

    model: str = Field("recommender@production", description="the served recommender alias: warm start, reference of the gate, promoted on a pass")
    models_dir: Optional[str] = workspace_path("models", "model registry folder", env=MODELS_ENV)
    metric: Literal["ndcg@10", "recall@10", "map@10", "hr@10", "mrr"] = Field(
        "ndcg@10", description="the declared gate metric, on the new snapshot's time-split test part")
    min_gain: float = Field(0.0, description="the candidate must beat production by more than this on --metric to be promoted")
    labels: bool = Field(True, description="refresh the behaviour labels (jobs.label weak) first, when the store has queries")
    base_model: str = Field("minilm", description="encoder when there is no production version to start from")
    epochs: int = Field(1, ge=1, le=100)
    lr: Optional[float] = Field(None, gt=0)
    batch_size: Optional[int] = Field(None, ge=1)
    max_train_examples: Optional[int] = Field(None, ge=1, description="cap on training examples per refresh")
    num_workers: int = Field(1, ge=1, description="Ray Train workers")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    resamples: int = Field(1000, ge=100, description="paired bootstrap resamples of the gate")
    recommend: bool = Field(True, description="after a promotion, precompute every user's list again (jobs.recommend)")
    recommend_k: int = Field(50, ge=1, le=1000)
    force: bool = Field(False, description="refresh even when production was trained on this very data")


class RefreshResult(BaseModel):
    """The loop's last line: what it did, the gate's figures and verdict."""

    ok: bool = True
    snapshot: str
    production_before: str = "none"
    production_after: str = "none"
    candidate: Optional[str] = None
    promoted: bool = False
    gate: dict[str, Any] = Field(default_factory=dict)
    steps: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = Field(default_factory=list)
