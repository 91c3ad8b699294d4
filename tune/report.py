"""Bookkeeping of a search on the driver: every trial's per-epoch results, which trials ASHA
stopped early, and the summary table (Markdown, CSV, JSON) listing every trial however it ended."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Optional

from ray_app.cli import JobError
from schemas.tuning import TrialSummary
from tune.trial import resolve_params

# Tune's auto-filled result keys: not model metrics
TUNE_KEYS = {"timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "done",
             "training_iteration", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name",
             "should_checkpoint", "date", "trial_id", "experiment_tag", "config", "checkpoint_path"}
COLUMNS = ["status", "metric_best", "metric_last", "best_epoch", "epochs_run", "max_epochs",
           "stopped_early", "stopped_by", "train_loss_last", "seconds", "error"]


def recording_asha(grace_period: int, reduction_factor: float, max_t: int):
    """ASHAScheduler (time = training_iteration = epochs reported) that also remembers which trials
    it stopped before their last epoch. stop_last_trials=False: a trial reaching max_t ends on its
    own (fit returns) rather than being stopped at its last report. Metric and mode come from
    tune.TuneConfig."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.stopped_at: dict[str, int] = {}

        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            epochs = int(trial.config.get("epochs", max_t))
            if action == TrialScheduler.STOP and result.get("training_iteration", 0) < epochs:
                self.stopped_at[trial.trial_id] = int(result["training_iteration"])
            return action

    return RecordingASHA(time_attr="training_iteration", max_t=max_t, grace_period=min(grace_period, max_t),
                         reduction_factor=reduction_factor, stop_last_trials=False)


def recorder():
    """A Tune callback keeping, on the driver, every trial's results, final status and error."""
    from ray.tune import Callback

    class Recorder(Callback):
        def __init__(self):
            self.rows: dict[str, list[dict[str, Any]]] = {}
            self.status: dict[str, str] = {}
            self.errors: dict[str, str] = {}
            self.configs: dict[str, dict[str, Any]] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.rows.setdefault(trial.trial_id, []).append({k: v for k, v in result.items() if k != "config"})

        def on_trial_error(self, iteration, trials, trial, **info):
            try:
                error = trial.get_pickled_error()
            except Exception:
                error = None
            text = str(error or "trial failed").strip().splitlines()
            self.errors[trial.trial_id] = (text[-1] if text else "trial failed")[:300]

        def on_experiment_end(self, trials, **info):
            for trial in trials:  # every trial, started or not
                self.status[trial.trial_id] = trial.status
                self.configs[trial.trial_id] = dict(trial.config)

    return Recorder()


def summarize(rec, asha, metric: str, max_epochs: int, base: dict[str, Any]) -> list[TrialSummary]:
    """One TrialSummary per trial from the recorder and the scheduler."""
    out = []
    for tid in sorted(set(rec.status) | set(rec.rows)):
        rows = rec.rows.get(tid, [])
        cfg = resolve_params(rec.configs.get(tid, {}), base)
        scored = [r for r in rows if isinstance(r.get(metric), (int, float))]
        best = max(scored, key=lambda r: (r[metric], -r.get("training_iteration", 0)), default=None)
        last = rows[-1] if rows else {}
        early = tid in asha.stopped_at
        out.append(TrialSummary(
            trial_id=tid, status=rec.status.get(tid, "UNKNOWN"), config=cfg,
            metric_last=last.get(metric), metric_best=best[metric] if best else None,
            best_epoch=int(best["epoch"]) if best and "epoch" in best else None, epochs_run=len(rows),
            max_epochs=int(cfg.get("epochs", max_epochs)), stopped_early=early,
            stopped_by="asha" if early else ("patience" if last.get("early_stopped") else ""),
            train_loss_last=last.get("train_loss"),
            seconds=round(last["time_total_s"], 1) if "time_total_s" in last else None,
            checkpoint_path=str(best.get("checkpoint_path", "")) if best else "", error=rec.errors.get(tid, "")))
    return out


def kept_best_row(rows: list[dict[str, Any]], metric: str,
                  exists: Callable[[str], bool] = lambda path: Path(path).is_dir()) -> dict[str, Any]:
    """The best epoch whose checkpoint Train kept (highest metric, earliest epoch on ties; a tie may
    have lost its checkpoint to keep_checkpoints, then the next one is taken); `exists` checks a
    reported checkpoint folder on the search's storage."""
    ranked = sorted((r for r in rows if r.get("checkpoint_path") and isinstance(r.get(metric), (int, float))),
                    key=lambda r: (-r[metric], r.get("training_iteration", 0)))
    for row in ranked:
        if exists(str(row["checkpoint_path"])):
            return row
    raise JobError("the best trial's checkpoints are gone (was the storage cleaned up?)")


def model_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The loop's metrics of one result row (Tune's bookkeeping keys dropped)."""
    return {k: float(v) for k, v in row.items() if k not in TUNE_KEYS and isinstance(v, (int, float))}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_summary(trials: list[TrialSummary], folder: Path, params: list[str],
                  metric: Optional[str] = None) -> tuple[str, Path]:
    """The summary table as Markdown (returned for printing), CSV and JSON under `folder`."""
    header = ["trial_id", *params, *COLUMNS]
    rows = [[t.trial_id, *(t.config.get(p) for p in params), *(getattr(t, c) for c in COLUMNS)] for t in trials]
    title = [f"metric: {metric} (higher is better)", ""] if metric else []
    md = title + ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_fmt(v).replace("|", "/") for v in row) + " |" for row in rows]
    text = "\n".join(md) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tune_summary.md").write_text(text)
    with open(folder / "tune_summary.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    (folder / "tune_summary.json").write_text(json.dumps([t.model_dump(mode="json") for t in trials], indent=2))
    return text, folder / "tune_summary.md"
