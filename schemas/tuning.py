"""Contracts of the hyperparameter search (`python -m tune.search`): its config, the search-space
syntax, one row per trial and the result line.

TuneConfig extends TrainConfig, so every training flag (`--max-length 32`, `--base-model`) sets
the base every trial starts from, and every numeric/boolean TrainConfig field can be searched.
The search space is a few `name=kind:args` strings (`lr=loguniform:1e-4:3e-3`,
`lora_r=choice:4,8,16`) rather than JSON: one shell word per parameter, typed by the field it
targets and checked against that field's bounds before any Ray work (a bad one exits 2).
Parsing needs no Ray; tune/search.py turns the specs into ray.tune domains.
"""
from __future__ import annotations

import typing
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from schemas.config import workspace_path
from schemas.training import TrainConfig

KINDS = ("fixed", "choice", "uniform", "loguniform", "randint", "ratio")
# TrainConfig fields a trial may not vary: the data, the infrastructure, the outputs
NOT_SEARCHABLE = frozenset({
    "db", "ray_address", "num_cpus", "quiet", "task", "snapshot", "base_model", "lora_targets",
    "validation_fraction", "max_train_examples", "num_workers", "use_gpu", "cpus_per_worker",
    "keep_checkpoints", "max_failures", "storage_path", "run_name", "models_dir", "alias",
    "fallback_intent", "recs_split", "recs_cut", "recs_test_share", "max_history", "targets_per_basket",
    "sampled_negatives", "text_tower",  # the recommender's data (built once for every trial) and its text tower
})
SYNTAX = ("NAME=KIND:ARGS with KIND one of fixed:V (or just NAME=V), choice:A,B,C, uniform:LO:HI, "
          "loguniform:LO:HI, randint:LO:HI (HI excluded), ratio:K (lora_alpha = K x lora_r)")


class ParamSpec(BaseModel):
    """One searched (or pinned) TrainConfig field: `kind` and its typed arguments."""

    name: str
    kind: Literal["fixed", "choice", "uniform", "loguniform", "randint", "ratio"]
    args: list[Any]

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.name}={self.args[0]}"
        sep = "," if self.kind == "choice" else ":"
        return f"{self.name}={self.kind}:{sep.join(str(a) for a in self.args)}"


def _field_type(name: str) -> type:
    annotation = TrainConfig.model_fields[name].annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation
    if typing.get_origin(base) is Literal:
        return str
    return base if base in (int, float, bool, str) else object


def _typed(name: str, text: str) -> Any:
    kind = _field_type(name)
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            value = float(text)
            if value != int(value):
                raise ValueError
            return int(value)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise ValueError(f"search {name}: {text!r} is not a valid {kind.__name__}") from None


def parse_param(item: str) -> ParamSpec:
    """`lr=loguniform:1e-4:3e-3` -> ParamSpec (types from the TrainConfig field; bounds checked later)."""
    if "=" not in item:
        raise ValueError(f"search {item!r}: expected {SYNTAX}")
    name, spec = (s.strip() for s in item.split("=", 1))
    name = name.replace("-", "_")
    if name not in TrainConfig.model_fields:
        raise ValueError(f"search {name!r}: not a training setting (see python -m jobs.train --help)")
    if name in NOT_SEARCHABLE or _field_type(name) is object:
        raise ValueError(f"search {name!r}: not searchable; set it with --{name.replace('_', '-')} instead")
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        if rest and kind.isidentifier():
            raise ValueError(f"search {name}: unknown kind {kind!r}; expected {SYNTAX}")
        kind, rest = "fixed", spec  # a bare value pins the field
    if not rest.strip():
        raise ValueError(f"search {name}: {kind} needs arguments; expected {SYNTAX}")
    ftype = _field_type(name)
    if kind == "choice":
        args = [_typed(name, v) for v in rest.split(",") if v.strip()]
        if not args:
            raise ValueError(f"search {name}: choice needs at least one value")
    elif kind == "fixed":
        args = [_typed(name, rest)]
    elif kind == "ratio":
        if name != "lora_alpha":
            raise ValueError(f"search {name}: ratio:K only ties lora_alpha to lora_r (lora_alpha=ratio:2)")
        args = [float(_typed("lora_dropout", rest))]
        if args[0] <= 0:
            raise ValueError(f"search lora_alpha: ratio must be > 0, got {rest}")
    else:
        parts = rest.split(":")
        if len(parts) != 2:
            raise ValueError(f"search {name}: {kind} takes LO:HI, got {rest!r}")
        if kind == "randint" and ftype is not int:
            raise ValueError(f"search {name}: randint needs an integer setting; use uniform or loguniform")
        if kind in ("uniform", "loguniform") and ftype is not float:
            raise ValueError(f"search {name}: {kind} needs a float setting; use choice or randint for {ftype.__name__}")
        args = [_typed(name, p) for p in parts]
        if not args[0] < args[1]:
            raise ValueError(f"search {name}: LO must be < HI, got {rest!r}")
        if kind == "loguniform" and args[0] <= 0:
            raise ValueError(f"search {name}: loguniform needs LO > 0, got {rest!r}")
    return ParamSpec(name=name, kind=kind, args=args)


def default_space(task: str, lora: bool, epochs: int) -> dict[str, ParamSpec]:
    """The LoRA search space: lr, rank (alpha tied at 2 x r), dropout, batch size; epochs pinned at
    the maximum because ASHA stops weak trials (and the lr schedule depends on the planned epochs)."""
    batch = {"ranker": "4,8"}.get(task, "16,32")
    items = [f"lr=loguniform:{'1e-4:3e-3' if lora else '1e-5:1e-4'}", f"batch_size=choice:{batch}", f"epochs={epochs}"]
    if lora:
        items += ["lora_r=choice:4,8,16", "lora_alpha=ratio:2", "lora_dropout=uniform:0:0.2"]
    return {p.name: p for p in map(parse_param, items)}


class TuneConfig(TrainConfig):
    """`python -m tune.search`: ASHA search over the training function of jobs.train."""

    num_samples: int = Field(8, ge=1, description="number of trials")
    max_concurrent: int = Field(2, ge=1, description="trials at once (lowered to what the local Ray's CPUs fit)")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep the top 1/factor at each rung")
    search: list[str] = Field(default_factory=list, description=f"search-space entries, override the defaults: {SYNTAX}")
    default_space: bool = Field(True, description="start from the default LoRA space (else only --search entries)")
    register_best: bool = Field(True, description="register the best trial's best checkpoint in the model registry")
    promote: Optional[str] = Field(None, description="alias to point at the registered best model (e.g. candidate)")
    # TrainConfig fields whose default or meaning differ when tuning
    num_workers: int = Field(1, ge=1, description="Ray Train workers per trial")
    patience: int = Field(0, ge=0, description="per-trial patience in epochs (0: off; ASHA does the early stopping)")
    storage_path: Optional[str] = workspace_path("tune", "Tune storage: <storage-path>/<run-name>/ holds trials, TensorBoard logs, summary")
    run_name: Optional[str] = Field(None, description="experiment name (default <task>-<snapshot>-<UTC time>)")
    alias: Optional[str] = Field(None, description="same as --promote")

    @field_validator("search", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, dict):  # YAML mapping name: spec
            return [f"{k}={v}" for k, v in value.items()]
        if isinstance(value, (list, tuple)):  # one flag may carry several entries separated by spaces
            return [part for item in value for part in str(item).split()]
        return value

    @field_validator("search", mode="after")
    @classmethod
    def _syntax(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_param(item)  # syntax and types; bounds are checked with the other fields below
        return value

    @model_validator(mode="after")
    def _check_tuning(self) -> "TuneConfig":
        if self.alias and self.promote and self.alias != self.promote:
            raise ValueError("--alias and --promote disagree; use --promote")
        self.promote = self.promote or self.alias
        self.alias = None
        self.param_specs()  # raises ValueError on bad syntax or out-of-bounds values
        return self

    def param_specs(self) -> dict[str, ParamSpec]:
        """The effective space: the default space (unless --no-default-space) minus the settings
        given explicitly (`--lr 1e-3` pins lr), then the --search entries on top."""
        specs = default_space(self.task, self.lora, self.epochs) if self.default_space else {}
        specs = {n: s for n, s in specs.items() if n == "epochs" or n not in self.model_fields_set}
        for item in self.search:
            spec = parse_param(item)
            specs[spec.name] = spec
        if not self.lora and any(n.startswith("lora_") for n in specs):
            raise ValueError("search: lora_* settings are searched but --no-lora is set")
        if specs.get("lora_alpha", ParamSpec(name="x", kind="fixed", args=[0])).kind == "ratio" and "lora_r" not in specs:
            specs["lora_r"] = ParamSpec(name="lora_r", kind="fixed", args=[self.lora_r])
        base = self.train_config()
        for spec in specs.values():  # every endpoint / choice must be a valid TrainConfig value
            values = spec.args if spec.kind != "randint" else [spec.args[0], spec.args[1] - 1]
            if spec.kind == "ratio":
                r_values = specs["lora_r"].args if specs["lora_r"].kind != "randint" else specs["lora_r"].args[:1]
                values = [max(1, round(spec.args[0] * r)) for r in r_values]
            for v in values:
                try:
                    TrainConfig.model_validate({**base, spec.name: v})
                except ValidationError as exc:
                    raise ValueError(f"search {spec.describe()}: {v!r} is not allowed: "
                                     f"{exc.errors()[0]['msg']}") from None
        return specs

    def max_epochs(self) -> int:
        spec = self.param_specs().get("epochs")
        if spec is None:
            return self.epochs
        return int(max(spec.args) if spec.kind != "randint" else spec.args[1] - 1)

    def train_config(self) -> dict[str, Any]:
        """The TrainConfig fields of this config (the base every trial's TrainConfig starts from)."""
        return self.model_dump(include=set(TrainConfig.model_fields))


class TrialSummary(BaseModel):
    """One row of the summary table: every trial, however it ended."""

    trial_id: str
    status: str  # TERMINATED, ERROR, PENDING...
    config: dict[str, Any]
    metric_last: Optional[float] = None
    metric_best: Optional[float] = None
    best_epoch: Optional[int] = None
    epochs_run: int = 0
    max_epochs: int = 0
    stopped_early: bool = False  # stopped by ASHA before its last epoch
    stopped_by: str = ""  # "asha", "patience" or ""
    train_loss_last: Optional[float] = None
    seconds: Optional[float] = None
    checkpoint_path: str = ""
    error: str = ""


class TuneResult(BaseModel):
    """What `tune.search` prints as its last line."""

    ok: bool = True
    name: str
    task: str
    snapshot: str
    metric: str
    mode: str = "max"
    best_trial: Optional[str] = None
    best_config: dict[str, Any] = Field(default_factory=dict)
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    model_version: Optional[str] = None
    aliases: list[str] = Field(default_factory=list)
    num_trials: int
    early_stopped: int
    statuses: dict[str, int] = Field(default_factory=dict)
    wall_seconds: float
    tensorboard_logdir: str
    summary_path: str
