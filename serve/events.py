"""EventWriter: the one writer of feedback events (`POST /v1/events`) into the `events` table.

- **Batched**: `@serve.batch` gathers the requests that arrive within `batch_wait_timeout_s`
  (up to `max_batch_size` requests) into ONE LanceDB commit (a merge on `event_id` that only
  inserts), never a commit per event.
- **Acknowledged after commit**: a request's answer is sent only once the commit holding its
  events returned, so an acknowledged event is in the table; a replica killed before that answers
  nothing (the client sees an error and retries) and loses nothing it acknowledged. No separate
  write-ahead log is needed: the table's commit is the durable point.
- **Idempotent**: the client's `event_id` is the key; a retried event (same id) is stored once,
  within a batch and across batches, and counted as a duplicate in the answer.
- **All or nothing per request**: a request's events are validated as a whole at the ingress and
  committed in one commit with the rest of the batch; a failed commit fails every request in it.
- **Compacted on a schedule**: every `events_compact_s` the table is optimised (small appended
  fragments compacted, the scalar indexes on `event_id` and `user_id` brought up to date; snapshot
  versions are tagged, so compaction never removes what a snapshot pins).

Keep one replica (the default): a second one is safe — the merge on `event_id` keeps ids unique
and conflicting commits are retried — but it only adds commit conflicts.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from ray import serve

from schemas.serving import ServeAppConfig
from serve.models import Watcher, batch_settings

logger = logging.getLogger("ray.serve")
INDEXED = ("event_id", "user_id")  # the writer's duplicate check and the Recommender's per-shopper reads


def _quoted(ids: list[str]) -> str:
    return ", ".join("'" + i.replace("'", "''") + "'" for i in ids)


@serve.deployment(
    name="EventWriter",
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1},  # one writer (see above)
    ray_actor_options={"num_cpus": 0.05},
    max_ongoing_requests=256,
    max_queued_requests=512,
    backpressure_config={"status_code": 503, "retry_after_s": 1},  # a full queue: 503 + Retry-After
    user_config={"max_batch_size": 32, "batch_wait_timeout_s": 0.02},
)
class EventWriter:
    def __init__(self, config: dict[str, Any]):
        from ray_app.store import Store

        self.config = ServeAppConfig(**config)
        self.store = Store(self.config.db)
        self.store.table("events")  # created (or given the newer columns) before the first request
        self._commit_lock = threading.Lock()  # commits and compaction never overlap
        self.stats = {"commits": 0, "events": 0, "duplicates": 0, "compactions": 0}
        self._ensure_indexes()
        self.watcher = Watcher(self.config.events_compact_s, self.compact, "events-compact")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batch_settings(self.append, user_config)

    def _ensure_indexes(self) -> None:
        from lancedb.index import BTree

        tbl = self.store.table("events")
        have = {c for i in tbl.list_indices() for c in i.columns}
        for column in INDEXED:
            if column not in have and tbl.count_rows() > 0:
                try:
                    tbl.create_index(column, config=BTree())
                except Exception as exc:  # noqa: BLE001 - an index is an optimisation: without it reads scan
                    logger.warning("events: no %s index: %s", column, exc)

    def compact(self) -> None:
        started = time.perf_counter()
        with self._commit_lock:
            self._ensure_indexes()
            self.store.table("events").optimize()
        self.stats["compactions"] += 1
        logger.info("events table compacted in %.1fs", time.perf_counter() - started)

    def _stored(self, tbl, ids: list[str]) -> set[str]:
        """Which of these ids a previous commit already holds (a retry)."""
        out: set[str] = set()
        for start in range(0, len(ids), 2000):
            chunk = ids[start:start + 2000]
            found = tbl.search().where(f"event_id IN ({_quoted(chunk)})").select(["event_id"]).limit(None).to_arrow()
            out.update(found.column("event_id").to_pylist())
        return out

    def _commit(self, requests: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        from ray_app.store import rows_to_arrow

        ids = list(dict.fromkeys(e["event_id"] for events in requests for e in events))
        with self._commit_lock:
            tbl = self.store.table("events")
            seen = self._stored(tbl, ids)
            new, dups = [], []
            for events in requests:
                d = 0
                for e in events:
                    if e["event_id"] in seen:
                        d += 1
                    else:
                        seen.add(e["event_id"])
                        new.append(e)
                dups.append(d)
            version = self.store.upsert("events", rows_to_arrow(new, "events"), insert_only=True).version if new else tbl.version
        self.stats["commits"] += 1
        self.stats["events"] += len(new)
        self.stats["duplicates"] += sum(dups)
        return [{"accepted": len(events), "duplicates": d, "table_version": int(version)} for events, d in zip(requests, dups)]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.02)
    async def append(self, requests: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """One commit for every request of the batch; each answer after that commit returned."""
        return await asyncio.to_thread(self._commit, requests)

    def health(self) -> dict[str, Any]:
        s = self.stats
        return {"ready": True, "version": f"events v{self.store.version('events')}",
                "detail": f"{s['events']:,} events in {s['commits']:,} commits, {s['duplicates']:,} duplicates, "
                          f"{s['compactions']} compactions"}
