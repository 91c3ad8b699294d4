"""Driver side of fine-tuning: snapshot -> Ray Data -> TorchTrainer -> best checkpoint -> registry.

Ray 2.60 runs Train V2 (RAY_TRAIN_V2_ENABLED defaults to 1): `trainer.fit()` raises
`TrainingFailedError` once FailureConfig's retries are spent, `Result.return_value` carries the
rank-0 return of the loop, and a run is resumed by re-using its `RunConfig(name, storage_path)`
(`resume_from_checkpoint` is gone). Only checkpointed reports reach the driver, so the loop
checkpoints every epoch and keeps its own history in the checkpoint state.
"""
from __future__ import annotations

import logging
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from ray_app.cli import JobError
from ray_app.store import Store
from ray_app.training.data import TaskData, load_task_data
from schemas.config import absolute
from schemas.training import ModelVersion, TrainConfig, TrainResult

log = logging.getLogger(__name__)


def head_config(config: TrainConfig, label_spaces: dict[str, list[str]]) -> dict[str, Any]:
    """Constructor arguments of the task head (label spaces included)."""
    if config.task == "intent_entity":
        return {"intents": label_spaces["intents"], "entity_types": label_spaces["entity_types"],
                "oos_threshold": config.oos_threshold, "fallback_intent": config.fallback_intent,
                "word_shape": config.word_shape}
    if config.task == "ranker":
        return {"loss": config.ranker_loss, "pooling": config.ranker_pooling}
    if config.task == "recommender":
        return {"locales": label_spaces.get("locales", []), "items": label_spaces.get("items", []),
                "max_history": config.max_history, "temperature": config.temperature, "id_dropout": config.id_dropout,
                "frozen_text": config.text_tower == "frozen"}
    return {"temperature": config.temperature}


def loop_config(config: TrainConfig, data: TaskData) -> dict[str, Any]:
    """The plain dict `train_loop_per_worker` takes (also the base of a Ray Tune search space)."""
    lora = config.lora_settings()
    return {"task": config.task, "base_model": config.base_model, "lora": lora.model_dump() if lora else None,
            "head_config": head_config(config, data.label_spaces), "epochs": config.epochs,
            "batch_size": config.batch(), "lr": config.peak_lr(), "weight_decay": config.weight_decay,
            "warmup_ratio": config.warmup_ratio, "max_grad_norm": config.max_grad_norm,
            "max_length": config.seq_len(), "patience": config.patience, "seed": config.seed,
            "metric": config.metric_name(), "use_gpu": config.use_gpu, "cpus_per_worker": config.cpus_per_worker,
            "list_size": config.list_size, "batch_negatives": config.batch_negatives, "hard_negatives": config.hard_negatives,
            "sampled_negatives": config.sampled_negatives, "init_from": warm_start_path(config),
            "num_train_examples": len(data.splits["train"])}


def warm_start_path(config: TrainConfig) -> Optional[str]:
    """The saved-model folder `config.init_from` names (None without a warm start); JobError when it
    names no version of the task."""
    if not config.init_from:
        return None
    from ray_app.registry import Registry, RegistryError

    try:
        return Registry(config.models_dir).resolve(config.init_from, config.task).path
    except RegistryError as exc:
        raise JobError(f"--init-from: {exc}") from exc


def recs_options(config: TrainConfig) -> dict[str, Any]:
    """The recommender's split and example settings (jobs.evaluate_recs reads them back from the version's config)."""
    return {"recs_split": config.recs_split, "recs_cut": config.recs_cut, "recs_test_share": config.recs_test_share,
            "seed": config.seed, "max_history": config.max_history, "targets_per_basket": config.targets_per_basket,
            "sampled_negatives": config.sampled_negatives}


def _check_resources(config: TrainConfig) -> None:
    import ray

    from ray_app.runtime import cluster_address

    if cluster_address(config.ray_address):
        return  # a cluster may autoscale: let Ray wait for the resources
    have = ray.cluster_resources()
    need_cpu = config.num_workers * config.cpus_per_worker
    if have.get("CPU", 0) < need_cpu:
        raise JobError(f"{config.num_workers} workers x {config.cpus_per_worker} CPU need {need_cpu:g} CPUs, "
                       f"the local Ray has {have.get('CPU', 0):g}; lower --num-workers or --cpus-per-worker")
    if config.use_gpu and have.get("GPU", 0) < config.num_workers:
        raise JobError(f"--use-gpu with {config.num_workers} workers needs {config.num_workers} GPUs, "
                       f"the local Ray has {have.get('GPU', 0):g}")


def build_trainer(config: TrainConfig, data: TaskData, overrides: Optional[dict[str, Any]] = None,
                  callbacks: Optional[list] = None):
    """A TorchTrainer for `config` on `data`.

    `overrides` replace keys of the loop config (a Tune trial's lr, lora r...); `callbacks` go to
    RunConfig (e.g. `tune.trial.ForwardReports` inside a Tune trial).
    """
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_app.training.loop import train_loop_per_worker

    resources = {"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})}
    name = config.run_name or f"{config.task}-{config.snapshot}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S-%f}"
    run_config = RunConfig(
        name=name, storage_path=absolute(str(config.storage_path)),  # a local folder or s3://, gs://
        checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints,
                                           checkpoint_score_attribute=config.metric_name(),
                                           checkpoint_score_order="max"),
        failure_config=FailureConfig(max_failures=config.max_failures), callbacks=callbacks)
    return TorchTrainer(
        train_loop_per_worker, train_loop_config={**loop_config(config, data), **(overrides or {})},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker=resources),
        run_config=run_config,
        # validation is not split (Ray splits with equal=True, which drops rows); each worker
        # evaluates the queries whose hash falls to its rank, so every row counts exactly once
        dataset_config=DataConfig(datasets_to_split=["train"]),
        datasets={"train": ray.data.from_items(data.splits["train"]),
                  "validation": ray.data.from_items(data.splits["validation"])})


def _error_summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    useful = [line for line in text if "Error" in line or "error" in line][:3] or text[:3]
    return " | ".join(line.strip() for line in useful)[:800]


def build_task_model(config: TrainConfig, data: TaskData):
    """The task model built on the driver: fails fast (JobError) on an unknown encoder or LoRA
    targets that match nothing, before any Ray work; also the shell checkpoints are loaded into."""
    from ray_app.models.encoder import ModelLoadError
    from ray_app.models.lora import build_model

    try:
        model, _ = build_model(config.task, config.base_model, head_config(config, data.label_spaces),
                               config.lora_settings(), warm_start_path(config))
    except ModelLoadError as exc:
        raise JobError(str(exc)) from exc
    except ValueError as exc:
        raise JobError(f"cannot build the {config.task} model: {exc}") from exc
    return model


def register_checkpoint(config: TrainConfig, data: TaskData, checkpoint, metrics: dict[str, float],
                        model=None) -> ModelVersion:
    """Turn a loop checkpoint (a `ray.train.Checkpoint`) into a registry version, promoted to
    `config.alias` when set. Shared by jobs.train and tune.search (the best trial's checkpoint)."""
    from ray_app.models.lora import save_model
    from ray_app.registry import Registry
    from ray_app.training.loop import load_trained_tensors

    from ray_app.models.lora import merge_lora

    model = model if model is not None else build_task_model(config, data)
    lora = config.lora_settings()
    with checkpoint.as_directory() as folder:
        load_trained_tensors(model, folder)
    if config.init_from and lora is not None:  # the base it started from is not the named encoder: keep it all
        model, lora = merge_lora(model), None

    def save(folder: Path) -> dict[str, Any]:
        sizes = save_model(model, folder, config.task, config.base_model, lora,
                           extra={"max_length": config.seq_len(), "snapshot": config.snapshot})
        return {"adapter_bytes": sizes["adapter_bytes"], "full_model_bytes": sizes["full_model_bytes"]}

    registry = Registry(config.models_dir)
    version = registry.add(config.task, save, base_model=config.base_model, lora=lora is not None,
                           label_spaces=data.label_spaces, snapshot=config.snapshot,
                           table_versions=data.table_versions,
                           config=config.model_dump(mode="json", exclude={"db"}), metrics=metrics)
    if config.alias:
        version = registry.promote(version.name, config.alias)
    return version


def run_training(config: TrainConfig, store: Optional[Store] = None,
                 overrides: Optional[dict[str, Any]] = None) -> TrainResult:
    """Train `config.task` on `config.snapshot`, register the best epoch's model, return the summary."""
    from ray.train import TrainingFailedError

    from ray_app.runtime import init_ray

    started = time.monotonic()
    store = store or Store(config.db)
    data = load_task_data(store, config.snapshot, config.task, config.validation_fraction, config.seed,
                          config.hard_negatives, config.max_train_examples, recs=recs_options(config))
    if not data.splits["validation"]:
        raise JobError(f"snapshot {config.snapshot!r} has no validation examples for {config.task} "
                       f"and too few train queries to carve some")
    model = build_task_model(config, data)  # fail fast on the driver
    with warnings.catch_warnings():  # Ray fork+execs its processes; lancedb's fork warning does not apply
        warnings.filterwarnings("ignore", message="lancedb fork support")
        init_ray(config.ray_address, config.num_cpus, quiet=config.quiet)
    _check_resources(config)
    trainer = build_trainer(config, data, overrides)
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        raise JobError(f"training failed after {config.max_failures} restart(s): {_error_summary(exc)}") from exc
    metric = config.metric_name()
    # highest metric, earliest epoch on ties (what the loop's early stopping counts as best)
    best = max(result.best_checkpoints or [], default=None,
               key=lambda cm: (cm[1].get(metric, float("-inf")), -cm[1].get("epoch", 0)))
    if best is None:
        raise JobError("training finished without reporting a checkpoint")
    checkpoint, best_metrics = best
    outcome = result.return_value or {}
    train_seconds = time.monotonic() - started
    metrics = {k: float(v) for k, v in best_metrics.items() if isinstance(v, (int, float))}
    version = register_checkpoint(config, data, checkpoint, metrics, model=model)
    return TrainResult(
        model_version=version.name, task=config.task, snapshot=config.snapshot, metric=metric, metrics=metrics,
        best_epoch=int(best_metrics.get("epoch", -1)), epochs_run=int(outcome.get("epochs_run", len(outcome.get("history", [])))),
        history=outcome.get("history", []), train_seconds=round(train_seconds, 2), examples=data.counts(),
        adapter_bytes=version.adapter_bytes, full_model_bytes=version.full_model_bytes, artifact_path=version.path,
        checkpoint_path=checkpoint.path, restarts=int(outcome.get("restarts", 0)))
