"""The online loop end to end on the tiny shop: purchases posted over HTTP -> jobs.refresh (labels,
snapshot, warm-started training, evaluation against production, gate) -> a new version served by
the running Recommender. A pass that crashes after training and is run again trains nothing twice;
a gate that fails leaves the production alias where it was, its figures recorded either way."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.model]


def purchases(run: str) -> list[dict]:
    """Twelve shoppers, four baskets each over six weeks, each shopper true to one category."""
    now = datetime.now(timezone.utc)
    out = []
    for u in range(12):
        for b, days in enumerate((42, 30, 18, 4)):
            for j in range(3):
                product = f"p{(u % 8) + 8 * ((u + b * 3 + j) % 25):03d}"
                out.append({"event_id": f"{run}-{u}-{b}-{j}", "event_type": "purchase", "product_id": product,
                            "user_id": f"loop-shopper-{u}", "session_id": f"{run}-basket-{u}-{b}", "quantity": 1,
                            "locale": "us", "timestamp": (now - timedelta(days=days, minutes=j)).isoformat()})
    return out


def test_posted_events_become_a_served_version_through_the_gated_refresh(serve_app, monkeypatch):
    from jobs import refresh
    from ray_app.registry import Registry
    from schemas.recs import RefreshConfig

    registry = Registry(serve_app["models_dir"])
    before = registry.resolve("recommender@production", "recommender").name
    versions_before = {v.name for v in registry.list("recommender")}
    r = requests.post(f"{serve_app['url']}/v1/events", json={"events": purchases(uuid.uuid4().hex[:6])},
                      headers={"X-API-Key": serve_app["api_key"]}, timeout=60)
    assert r.status_code == 200, r.text
    base = {"workspace": str(serve_app["root"]), "db": serve_app["db"], "models_dir": serve_app["models_dir"],
            "epochs": 1, "num_workers": 1, "max_train_examples": 256, "resamples": 200, "quiet": True}

    monkeypatch.setenv(refresh.FAIL_AFTER_ENV, "train")  # the pass dies right after registering its candidate
    with pytest.raises(RuntimeError, match="simulated crash"):
        refresh.run(RefreshConfig(**base))  # labels, snapshot, train: then it dies
    monkeypatch.delenv(refresh.FAIL_AFTER_ENV)
    (candidate,) = {v.name for v in registry.list("recommender")} - versions_before
    assert registry.resolve("recommender@production", "recommender").name == before

    strict = refresh.run(RefreshConfig(**base, min_gain=1.0, labels=False))  # a gate no model can pass
    assert strict.candidate == candidate and strict.steps["train"] == f"reused {candidate}"
    assert strict.steps["snapshot"] == "reused" and not strict.promoted
    assert strict.gate["reference"] == before and strict.gate["metric"] == "ndcg@10" and strict.gate["test_users"] > 0
    assert registry.resolve("recommender@production", "recommender").name == before

    loose = refresh.run(RefreshConfig(**base, min_gain=-1.0, labels=False))  # any candidate not a full point worse
    assert loose.promoted and loose.production_after == candidate and "recommend" in loose.steps
    assert {v.name for v in registry.list("recommender")} - versions_before == {candidate}  # no duplicate version
    entry = registry.get(candidate)
    assert [g["passed"] for g in entry.gates] == [False, True] and entry.config["init_from"] == before
    assert entry.snapshot == strict.snapshot and "production" in entry.aliases

    again = refresh.run(RefreshConfig(**base))  # nothing new since: the pass ends at once
    assert again.steps == {"new_data": "none"} and again.candidate is None

    deadline = time.monotonic() + 60
    while True:  # the running Recommender follows the alias, and the lists jobs.recommend rewrote
        out = requests.get(f"{serve_app['url']}/v1/recommend/home", params={"user_id": "loop-shopper-1"}, timeout=60).json()
        if out["versions"].get("recommender") == candidate and candidate in out["versions"].get("recommendations", ""):
            break
        assert time.monotonic() < deadline, out["versions"]
        time.sleep(1)
    assert out["strategy"] in ("personal", "session") and out["items"]
