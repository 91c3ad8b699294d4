"""Stopping a Train run from outside, with public Ray APIs only: a cooperative stop.

Ray Tune stops a weak trial (ASHA) by ending the trial's actor. A Train run inside the trial has
its controller owned by that actor, so it dies with it, and its workers' placement group stays
reserved until Train's PlacementGroupCleaner notices through the state API (the dashboard's; off
in local runs, slow on a loaded machine): the next trials would wait for those CPUs or GPUs.

So the run is ended before the actor is: a `StopBoard` actor (no CPU, one per search) holds the
keys of runs asked to stop; the training loop polls it without blocking and every rank agrees on
the same step (one scalar all-reduce), leaves its loop and returns, so Train ends the run normally
and releases the placement group itself. `StopBoard.stop_and_wait` is what the Tune callback
calls before Tune ends the trial's actor.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import ray


@ray.remote(num_cpus=0, max_concurrency=8)
class StopBoard:
    """Keys of runs: started, asked to stop, finished (threaded: the waits never block the marks)."""

    def __init__(self) -> None:
        self._started: set[str] = set()
        self._stop: set[str] = set()
        self._finished: set[str] = set()

    def started(self, key: str) -> None:
        self._started.add(key)

    def finished(self, key: str) -> None:
        self._finished.add(key)

    def should_stop(self, key: str) -> bool:
        return key in self._stop

    def stop_and_wait(self, key: str, timeout_s: float) -> bool:
        """Ask run `key` to stop; True once it finished (or never started), False after timeout_s."""
        self._stop.add(key)
        deadline = time.monotonic() + timeout_s
        while key in self._started and key not in self._finished:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


class StopSignal:
    """On a training worker: `requested()` once per step, True on every rank at the same step once
    the run's key is on the board. Without a board it is always False and costs nothing."""

    def __init__(self, board: Optional[Any], key: Optional[str]) -> None:
        self._board, self._key, self._pending = board, key, None

    def _polled(self) -> bool:
        if self._pending is None:
            self._pending = self._board.should_stop.remote(self._key)
            return False
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return False
        stop, self._pending = bool(ray.get(ready[0])), None
        return stop

    def requested(self, device=None) -> bool:
        if self._board is None:
            return False
        from ray_app.training.loop import all_reduce

        # max over the ranks: every rank leaves at the same step once any one has seen the stop
        return all_reduce([1.0 if self._polled() else 0.0], device, op="max")[0] > 0
