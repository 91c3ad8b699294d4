"""Starting or joining Ray the same way in every job, test and benchmark, quietly by default.

A job's stderr should hold its own progress and summary. Ray adds lines a user cannot act on:
the token-auth warning of `ray.init`, lancedb's fork warning once per process Ray forks, Ray
Data's progress log, worker output forwarded to the driver, C++ `core_worker` error lines at
shutdown and Train V2's PlacementGroupCleaner complaining that there is no dashboard. Unless
`--verbose` (`configure_output(verbose=True)`) asks for them, they are silenced here.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Optional

import ray


# Train V2's PlacementGroupCleaner polls the state API, which needs the dashboard; a local Ray
# started without it would print this warning every second of every training run.
_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


# The worker setup hook of the local Ray. A lambda, so cloudpickle ships it by value: a worker runs
# the hook before it has the driver's sys.path, where a module-level function may not import.
_QUIET_CLEANER = lambda: logging.getLogger(_CLEANER_LOGGER).setLevel(logging.CRITICAL)  # noqa: E731

# Ray's Python loggers that print to a driver's stderr; at ERROR they keep only real failures.
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", _CLEANER_LOGGER)

# Read by Ray's C++ core worker when it starts (driver and workers inherit the environment):
# `core_worker.cc` lines about workers that exited at shutdown are not the user's concern.
_QUIET_ENV = {"RAY_BACKEND_LOG_LEVEL": "fatal"}

_VERBOSE = False


def configure_output(verbose: bool = False) -> None:
    """Process-wide: silence (or, with verbose, restore) Ray's and lancedb's noise; call before init_ray."""
    global _VERBOSE
    _VERBOSE = verbose
    if verbose:
        warnings.filterwarnings("default", message="lancedb fork support")
        for name in _RAY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET if name != "ray" else logging.INFO)
        return
    # Ray fork+execs its processes, so lancedb's fork-safety warning does not apply to them
    warnings.filterwarnings("ignore", message="lancedb fork support")
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in _RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL if name == _CLEANER_LOGGER else logging.ERROR)


def cluster_address(address: Optional[str] = None) -> Optional[str]:
    """The Ray cluster a job joins: `address` (--ray-address), else $RAY_ADDRESS (set by `ray job
    submit`); None means a local Ray, whose resources are all it will ever have (a cluster may autoscale)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, quiet: bool = True,
             verbose: Optional[bool] = None) -> None:
    """Join `address` or $RAY_ADDRESS (set by `ray job submit`), else start a local Ray.

    Ray's own output (worker logs, warnings, Ray Data progress) shows only when verbose (default:
    what configure_output set, else off); `quiet` also hides the progress in verbose mode.
    Idempotent: a driver that already called ray.init (tests, the main job) keeps its session.
    """
    if ray.is_initialized():
        return
    verbose = _VERBOSE if verbose is None else verbose
    configure_output(verbose)
    address = cluster_address(address)
    kwargs = dict(ignore_reinit_error=True, log_to_driver=verbose,
                  logging_level=logging.INFO if verbose else logging.ERROR)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": always a fresh local Ray, never silently joining a `ray start` cluster on this host
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": _QUIET_CLEANER}, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose and not quiet
    ctx.print_on_execution_start = verbose
    if not verbose:
        configure_output(False)  # ray.init installs its own handler and level on the "ray" logger
