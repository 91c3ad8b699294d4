"""What jobs.main serves when its ranker gate says no: `ranker@<alias>` names no version yet, so
the answer keeps the first stage's order while the candidate scores every request in shadow and
/healthz reports its agreement; the first promotion of the alias reaches the running app. A
second application on the session's Serve, removed after."""
from __future__ import annotations

import re
import time

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.model]

OPTIONS = {name: {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
           for name in ("QueryUnderstanding", "Retriever", "Ranker", "Suggest", "SearchIngress")}
QUERIES = ("sony headphones", "coffee mug", "bosch cordless drill")


def _search(base: str, query: str) -> dict:
    r = requests.post(f"{base}/v1/search", json={"query": query, "size": 10, "explain": True}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _ranker_health(base: str) -> dict:
    return requests.get(f"{base}/healthz", timeout=30).json()["deployments"]["Ranker"]


def test_unpromoted_alias_serves_first_stage_with_a_shadow_then_follows_promotion(serve_app):
    from ray import serve

    from ray_app.registry import Registry
    from schemas.serving import ServeAppConfig
    from serve.app import build_app
    from serve.run import wait_ready

    alias = f"gated{int(time.time())}"  # a fresh alias: no version yet, as after a rejecting gate
    config = ServeAppConfig(db=serve_app["db"], models_dir=serve_app["models_dir"], workspace=str(serve_app["root"]),
                            encoder="tiny-bert", rules=None, brand_policy="off", price_policy="off",
                            ranker_model=f"ranker@{alias}", shadow_model="ranker@candidate", torch_threads=1,
                            reload_s=1.0, suggest=False, recommend=False, events=False, deployments=OPTIONS)
    base = f"{serve_app['url']}/shadow"
    serve.run(build_app(config), name="shadow-only", route_prefix="/shadow", blocking=False)
    try:
        wait_ready(base, 240)
        for query in QUERIES:
            out = _search(base, query)
            assert out["versions"]["ranker"] == "none" and out["arm"] == "production" and out["degraded"] == []
            # the first stage's order (no rules, no understanding boosts here): ranks 1..10, no ranker stage
            assert [h["explain"]["first_stage"]["rank"] for h in out["results"]] == list(range(1, 11))
            assert all("ranker" not in h["explain"] for h in out["results"])
        deadline = time.monotonic() + 60
        while True:  # the shadow scores after the answer has gone out
            health = _ranker_health(base)
            if "'requests': 3" in health["detail"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert health["version"] == "production=none" and "names no version yet" in health["detail"]
        assert serve_app["versions"]["ranker_candidate"] in health["detail"]
        scored = re.search(r"'requests': (\d+)", health["detail"])
        agreement = re.search(r"'mean_top10_agreement': ([0-9.]+)", health["detail"])
        assert scored and int(scored.group(1)) == 3 and agreement, health
        assert 0.0 <= float(agreement.group(1)) <= 1.0

        promoted = serve_app["versions"]["ranker"]
        Registry(serve_app["models_dir"]).promote(promoted, alias)
        deadline = time.monotonic() + 60
        while (out := _search(base, QUERIES[0]))["versions"]["ranker"] != promoted:
            assert time.monotonic() < deadline, f"the promotion of {alias} did not reach the app: {out['versions']}"
            time.sleep(1)
        assert any("ranker" in h["explain"] for h in out["results"])
        assert _ranker_health(base)["version"] == f"production={promoted}"
    finally:
        serve.delete("shadow-only")
