"""What runs inside one Tune trial: the trial's TrainConfig -> trainer.build_trainer -> fit.

This is the Train V2 way of composing Tune and Train: a Tune function trainable builds and fits
a TorchTrainer, and `TuneReportCallback` forwards every per-epoch `ray.train.report` of the
loop to Tune, so a scheduler (ASHA) sees one result per epoch and can stop the trial.

Stopping needs care. Tune stops a trial by ending its actor; the Train controller (owned by that
actor) dies with it, and the workers' placement group stays reserved: Train V2's
PlacementGroupCleaner detects a dead controller through the state API, which needs the
dashboard (off in local runs and tests), so the next trials would wait forever for those CPUs.
So the trial actor gets a `cleanup` mixin that first aborts its Train run (the controller publishes
its own handle when it starts); abort shuts the workers down and removes the group.
"""
from __future__ import annotations

from typing import Any

from schemas.training import TrainConfig
from schemas.tuning import ParamSpec

RATIO_KEY = "lora_alpha_per_r"  # param-space key of lora_alpha=ratio:K
_TRIAL: dict[str, Any] = {}  # per trial-actor process: the KV key of its Train controller's handle


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


KV_NAMESPACE = "shopsearch-tune"  # Ray's internal KV: trial id -> its Train controller's handle


class AbortTrainOnStop:
    """Mixin of the trial actor (see the module docstring): abort the Train run before exiting."""

    def cleanup(self):
        import ray
        from ray.experimental import internal_kv

        _TRIAL["stopping"] = True
        key = _TRIAL.pop("key", None)
        try:
            handle = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE) if key else None
            if handle:
                internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)
                ray.get(ray.cloudpickle.loads(handle).abort.remote(), timeout=60)
        except Exception:  # the run already ended, or its controller is gone: nothing to release
            pass
        super().cleanup()


def _controller_publisher(key: bytes):
    """A Train controller callback that publishes the controller's own actor handle under `key`
    (the KV rather than an actor: one process less per trial)."""
    import ray
    from ray.experimental import internal_kv
    from ray.train.v2._internal.execution.callback import ControllerCallback

    class PublishControllerHandle(ControllerCallback):
        def after_controller_start(self, train_run_context):
            handle = ray.cloudpickle.dumps(ray.get_runtime_context().current_actor)
            internal_kv._internal_kv_put(key, handle, namespace=KV_NAMESPACE)

    return PublishControllerHandle()


def run_trial(params: dict[str, Any], base: dict[str, Any], data, train_storage: str) -> None:
    """One trial: the same build_trainer as jobs.train, with the trial's settings and Tune reporting."""
    from ray import tune
    from ray.experimental import internal_kv
    from ray.tune.integration.ray_train import TuneReportCallback

    from ray_app.training.trainer import build_trainer

    trial_id = tune.get_context().get_trial_id()
    config = TrainConfig.model_validate({**base, **resolve_params(params, base),
                                         "storage_path": train_storage, "run_name": trial_id})
    key = f"{train_storage}:{trial_id}".encode()
    _TRIAL.update(key=key, stopping=False)
    trainer = build_trainer(config, data, callbacks=[TuneReportCallback(), _controller_publisher(key)])
    try:
        trainer.fit()
    except Exception:
        if not _TRIAL.get("stopping"):  # aborted because Tune stopped the trial: not a failure
            raise
    finally:
        if not _TRIAL.get("stopping"):
            internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)


run_trial.__mixins__ = (AbortTrainOnStop,)  # tune.wrap_function adds these bases to the trial actor
