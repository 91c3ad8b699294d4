"""Operating the running app: a promotion reaches the replicas under load with zero failed
requests; killing a replica of each model deployment loses no request (each succeeds, degraded
at worst, or gets a retryable status) and the replica comes back; new catalogue rows are served
within the documented delay."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.model]


class Load:
    """Closed-loop searches from `workers` threads until stopped; every answer kept."""

    def __init__(self, url: str, workers: int = 4, timeout_s: float = 30.0):
        self.url, self.timeout_s, self.answers, self.errors = url, timeout_s, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def _run(self, worker: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            body = {"query": ["sony headphones", "coffee mug", "bosch cordless drill"][i % 3], "size": 5,
                    "user_id": f"load-{worker}-{i % 50}"}
            started = time.monotonic()
            try:
                r = requests.post(f"{self.url}/v1/search", json=body, timeout=self.timeout_s)
                self.answers.append((time.monotonic(), r.status_code, r.headers.get("retry-after"),
                                     r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text,
                                     time.monotonic() - started))
            except requests.RequestException as exc:  # a hang past the timeout counts here
                self.errors.append(repr(exc))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout_s}s")


def test_promotion_under_load_has_zero_failed_requests(serve_app):
    from ray_app.registry import Registry

    registry = Registry(serve_app["models_dir"])
    old, new = serve_app["versions"]["ranker"], serve_app["versions"]["ranker_candidate"]
    try:
        with Load(serve_app["url"]) as load:
            time.sleep(3)
            promoted_at = time.monotonic()
            registry.promote(new, "production")
            wait_for(lambda: any(a[0] > promoted_at and a[1] == 200 and a[3]["arm"] == "control"
                                 and a[3]["versions"]["ranker"] == new for a in load.answers), 30, "the promoted ranker")
            time.sleep(2)
        assert not load.errors, load.errors[:3]
        assert [a[1] for a in load.answers if a[1] != 200] == []
        control = [a for a in load.answers if a[3]["arm"] == "control"]
        before = [a for a in control if a[0] < promoted_at]
        assert before and all(a[3]["versions"]["ranker"] == old for a in before)
        assert all(not a[3]["degraded"] for a in load.answers)
    finally:
        registry.promote(old, "production")


def _replicas(deployment: str) -> set[str]:
    """Names of the deployment's live replica actors (through this driver's own Ray connection)."""
    import ray

    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::shopsearch#{deployment}#")}
    alive = set()
    for name in names:
        try:
            ray.get(ray.get_actor(name, namespace="serve").__ray_ready__.remote(), timeout=10)
            alive.add(name)
        except Exception:  # noqa: BLE001 - killed, or not up yet
            pass
    return alive


@pytest.mark.parametrize("deployment", ["Ranker", "Retriever", "QueryUnderstanding"])
def test_killing_a_model_replica_loses_no_request(serve_app, deployment):
    import ray

    before = _replicas(deployment)
    assert before
    victim = sorted(before)[0]
    with Load(serve_app["url"], workers=3) as load:
        time.sleep(2)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        wait_for(lambda: (now := _replicas(deployment)) and len(now) == len(before) and victim not in now, 120,
                 f"a new {deployment} replica")
        wait_for(lambda: requests.get(f"{serve_app['url']}/healthz", timeout=10).status_code == 200, 60, "healthz")
        time.sleep(2)
    assert not load.errors, load.errors[:3]  # nothing hung past the client's timeout
    statuses = {a[1] for a in load.answers}
    assert statuses <= {200, 503}, statuses
    assert all(a[2] for a in load.answers if a[1] == 503)  # a retryable answer says when
    after = [a for a in load.answers if a[0] > killed_at]
    assert any(a[1] == 200 for a in after)
    assert all(a[3]["results"] for a in load.answers if a[1] == 200)


def test_new_catalogue_rows_are_served_within_the_refresh_delay(serve_app):
    from ray_app.store import Store, rows_to_arrow, utcnow

    store = Store(serve_app["db"])
    row = {"product_id": "pz-new", "title": "zephyr kettle", "brand": "zephyrco", "category_path": ["shop", "kettle"],
           "price": 42.0, "stock": 3, "updated_at": utcnow()}
    written = time.monotonic()
    store.upsert("products", rows_to_arrow([row], "products"))

    def found_once() -> bool:
        r = requests.post(f"{serve_app['url']}/v1/search", json={"query": "kettle", "filters": {"brand": "zephyrco"}},
                          timeout=30)
        assert r.status_code == 200, r.text
        return [h["product_id"] for h in r.json()["results"]] == ["pz-new"]

    # every replica refreshed: eight answers in a row find it, whichever Retriever replica answers
    wait_for(lambda: all(found_once() for _ in range(8)), 30, "the new product on every replica")
    delay = time.monotonic() - written
    assert delay < 30, delay
    health = wait_for(lambda: (h := requests.get(f"{serve_app['url']}/healthz", timeout=10).json())
                      ["deployments"]["Retriever"]["detail"].count("201 products") and h, 10, "healthz")
    assert health["ok"]


def test_overload_answers_503_with_retry_after_never_hangs(serve_app):
    """Far more concurrent searches than the front queue holds (16 + 16 in the tests): each answers
    in time, 200 or a 503 saying when to retry."""
    def one(i):
        try:
            r = requests.post(f"{serve_app['url']}/v1/search", json={"query": f"headphones {i}", "size": 50}, timeout=60)
            return r.status_code, r.headers.get("retry-after")
        except requests.RequestException as exc:
            return repr(exc), None

    with ThreadPoolExecutor(max_workers=64) as pool:
        out = list(pool.map(one, range(256)))
    statuses = [s for s, _ in out]
    assert set(statuses) <= {200, 503}, out[:5]
    assert statuses.count(503) > 0 and statuses.count(200) >= 32  # the queue filled; what it held was answered
    assert all(r for s, r in out if s == 503)


def test_app_metrics_reach_rays_prometheus_endpoint(serve_app):
    import ray

    for body in ({"query": "mug", "filters": {"brand": "no-such-brand"}}, {"query": "coffee mug"}):
        requests.post(f"{serve_app['url']}/v1/search", json=body, timeout=30)
    requests.post(f"{serve_app['url']}/v1/search", json={"query": ""}, timeout=30)
    port = ray._private.worker.global_worker.node.metrics_export_port

    def scraped():
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith("ray_shopsearch_")]
        return lines if any('endpoint="/v1/search"' in line and 'status="422"' in line for line in lines) else None

    lines = wait_for(scraped, 90, "the app's metrics on Ray's metrics endpoint")
    names = {line.split("{")[0] for line in lines}
    assert {"ray_shopsearch_requests_total", "ray_shopsearch_stage_latency_ms_bucket"} <= names, names
    assert any(line.startswith("ray_shopsearch_zero_result_searches") for line in lines)
