"""What runs inside one Tune trial: the trial's TrainConfig -> trainer.build_trainer -> fit.

This is the Train V2 way of composing Tune and Train: a Tune function trainable builds and fits
a TorchTrainer in a thread, and `ForwardReports`, a Train callback, hands every per-epoch
`ray.train.report` of the loop back to the function, which reports it to Tune: a scheduler
(ASHA) sees one result per epoch and can stop the trial.

Stopping: Tune stops a weak trial by ending its actor, which would end the trial's Train
controller with it and leave the workers' placement group reserved (ray_app/training/stop.py).
So `StopTrainRuns`, a Tune callback, asks the run to stop through the search's StopBoard when Tune
completes a trial (before Tune ends the actor); the loop leaves at the next step on every rank and
Train releases its resources itself. Public Ray APIs only: a function trainable, a Tune
`Callback`, a `ray.train.UserCallback`, an actor and a `ray.util.queue.Queue`.
"""
from __future__ import annotations

import logging
from typing import Any

from ray.train import UserCallback
from ray.tune import Callback

from schemas.training import TrainConfig
from schemas.tuning import ParamSpec

RATIO_KEY = "lora_alpha_per_r"  # param-space key of lora_alpha=ratio:K


def to_domains(specs: dict[str, ParamSpec]) -> dict[str, Any]:
    """ParamSpecs -> a ray.tune param_space."""
    from ray import tune

    space: dict[str, Any] = {}
    for name, s in specs.items():
        if s.kind == "fixed":
            space[name] = s.args[0]
        elif s.kind == "choice":
            space[name] = tune.choice(s.args)
        elif s.kind == "uniform":
            space[name] = tune.uniform(*s.args)
        elif s.kind == "loguniform":
            space[name] = tune.loguniform(*s.args)
        elif s.kind == "randint":
            space[name] = tune.randint(*s.args)
        else:  # ratio: resolved in resolve_params (Tune's sample_from only takes a deprecated spec form)
            space[RATIO_KEY] = s.args[0]
    return space


def resolve_params(params: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled params as TrainConfig fields (lora_alpha_per_r K -> lora_alpha = K x lora_r)."""
    out = dict(params)
    if RATIO_KEY in out:
        out["lora_alpha"] = max(1, round(out.pop(RATIO_KEY) * out.get("lora_r", base["lora_r"])))
    return out


class StopTrainRuns(Callback):
    """Ends a completed trial's Train run before Tune ends the trial's actor: Tune calls
    on_trial_complete on the driver, synchronously, before it schedules the actor's stop (a trial
    that finished on its own, or never started, returns at once)."""

    def __init__(self, board, timeout_s: float = 300.0):
        self.board, self.timeout_s = board, timeout_s

    def on_trial_complete(self, iteration, trials, trial, **info):
        import ray

        if not ray.get(self.board.stop_and_wait.remote(trial.trial_id, self.timeout_s)):
            logging.getLogger(__name__).warning(
                "trial %s: its Train run did not stop within %.0fs; its workers may hold resources",
                trial.trial_id, self.timeout_s)


class ForwardReports(UserCallback):
    """A Train callback (it runs in the Train controller) that hands each report of rank 0, with the
    path of the checkpoint Train kept, to the trial's function through a Ray queue."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put({**metrics[0], **({"checkpoint_path": checkpoint.path} if checkpoint else {})})


_DONE = "__train_run_done__"


def run_trial(params: dict[str, Any], base: dict[str, Any], data, train_storage: str, board=None) -> None:
    """One trial: the same build_trainer as jobs.train, with the trial's settings and Tune reporting;
    with a StopBoard, the run ends at the next step once the board says so.

    The Train run fits in a thread of the trial; its reports come back through a queue and this
    function passes each to `tune.report` itself, in order, then returns once the run has ended
    and every report is through. Not Tune's `TuneReportCallback`: it reports from the trial
    actor's main thread, and when the run ended just before that thread forwarded the last epoch,
    the function's own final result filled Tune's one-slot queue first and the main thread waited
    on itself for ever (seen once in CI, Ray 2.60)."""
    import threading

    import ray
    from ray import tune
    from ray.util.queue import Queue

    from ray_app.training.trainer import build_trainer

    trial_id = tune.get_context().get_trial_id()
    config = TrainConfig.model_validate({**base, **resolve_params(params, base),
                                         "storage_path": train_storage, "run_name": trial_id})
    overrides = {"stop_board": board, "stop_key": trial_id} if board is not None else None
    # unbounded: the controller never waits on Tune (a stopped trial's run must reach its end)
    reports, failed = Queue(actor_options={"num_cpus": 0}), []
    trainer = build_trainer(config, data, overrides=overrides, callbacks=[ForwardReports(reports)])

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # re-raised in the trial's function below
            failed.append(e)
        finally:
            if board is not None:  # before the last report: a stop waits for this, not for Tune
                ray.get(board.finished.remote(trial_id))
            reports.put(_DONE)

    if board is not None:
        ray.get(board.started.remote(trial_id))
    runner = threading.Thread(target=fit, name=f"train-{trial_id}", daemon=True)
    runner.start()
    try:
        while (item := reports.get()) != _DONE:
            tune.report(item)
        runner.join()
    finally:
        reports.shutdown()
    if failed:
        raise failed[0]

