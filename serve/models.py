"""What every model deployment shares: a registry alias held by a replica (loaded once, swapped
in place when the alias is promoted to another version), a background watcher, and torch threads
matched to the replica's CPUs.

Promotion without downtime: `jobs.registry --action promote` only rewrites the registry; each
replica polls its alias every `reload_s`, loads the new version beside the old one and swaps the
reference in one assignment, so a request in flight finishes on the version it started with and
no request ever waits for a load. `reconfigure` (a new `user_config`) moves a replica to another
alias the same way.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Optional

logger = logging.getLogger("ray.serve")


def set_torch_threads(explicit: Optional[int] = None) -> int:
    """torch intra-op threads = `explicit`, else the replica's assigned CPUs (at least 1)."""
    import torch

    n = explicit
    if not n:
        try:
            import ray

            n = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1) or 1)
        except Exception:  # noqa: BLE001 - outside a Ray worker: the machine's cores
            n = os.cpu_count() or 1
    n = max(1, int(n))
    torch.set_num_threads(n)
    return n


class ModelSlot:
    """A registry model of `task` named by `spec` (a version or `task@alias`), swappable in place."""

    def __init__(self, spec: str, task: str, models_dir: Optional[str],
                 load: Optional[Callable[[str], Any]] = None, optional_alias: bool = False):
        """`optional_alias`: an alias (`task@alias`) that names no version yet is allowed: the slot
        starts empty (`current` = ("none", None), `error` says why) and the first promotion fills it."""
        from ray_app.registry import Registry, RegistryError

        self.spec, self.task = spec, task
        self.registry = Registry(models_dir)
        self._load = load or (lambda name: self.registry.load_model(name, task=task))
        self.error = ""
        self._lock = threading.Lock()
        try:
            version = self.registry.resolve(spec, task)
        except RegistryError as exc:
            if not (optional_alias and "@" in spec):  # a version name that does not exist is a mistake
                raise
            self.current: tuple[str, Any] = ("none", None)
            self.error = self._unset(f"{type(exc).__name__}: {exc}")
            logger.warning("model %s", self.error)
            return
        self.current = (version.name, self._load(version.name))

    def _unset(self, error: str) -> str:
        return f"{self.spec} names no version yet (serving without it until it is promoted): {error}"

    @property
    def version(self) -> str:
        return self.current[0]

    def point_to(self, spec: str) -> bool:
        """Follow another version or alias (from `reconfigure`); True when the model changed."""
        self.spec = spec
        return self.refresh()

    def refresh(self) -> bool:
        """Load the version `spec` names now if it moved; True when it did. Failures keep the old model."""
        with self._lock:
            try:
                name = self.registry.resolve(self.spec, self.task).name
                if name == self.current[0]:
                    self.error = ""
                    return False
                model = self._load(name)
            except Exception as exc:  # noqa: BLE001 - a broken promotion must not take the replica down
                error = f"{type(exc).__name__}: {exc}"
                if self.current[1] is None:
                    error = self._unset(error)
                if error != self.error:  # once per new error, not every poll
                    logger.warning("model %s: keeping %s: %s", self.spec, self.current[0], error)
                self.error = error
                return False
            old = self.current[0]
            self.current = (name, model)  # one assignment: requests see the old or the new pair, never half
            self.error = ""
            logger.info("model %s: %s -> %s", self.spec, old, name)
            return True


class Watcher:
    """Calls `fn` every `interval` seconds on a daemon thread until `stop()`."""

    def __init__(self, interval: float, fn: Callable[[], Any], name: str):
        self.interval, self.fn = interval, fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.fn()
            except Exception:  # noqa: BLE001 - the next tick tries again
                logger.exception("watcher %s failed", self._thread.name)

    def stop(self) -> None:
        self._stop.set()


def batch_settings(deployment_method, user_config: Optional[dict]) -> None:
    """Apply `max_batch_size` / `batch_wait_timeout_s` from a user_config to a `@serve.batch` method."""
    if not user_config:
        return
    if "max_batch_size" in user_config:
        deployment_method.set_max_batch_size(int(user_config["max_batch_size"]))
    if "batch_wait_timeout_s" in user_config:
        deployment_method.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))
