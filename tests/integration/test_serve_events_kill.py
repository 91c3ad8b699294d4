"""An acknowledged event is never lost: 40,000 events (SHOPSEARCH_KILL_TEST_EVENTS) posted over HTTP at concurrency 16 while
the EventWriter replica is killed once (Serve starts another); every client retries what was not
acknowledged with the same event ids. Afterwards the events table holds exactly the acknowledged
ids, each once."""
from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.model]
EVENTS = int(os.environ.get("SHOPSEARCH_KILL_TEST_EVENTS", "40000"))
BATCH, CONCURRENCY = 250, 16


def kill_writer() -> str:
    import ray

    names = [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
             if "EventWriter" in a["name"] and a["name"].startswith("SERVE_REPLICA")]
    assert len(names) == 1, names  # the session app's one writer
    ray.kill(ray.get_actor(names[0][0], namespace=names[0][1]), no_restart=True)
    return names[0][0]


def test_events_acknowledged_while_the_writer_is_killed_are_all_stored_once(serve_app):
    from ray_app.store import Store

    run = uuid.uuid4().hex[:8]
    start = datetime.now(timezone.utc) - timedelta(hours=1)
    batches = [[{"event_id": f"kill-{run}-{b}-{i}", "event_type": "impression", "product_id": f"p{(b + i) % 200:03d}",
                 "user_id": f"load-user-{(b * BATCH + i) % 997}", "session_id": f"load-{b}", "position": i % 20 + 1,
                 "timestamp": (start + timedelta(milliseconds=b * BATCH + i)).isoformat()} for i in range(BATCH)]
               for b in range(EVENTS // BATCH)]
    acknowledged: set[str] = set()
    lock = threading.Lock()
    failures: dict[str, int] = {}
    headers = {"X-API-Key": serve_app["api_key"]}

    def send(batch: list[dict]) -> None:
        session = requests.Session()
        deadline = time.monotonic() + 300
        while True:
            try:
                r = session.post(f"{serve_app['url']}/v1/events", json={"events": batch}, headers=headers, timeout=60)
                status = r.status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            if status == 200:
                with lock:
                    acknowledged.update(e["event_id"] for e in batch)
                return
            with lock:
                failures[str(status)] = failures.get(str(status), 0) + 1
            assert status in (500, 502, 503, 504) or isinstance(status, str), (status, r.text[:300])
            assert time.monotonic() < deadline, f"batch not acknowledged in 300 s: {failures}"
            time.sleep(0.2)

    killed: list[str] = []

    def killer() -> None:
        while len(acknowledged) < EVENTS * 0.3:
            time.sleep(0.05)
        killed.append(kill_writer())

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY + 1) as pool:
        kill = pool.submit(killer)
        list(pool.map(send, batches))
        kill.result()
    seconds = time.perf_counter() - started
    ids = [i for i in Store(serve_app["db"]).read("events", columns=["event_id"]).column("event_id").to_pylist()
           if i.startswith(f"kill-{run}-")]
    print(f"{EVENTS:,} events in {seconds:.1f}s ({EVENTS / seconds:,.0f}/s) with {killed} killed; retried answers {failures}")
    assert killed and len(acknowledged) == EVENTS
    assert len(ids) == len(set(ids)) == EVENTS  # stored = acknowledged, none twice
    assert set(ids) == acknowledged
