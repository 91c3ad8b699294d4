"""Hyperparameter search: Ray Tune + ASHA over the same Ray Train loop as jobs.train.

  python -m tune.search --task intent_entity --snapshot s1 [--num-samples 8] [--max-concurrent 2]
      [--epochs 3] [--grace-period 1] [--search lr=loguniform:1e-4:3e-3 lora_r=choice:4,8,16 ...]
      [--register-best/--no-register-best] [--promote candidate] [--storage-path <workspace>/tune]

Every training flag of jobs.train sets the base all trials start from; `--search NAME=KIND:ARGS`
entries override the default LoRA space (syntax: schemas/tuning.py). Each trial builds and fits
a TorchTrainer (tune/trial.py) that reports every epoch to Tune; ASHA (metric: the task's
validation metric, time: epochs) stops weak trials after --grace-period epochs. A trial driver
holds no CPU (its Train workers reserve theirs), so concurrency is --max-concurrent, lowered to
what a local Ray's CPUs fit; on a cluster the same code reserves GPUs with --use-gpu.
Outputs under <storage-path>/<name>/ (a local folder, or s3:// / gs:// on a cluster: every trial
writes there wherever it runs): one folder per trial with TensorBoard event files
(`tensorboard --logdir <storage-path>/<name>`), train/<trial>/ with the Train checkpoints, and
tune_summary.{md,csv,json} listing every trial. The best trial's best checkpoint is registered
with trainer.register_checkpoint (jobs.train's code path) and optionally promoted.
The last stdout line is the JSON TuneResult.
"""
from __future__ import annotations

import math
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from ray_app.cli import JobError, main_wrapper
from schemas.training import TrainConfig
from schemas.tuning import TuneConfig, TuneResult

# A trial driver only builds a TorchTrainer and waits. It must hold no CPU (a CPU per driver
# would deadlock 2 trials on 2 CPUs: the Train workers could not get theirs), and Tune rejects
# an empty resource request, so it reserves a little memory instead.
DRIVER_RESOURCES = {"CPU": 0, "memory": 128 * 1024**2}


def _concurrency(config: TuneConfig) -> int:
    """--max-concurrent, lowered to the trials a local Ray fits (a cluster may autoscale)."""
    import ray

    from ray_app.runtime import cluster_address

    if cluster_address(config.ray_address):
        return min(config.max_concurrent, config.num_samples)
    have = ray.cluster_resources()
    per_trial = config.num_workers * config.cpus_per_worker
    if have.get("CPU", 0) < per_trial:
        raise JobError(f"a trial needs {per_trial:g} CPUs ({config.num_workers} workers x {config.cpus_per_worker:g}), "
                       f"the local Ray has {have.get('CPU', 0):g}; lower --num-workers or --cpus-per-worker")
    fits = int(have.get("CPU", 0) // per_trial)
    if config.use_gpu:
        if have.get("GPU", 0) < config.num_workers:
            raise JobError(f"--use-gpu with {config.num_workers} workers per trial needs {config.num_workers} GPUs, "
                           f"the local Ray has {have.get('GPU', 0):g}")
        fits = min(fits, int(have["GPU"] // config.num_workers))
    return max(1, min(config.max_concurrent, fits, config.num_samples))


class Storage:
    """Where one search writes: `<root>/<name>/`, a local folder or an object-store URI. Tune and
    Train write trials and checkpoints there themselves; the summary is written locally and
    copied up. Checkpoint paths Train reports are the filesystem's (`bucket/key` on S3)."""

    def __init__(self, root: str, name: str):
        import pyarrow.fs as pafs

        if "://" in root:
            self.root = root.rstrip("/")
            self.fs = pafs.FileSystem.from_uri(self.root)[0]
        else:  # absolute: trials chdir into their own folders
            self.root, self.fs = str(Path(root).expanduser().resolve()), None
        self.run_dir = f"{self.root}/{name}"
        self.train_dir = f"{self.run_dir}/train"

    def exists(self, path: str) -> bool:
        """A checkpoint folder Train reported (still) exists."""
        import pyarrow.fs as pafs

        if self.fs is None:
            return Path(path).is_dir()
        return self.fs.get_file_info(path.split("://", 1)[-1]).type == pafs.FileType.Directory

    def write_summary(self, write) -> tuple[str, str]:
        """`write(folder)` -> (table, local file); returns (table, where the summary lives)."""
        from ray_app.object_store import Output

        with Output(self.run_dir) as out:  # on object storage: written locally, copied up
            table, path = write(out.folder)
            return table, out.uri(path)


def run(config: TuneConfig) -> TuneResult:
    """Search, summarise every trial, register (and optionally promote) the best checkpoint."""
    import ray
    from ray import tune
    from ray.train import Checkpoint
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.search import BasicVariantGenerator

    from ray_app.runtime import init_ray
    from ray_app.store import Store
    from ray_app.training.data import load_task_data
    from ray_app.training.stop import StopBoard
    from ray_app.training.trainer import build_task_model, recs_options, register_checkpoint
    from tune.report import kept_best_row, model_metrics, recorder, recording_asha, summarize, write_summary
    from tune.trial import StopTrainRuns, run_trial, to_domains

    started = time.monotonic()
    base = config.train_config()
    base_cfg = TrainConfig.model_validate(base)
    specs = config.param_specs()
    metric, max_t = base_cfg.metric_name(), config.max_epochs()
    data = load_task_data(Store(config.db), config.snapshot, config.task, config.validation_fraction,
                          config.seed, config.hard_negatives, config.max_train_examples, recs=recs_options(base_cfg))
    for split in ("train", "validation"):
        if not data.splits[split]:
            raise JobError(f"snapshot {config.snapshot!r} has no {split} examples for {config.task}"
                           + (" (and too few train queries to carve a validation split)" if split == "validation" else ""))
    build_task_model(base_cfg, data)  # fail fast: unknown encoder, LoRA targets that match nothing
    with warnings.catch_warnings():  # Ray fork+execs its processes; lancedb's fork warning does not apply
        warnings.filterwarnings("ignore", message="lancedb fork support")
        init_ray(config.ray_address, config.num_cpus, quiet=config.quiet)
    concurrent = _concurrency(config)
    name = config.run_name or f"{config.task}-{config.snapshot}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    storage = Storage(str(config.storage_path), name)
    run_dir, train_dir = storage.run_dir, storage.train_dir
    rec, asha = recorder(), recording_asha(config.grace_period, config.reduction_factor, max_t)
    board = StopBoard.remote()  # stopped trials end their Train runs through it (tune/trial.py)
    trainable = tune.with_parameters(run_trial, base=base, data=data, train_storage=train_dir, board=board)
    tuner = tune.Tuner(
        tune.with_resources(trainable, DRIVER_RESOURCES),
        param_space=to_domains(specs),
        tune_config=tune.TuneConfig(
            metric=metric, mode="max", scheduler=asha, num_samples=config.num_samples,
            search_alg=BasicVariantGenerator(max_concurrent=concurrent, random_state=config.seed)),
        run_config=tune.RunConfig(name=name, storage_path=storage.root, callbacks=[TBXLoggerCallback(), rec, StopTrainRuns(board)],
                                  failure_config=tune.FailureConfig(max_failures=0),  # Train retries itself
                                  verbose=0 if config.quiet else 1))
    try:
        tuner.fit()
    finally:
        ray.kill(board)

    trials = summarize(rec, asha, metric, max_t, base)
    table, summary_path = storage.write_summary(lambda folder: write_summary(trials, folder, list(specs), metric))
    print(f"\n{len(trials)} trials ({concurrent} at a time), ASHA stopped "
          f"{sum(t.stopped_early for t in trials)} early:\n{table}")
    result = TuneResult(
        name=name, task=config.task, snapshot=config.snapshot, metric=metric, num_trials=len(trials),
        early_stopped=sum(t.stopped_early for t in trials),
        statuses={s: sum(t.status == s for t in trials) for s in sorted({t.status for t in trials})},
        wall_seconds=0.0, tensorboard_logdir=str(run_dir), summary_path=str(summary_path))
    ranked = [t for t in trials if t.metric_best is not None and not math.isnan(t.metric_best) and t.checkpoint_path]
    if not ranked:
        errors = "; ".join(sorted({t.error for t in trials if t.error}))[:500]
        raise JobError(f"no trial reported {metric} ({errors or 'no errors recorded'}); see {summary_path}")
    best = max(ranked, key=lambda t: t.metric_best)
    result.best_trial, result.best_metric, result.best_epoch = best.trial_id, best.metric_best, best.best_epoch
    result.best_config = best.config
    if config.register_best:
        row = kept_best_row(rec.rows[best.trial_id], metric, storage.exists)
        trial_cfg = TrainConfig.model_validate({**base, **best.config, "alias": config.promote,
                                                "storage_path": train_dir, "run_name": best.trial_id})
        version = register_checkpoint(trial_cfg, data, Checkpoint(row["checkpoint_path"], filesystem=storage.fs),
                                      model_metrics(row))
        result.model_version, result.aliases = version.name, version.aliases
    result.wall_seconds = round(time.monotonic() - started, 1)
    return result


def _expand_search(argv: Sequence[str]) -> list[str]:
    """`--search a=.. b=..` -> `--search a=.. --search b=..` (argparse appends one value per flag)."""
    out, in_search = [], False
    for tok in argv:
        if tok == "--search":
            in_search = True
            continue
        if in_search and not tok.startswith("-"):
            out += ["--search", tok]
            continue
        in_search = False
        out.append(tok)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import sys

    argv = _expand_search(sys.argv[1:] if argv is None else argv)
    return main_wrapper(run, TuneConfig, "tune.search", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
