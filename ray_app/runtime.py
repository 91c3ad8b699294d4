"""Starting or joining Ray the same way in every job, test and benchmark."""
from __future__ import annotations

import logging
import os
from typing import Optional

import ray


# Train V2's PlacementGroupCleaner polls the state API, which needs the dashboard; a local Ray
# started without it would print this warning every second of every training run.
_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


# The worker setup hook of the local Ray. A lambda, so cloudpickle ships it by value: a worker runs
# the hook before it has the driver's sys.path, where a module-level function may not import.
_QUIET_CLEANER = lambda: logging.getLogger(_CLEANER_LOGGER).setLevel(logging.ERROR)  # noqa: E731


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, quiet: bool = True) -> None:
    """Join `address` or $RAY_ADDRESS (set by `ray job submit`), else start a local Ray.

    Idempotent: a driver that already called ray.init (tests, the main job) keeps its session.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(ignore_reinit_error=True, log_to_driver=not quiet, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": always a fresh local Ray, never silently joining a `ray start` cluster on this host
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": _QUIET_CLEANER}, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    ctx.print_on_execution_start = False
