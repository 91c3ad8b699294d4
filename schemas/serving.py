"""The Serve app's config: which store and models it serves, how each stage behaves, and the
per-deployment Serve options (replicas, autoscaling, resources, batching) that a Serve config
file (`serve/config.yaml`) can also override.

The same object reaches every deployment as a plain dict (small and picklable); each replica
loads its models and opens its tables itself.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.config import DB_ENV, MODELS_ENV, WorkspaceConfig, workspace_path
from schemas.evaluation import DEFAULT_FTS_COLUMNS  # served as evaluated


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="registry version or alias of the arm's ranker, e.g. ranker@candidate")
    share: float = Field(..., ge=0, le=1, description="fraction of users (or sessions) in this arm")


class Experiment(BaseModel):
    """An A/B split of the ranking stage by a stable hash of the user (or session)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("ranker-ab", description="salt of the hash: a new name reshuffles who is in which arm")
    unit: Literal["user", "session"] = "user"
    arms: dict[str, Arm]

    @model_validator(mode="after")
    def _shares(self) -> "Experiment":
        total = sum(a.share for a in self.arms.values())
        if not self.arms or abs(total - 1.0) > 1e-6:
            raise ValueError(f"experiment {self.name!r}: arm shares must sum to 1 (they sum to {total:g})")
        return self


class ServeAppConfig(WorkspaceConfig):
    """`serve run serve/config.yaml` (args) or `python -m serve.run`: what the search app serves."""

    model_config = ConfigDict(extra="forbid")
    db: Optional[str] = workspace_path("lancedb", "LanceDB URI of the store (products, suggestions)", env=DB_ENV)
    models_dir: Optional[str] = workspace_path("models", "model registry folder", env=MODELS_ENV)
    understanding_model: str = Field("intent_entity@production", description="intent+entity model (registry name or alias); 'none' disables understanding")
    encoder: str = Field("minilm", description="query/product encoder: minilm, tiny-bert, a retriever version/alias or a folder")
    fusion: Optional[str] = Field(None, description="registry fusion version/alias fitted by jobs.fuse; default plain RRF")
    ranker_model: str = Field("ranker@production", description="cross-encoder (registry name or alias); 'none' serves the first stage's order")
    experiment: Optional[Experiment] = Field(None, description="A/B arms of the ranker; replaces ranker_model when set")
    shadow_model: Optional[str] = Field(None, description="a candidate ranker scoring the same requests without changing the answer; "
                                                          "agreement logged (with ranker_model none: against the first stage's order)")
    shadow_share: float = Field(1.0, gt=0, le=1, description="share of requests the shadow model scores (it costs a ranker pass each)")
    ranker_quantize: Literal["none", "int8"] = Field(
        "none", description="int8: dynamic int8 quantisation of the ranker's Linear layers on CPU (2-3x faster; "
                            "NDCG cost in benchmarks/results/rerank_cost.json); the served version reads name+int8")
    rules: Optional[str] = Field(None, description="business rules YAML (versioned); none: no rules")
    retrieve_depth: int = Field(100, ge=1, le=1000, description="first-stage candidates per request")
    rerank_depth: int = Field(20, ge=1, le=200, description="how many of them the cross-encoder re-scores")
    rerank_fusion_k: Optional[int] = Field(60, ge=1, description="RRF of the ranker's order with the first stage's (as evaluated); null = the ranker's order alone")
    fts_columns: list[str] = Field(default_factory=lambda: list(DEFAULT_FTS_COLUMNS))
    ann: bool = Field(False, description="search vectors through the table's ANN index instead of exact cosine")
    brand_policy: Literal["boost", "filter", "off"] = Field("boost", description="what a brand the query names does")
    price_policy: Literal["filter", "off"] = Field("filter", description="what a price range the query names does")
    refresh_s: float = Field(10.0, gt=0, description="how often replicas look for new catalogue rows and vectors (seconds)")
    reload_s: float = Field(5.0, gt=0, description="how often model replicas look for a promoted version of their alias (seconds)")
    ranker_timeout_s: float = Field(5.0, gt=0, description="past this the answer is the first stage's order, flagged degraded")
    understanding_timeout_s: float = Field(3.0, gt=0)
    suggest: bool = Field(True, description="serve /v1/suggest from the suggestions table (jobs.suggest)")
    personal_weight: float = Field(0.0, ge=0, le=1, description="personalised search: weight of the user's brand/category "
                                   "affinity (jobs.suggest) against the scaled ranking score; 0 = off "
                                   "(measured in benchmarks/results/personal_search.json)")
    personal_price_share: float = Field(0.5, ge=0, le=1, description="personalised search: share of price fit (the user's "
                                        "usual price level) against brand/category taste in the personal signal")
    recommend: bool = Field(True, description="serve /v1/recommend/home, /similar and /cart (the Recommender deployment)")
    recommender_model: str = Field("recommender@production", description="two-tower recommender (registry name or alias); "
                                   "an alias without a version yet, or 'none', serves popularity, co-purchase and the catalogue's vectors")
    recs_stats_refresh_s: float = Field(60.0, gt=0, description="popularity and co-purchase are re-counted at most this often when events arrive (seconds)")
    recs_trend_half_life_days: float = Field(14.0, gt=0, description="a purchase this many days older than the newest event counts half in popularity")
    recs_min_locale_buyers: int = Field(20, ge=1, description="a locale with fewer buyers gets every locale's popularity")
    recs_candidates: int = Field(3, ge=1, le=10, description="the Recommender returns size x this many, so business rules have room")
    events: bool = Field(True, description="accept POST /v1/events (the EventWriter deployment)")
    api_keys_file: Optional[str] = Field(None, description="file of API keys for POST /v1/events, one per line "
                                         "(also $SHOPSEARCH_API_KEYS, $SHOPSEARCH_API_KEYS_FILE); never in the repository")
    events_compact_s: float = Field(300.0, gt=0, description="how often the EventWriter compacts the events table (seconds)")
    torch_threads: Optional[int] = Field(None, ge=1, description="torch threads per model replica (default: its num_cpus)")
    deployments: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Serve options per deployment name (num_replicas, autoscaling_config, max_ongoing_requests, "
                    "max_queued_requests, ray_actor_options, user_config); a Serve config file overrides these too")

    def stage(self) -> dict[str, Any]:
        """What each deployment's constructor receives: this config as plain JSON."""
        return self.model_dump(mode="json")
