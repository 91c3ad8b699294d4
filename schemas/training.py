"""Contracts of the model layer: the training job's config and result, LoRA settings and the
registry's model version. Flat fields (not nested models) on TrainConfig so that every setting
is one CLI flag (`--lora-r 8`) and one key of a Ray Tune search space."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.config import MODELS_ENV, JobConfig, workspace_path

TASKS: tuple[str, ...] = ("intent_entity", "ranker", "retriever", "recommender")
# Validation metric each task selects checkpoints and early-stops on (higher is better).
TASK_METRIC: dict[str, str] = {"intent_entity": "val_score", "ranker": "val_ndcg@10", "retriever": "val_mrr",
                             "recommender": "val_ndcg@10"}
DEFAULT_BATCH_SIZE: dict[str, int] = {"intent_entity": 32, "ranker": 8, "retriever": 32, "recommender": 32}
DEFAULT_MAX_LENGTH: dict[str, int] = {"intent_entity": 64, "ranker": 128, "retriever": 96, "recommender": 32}
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("query", "key", "value", "dense")


class LoraSettings(BaseModel):
    """peft LoRA hyper-parameters; the task heads are always fully trained (modules_to_save)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, le=256)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


class TrainConfig(JobConfig):
    """`python -m jobs.train`: fine-tune one task head on a dataset snapshot with Ray Train."""

    task: Literal["intent_entity", "ranker", "retriever", "recommender"] = Field(..., description="which model to train")
    snapshot: str = Field(..., description="dataset snapshot name (python -m jobs.snapshot)")
    base_model: str = Field("minilm", description="encoder: minilm (packaged all-MiniLM-L6-v2), tiny-bert, a folder or an HF id")
    lora: bool = Field(True, description="LoRA adapters (else full fine-tuning)")
    lora_r: int = Field(8, ge=1, le=256, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling alpha")
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS), description="module names LoRA wraps")
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: Optional[int] = Field(None, ge=1, description="examples per worker per step (default: intent_entity 32, ranker 8 queries x list_size products, retriever 32 pairs)")
    lr: Optional[float] = Field(None, gt=0, description="peak learning rate (default 3e-4 with LoRA, 5e-5 full)")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="share of steps with linear warm-up")
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: Optional[int] = Field(None, ge=8, le=512, description="max tokens per text (default: intent_entity 64, ranker 128 for query + product, retriever 96)")
    patience: int = Field(2, ge=0, description="epochs without validation improvement before stopping (0: never stop early)")
    seed: int = 13
    validation_fraction: float = Field(0.1, gt=0, lt=0.9, description="share of train queries held out when the snapshot has no validation split")
    max_train_examples: Optional[int] = Field(None, ge=1, description="cap on training examples (smoke runs)")
    # task specifics
    ranker_loss: Literal["pointwise", "listwise"] = Field("listwise", description="ranker loss: graded BCE per pair or softmax over a query's list")
    ranker_pooling: Literal["residual", "segments", "mean", "cls"] = Field("residual", description="ranker score: residual = the encoder's own query/product cosine plus a zero-initialised linear term on the joint (cross) encoding; segments = cosine of the query and product token means of the joint encoding; mean/cls = a linear head on the mean of all tokens / on [CLS]")
    list_size: int = Field(16, ge=2, description="ranker: products per query list in training")
    batch_negatives: int = Field(8, ge=0, description="ranker: products judged for other queries of the batch added to each training list with gain 0")
    temperature: float = Field(0.05, gt=0, description="retriever InfoNCE temperature")
    hard_negatives: int = Field(1, ge=0, description="retriever: hard negatives (grade I) per positive")
    oos_threshold: float = Field(0.5, ge=0, le=1, description="intent confidence below this -> fallback intent")
    fallback_intent: str = Field("out_of_scope")
    word_shape: bool = Field(False, description="intent_entity: add a learned embedding of each word's shape (lower, Capitalised, UPPER, digit, mixed) to the input tokens; an uncased tokenizer otherwise loses the casing that marks names")
    # recommender: the evaluation split it trains on the train part of (stored with the model, so
    # jobs.evaluate_recs reproduces it), and its examples
    recs_split: Literal["time", "per_user"] = Field("time", description="recommender: train on the train part of the time split (purchases before --recs-cut) or of the per-user split")
    recs_cut: Optional[str] = Field(None, description="recommender, time split: ISO date of the cut (default: the date leaving --recs-test-share of purchases after it)")
    recs_test_share: Optional[float] = Field(None, gt=0, lt=1, description="recommender: share of purchases in the test part (default 0.2 time, 0.25 per user)")
    max_history: int = Field(20, ge=1, le=200, description="recommender: recent distinct items the user tower reads")
    targets_per_basket: int = Field(3, ge=1, description="recommender: next-basket items per training example's basket")
    sampled_negatives: int = Field(4, ge=0, description="recommender: catalogue items sampled uniformly per example as extra negatives")
    text_tower: Literal["lora", "frozen"] = Field("lora", description="recommender: tune the text encoder of the item tower with LoRA, or keep it frozen (its vectors computed once; training then costs the towers only, minutes on a CPU)")
    id_dropout: float = Field(0.3, ge=0, le=1, description="recommender: share of training item vectors whose ID embedding is dropped, so the text part alone can place an item never sold")
    # Ray Train
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP processes)")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL, bf16 autocast")
    cpus_per_worker: float = Field(1.0, gt=0)
    keep_checkpoints: int = Field(2, ge=1, description="best checkpoints kept by validation metric")
    max_failures: int = Field(1, ge=-1, description="worker-group restarts from the latest checkpoint (-1: unlimited)")
    storage_path: Optional[str] = workspace_path("ray_results", "Ray Train run folder (checkpoints)")
    run_name: Optional[str] = Field(None, description="Ray Train run name; re-using a name resumes that run")
    # outputs
    models_dir: Optional[str] = workspace_path("models", "model registry folder", env=MODELS_ENV)
    alias: Optional[str] = Field(None, description="alias to point at the new version (e.g. candidate)")
    init_from: Optional[str] = Field(None, description="warm start: a registry version or alias of the same task and base "
                                     "whose weights (LoRA merged) initialise the model; new label ids start fresh. "
                                     "The new version is saved as full weights")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.lora and not self.lora_targets:
            raise ValueError("lora_targets must name at least one module when lora is on")
        return self

    def lora_settings(self) -> Optional[LoraSettings]:
        if not self.lora or (self.task == "recommender" and self.text_tower == "frozen"):
            return None
        return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                            target_modules=list(self.lora_targets))

    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (3e-4 if self.lora else 5e-5)

    def batch(self) -> int:
        return self.batch_size or DEFAULT_BATCH_SIZE[self.task]

    def seq_len(self) -> int:
        return self.max_length or DEFAULT_MAX_LENGTH[self.task]

    def metric_name(self) -> str:
        return TASK_METRIC[self.task]


class ModelVersion(BaseModel):
    """One trained model in the registry (JSON under the models dir)."""

    name: str  # "<task>-v<version>"
    task: str
    version: int
    base_model: str
    lora: bool
    path: str  # artifact folder (absolute)
    label_spaces: dict[str, list[str]] = Field(default_factory=dict)
    snapshot: str = ""
    table_versions: dict[str, int] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    adapter_bytes: int = 0
    full_model_bytes: int = 0
    aliases: list[str] = Field(default_factory=list)
    gates: list[dict[str, Any]] = Field(default_factory=list, description="promotion gates run on this version (jobs.refresh): figures and verdict")
    created_at: datetime


class TrainResult(BaseModel):
    """What `jobs.train` prints as its last line."""

    ok: bool = True
    model_version: str
    task: str
    snapshot: str
    metric: str
    metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = Field(default_factory=list)
    train_seconds: float
    examples: dict[str, int] = Field(default_factory=dict)
    adapter_bytes: int = 0
    full_model_bytes: int = 0
    artifact_path: str
    checkpoint_path: str = ""
    restarts: int = 0
