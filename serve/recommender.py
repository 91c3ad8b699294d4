"""Recommender: the recommendation endpoints' model stage (`/v1/recommend/home`, `/similar`,
`/cart`). Each replica holds one `RecsIndex` (ray_app/recs/serving.py): the catalogue, popularity
and co-purchase from the events table, item vectors from the served `recommender` model's text
tower (or the catalogue's retrieval vectors without one), and the precomputed lists of
`jobs.recommend`.

Freshness, as documented in the README:
- a shopper's own events are read per request from the `events` table, opened with
  `read_consistency_interval = refresh_s`: an event acknowledged by `POST /v1/events` shapes that
  shopper's next home or cart list within `refresh_s` (plus the writer's batch wait);
- popularity and co-purchase are re-counted when the events table moved and at least
  `recs_stats_refresh_s` passed since the last count;
- a new catalogue version, a promoted `recommender` alias or a new `jobs.recommend` run is picked
  up within `refresh_s`; the new state (item vectors re-encoded when needed) is built aside and swapped in one
  assignment, so requests never wait for it.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any, Optional

import pandas as pd
from ray import serve

from schemas.serving import ServeAppConfig
from serve.models import ModelSlot, Watcher, set_torch_threads

logger = logging.getLogger("ray.serve")
PRODUCT_READ = ["product_id", "title", "brand", "category_path", "attributes", "description", "price", "currency",
                "stock", "image_url", "locale"]
EVENT_READ = ["user_id", "session_id", "product_id", "event_type", "timestamp", "locale"]
MAX_USER_EVENTS = 5000  # a shopper's events read per request (the newest matter; a bot's log is cut here)


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


class RecsState:
    """One built index with the versions it was built from."""

    def __init__(self, index, products_v: int, events_v: int, model_version: str, built: float):
        self.index, self.products_v, self.events_v, self.model_version, self.built = index, products_v, events_v, model_version, built


@serve.deployment(
    name="Recommender",
    ray_actor_options={"num_cpus": 0.05},  # with the other defaults the whole graph fits a 2-core laptop (1.95 CPUs)
    max_ongoing_requests=32,
    max_queued_requests=64,
    backpressure_config={"status_code": 503, "retry_after_s": 1},  # a full queue: 503 + Retry-After
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
)
class Recommender:
    def __init__(self, config: dict[str, Any]):
        import lancedb

        self.config = ServeAppConfig(**config)
        set_torch_threads(self.config.torch_threads)
        self.db = lancedb.connect(self.config.db, read_consistency_interval=timedelta(seconds=self.config.refresh_s))
        self._tables: dict[str, Any] = {}
        self.slot: Optional[ModelSlot] = None
        if self.config.recommender_model.lower() != "none":
            self.slot = ModelSlot(self.config.recommender_model, "recommender", self.config.models_dir, optional_alias=True)
        self.state = self._build(None)
        self.lists, self.lists_v = self._lists()
        self.watcher = Watcher(self.config.refresh_s, self.refresh, "recs-refresh")
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - built in-process (benchmarks/recs_serve.py's baseline)
            self.replica = "in-process"

    # ---- building ---------------------------------------------------------------------------

    def _table(self, name: str):
        """The table's handle, opened once (it follows new versions within refresh_s); None while it does not exist."""
        tbl = self._tables.get(name)
        if tbl is None:
            try:
                tbl = self._tables[name] = self.db.open_table(name)
            except Exception:  # noqa: BLE001 - the table does not exist (yet)
                return None
        return tbl

    def _version(self, name: str) -> int:
        tbl = self._table(name)
        return int(tbl.version) if tbl is not None else 0

    def _read(self, name: str, columns: list[str], where: Optional[str] = None) -> pd.DataFrame:
        tbl = self._table(name)
        if tbl is None or not tbl.version:
            return pd.DataFrame(columns=columns)
        cols = [c for c in columns if c in tbl.schema.names]
        query = tbl.search().select(cols)
        if where:
            query = query.where(where)
        return query.limit(None).to_pandas()

    def _build(self, old: Optional[RecsState]) -> RecsState:
        """A new index; the model system (item tower over the catalogue) is reused when neither the
        catalogue nor the model moved."""
        import numpy as np

        from ray_app.index import VECTOR_COLUMN
        from ray_app.recs.data import item_texts
        from ray_app.recs.model_system import TwoTowerSystem
        from ray_app.recs.serving import RecsIndex

        started = time.perf_counter()
        products_v, events_v = self._version("products"), self._version("events")
        model_version, loaded = self.slot.current if self.slot is not None else ("none", None)
        # the retrieval vectors only stand in for the model's item tower when no model is served
        frame = self._read("products", PRODUCT_READ + ([] if loaded is not None else [VECTOR_COLUMN]))
        frame = frame.sort_values("product_id", kind="stable")
        rows = frame.drop(columns=[VECTOR_COLUMN], errors="ignore").to_dict("records")
        rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in rows]
        system, vectors = None, None
        if old is not None and old.index.system is not None and (old.products_v, old.model_version) == (products_v, model_version):
            system = old.index.system
        elif loaded is not None and rows:
            import pyarrow as pa

            system = TwoTowerSystem(loaded, item_texts(pa.Table.from_pylist(
                [{k: r.get(k) for k in ("product_id", "title", "brand", "category_path", "attributes", "description")}
                 for r in rows])))
            system.item_vectors = system.encode_items()
        if system is None and VECTOR_COLUMN in frame.columns:
            dim = next((len(v) for v in frame[VECTOR_COLUMN] if v is not None), 0)
            vectors = np.array([v if v is not None else np.zeros(dim) for v in frame[VECTOR_COLUMN]], dtype=np.float32) if dim else None
        events = self._read("events", EVENT_READ, "event_type IN ('purchase', 'add_to_cart')")
        index = RecsIndex(rows, events, vectors, system, trend_half_life_days=self.config.recs_trend_half_life_days,
                          min_locale_buyers=self.config.recs_min_locale_buyers)
        logger.info("recommendations index: catalogue v%s (%d products), events v%s (%d basket events), model %s, in %.1fs",
                    products_v, index.size, events_v, index.behaviour.events, model_version, time.perf_counter() - started)
        return RecsState(index, products_v, events_v, model_version, time.monotonic())

    def _lists(self) -> tuple[dict[str, dict[str, Any]], int]:
        """user pseudonym -> its precomputed list (jobs.recommend), with the table's version."""
        version = self._version("recommendations")
        frame = self._read("recommendations", ["user_id", "product_ids", "model_version", "created_at", "locale"])
        return {str(r["user_id"]): dict(r, product_ids=[str(p) for p in r["product_ids"]]) for r in frame.to_dict("records")}, version

    def refresh(self) -> bool:
        """Rebuild what moved (see the module docstring); True when anything did."""
        changed = False
        if self.slot is not None:
            self.slot.refresh()
        state = self.state
        model_version = self.slot.version if self.slot is not None else "none"
        stale_stats = (self._version("events") != state.events_v
                       and time.monotonic() - state.built >= self.config.recs_stats_refresh_s)
        if self._version("products") != state.products_v or model_version != state.model_version or stale_stats:
            self.state = self._build(state)  # built aside, swapped in one assignment
            changed = True
        if self._version("recommendations") != self.lists_v:
            self.lists, self.lists_v = self._lists()
            changed = True
        return changed

    # ---- requests ---------------------------------------------------------------------------

    def _shopper(self, user_id: Optional[str], session_id: Optional[str]) -> pd.DataFrame:
        """The shopper's events (pseudonyms in, as stored): by user, else by session."""
        if user_id:
            where = f"user_id = {_quote(user_id)}"
        elif session_id:
            where = f"session_id = {_quote(session_id)}"
        else:
            return pd.DataFrame(columns=EVENT_READ)
        frame = self._read("events", EVENT_READ, where)
        return frame.sort_values("timestamp", kind="stable").tail(MAX_USER_EVENTS)

    def _versions(self, state: RecsState, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
        out = {"recommender": state.model_version, "catalogue": str(state.products_v), "behaviour": f"events v{state.events_v}"}
        return {**out, **(extra or {})}

    def _answer(self, state: RecsState, picks, strategy: str, versions: dict[str, str], **more) -> dict[str, Any]:
        return {"items": [state.index.item(p) for p in picks], "strategy": strategy, "cold_start": strategy == "popular",
                "versions": versions, "replica": self.replica, **more}

    def home(self, user_id: Optional[str], session_id: Optional[str], locale: Optional[str], k: int) -> dict[str, Any]:
        """Home-page recommendations for a shopper (ids already pseudonymised)."""
        from ray_app.recs.serving import user_history

        state = self.state
        events = self._shopper(user_id, session_id)
        listed = self.lists.get(user_id or "")
        since = pd.Timestamp(listed["created_at"]) if listed is not None else None
        max_history = int(getattr(state.index.system, "max_history", 20) or 20)
        history, bought = user_history(events, max_history)
        stamp = pd.to_datetime(events["timestamp"], utc=True) if not events.empty else pd.Series(dtype="datetime64[ns, UTC]")
        if since is not None:
            since = since.tz_localize("UTC") if since.tzinfo is None else since
            recent = events[stamp > since]
        else:
            recent = events
        recent_items = [p for p, _ in user_history(recent, max_history)[0]]
        if not locale:
            locale = (str(events["locale"].iloc[-1]) if not events.empty else "") or (listed or {}).get("locale") or None
        picks, strategy = state.index.home(listed["product_ids"] if listed is not None else None, history, recent_items,
                                           bought, locale, k)
        versions = self._versions(state, {"recommendations": f"{listed['model_version']} (recommendations v{self.lists_v})"}
                                  if listed is not None else None)
        return self._answer(state, picks, strategy, versions, locale=locale or "", history_items=len(history))

    def similar(self, product_id: str, k: int) -> dict[str, Any]:
        state = self.state
        try:
            picks = state.index.similar(product_id, k)
        except KeyError:
            return {"error": f"product {product_id!r} is not in the catalogue (version {state.products_v})"}
        return self._answer(state, picks, "similar", self._versions(state))

    def cart(self, product_ids: list[str], user_id: Optional[str], session_id: Optional[str], locale: Optional[str],
             k: int) -> dict[str, Any]:
        from ray_app.recs.serving import user_history

        state = self.state
        unknown = [p for p in product_ids if p not in state.index.pos]
        history, _ = user_history(self._shopper(user_id, session_id), int(getattr(state.index.system, "max_history", 20) or 20))
        picks, strategy = state.index.cart(product_ids, history, locale, k)
        return self._answer(state, picks, strategy, self._versions(state), unknown=unknown)

    def health(self) -> dict[str, Any]:
        state = self.state
        detail = (f"catalogue v{state.products_v} ({state.index.size} products), events v{state.events_v} "
                  f"({state.index.behaviour.events} basket events), {len(self.lists)} precomputed lists")
        if self.slot is not None and self.slot.error:
            detail += f"; model: {self.slot.error}"
        return {"ready": True, "version": state.model_version, "detail": detail}
