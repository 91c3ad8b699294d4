"""The A/B read-out from events a front end posted: searches over HTTP put each shopper in the
ranker experiment's arm (90/10 by user), the shop logs impressions and clicks citing the response's
request id and arm, jobs.abtest reads rates per arm with intervals and power, checks the sample
ratio, and estimates the candidate ranker offline from the control arm's impressions."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.model]


def test_arms_read_out_from_logged_feedback_with_an_offline_estimate(serve_app, tmp_path):
    from jobs import abtest
    from schemas.abtest import AbtestConfig
    from tests.integration.serve_shop import QUERY_TEXTS

    rng, run, events = np.random.default_rng(3), uuid.uuid4().hex[:6], []
    arms: dict[str, int] = {}
    for u in range(60):
        query_id = f"q{u % len(QUERY_TEXTS)}"
        r = requests.post(f"{serve_app['url']}/v1/search", json={"query": QUERY_TEXTS[u % len(QUERY_TEXTS)], "size": 5,
                                                                  "user_id": f"ab-{run}-{u}"}, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        arms[out["arm"]] = arms.get(out["arm"], 0) + 1
        now = datetime.now(timezone.utc).isoformat()
        common = {"user_id": f"ab-{run}-{u}", "request_id": out["request_id"], "arm": out["arm"], "query_id": query_id,
                  "model_versions": out["versions"], "timestamp": now}
        for pos, hit in enumerate(out["results"], start=1):
            events.append({**common, "event_id": f"{run}-{u}-i{pos}", "event_type": "impression", "product_id": hit["product_id"],
                           "position": pos})
        if rng.random() < 0.5:  # clicks on the third result, as a shopper who scrolls a little
            events.append({**common, "event_id": f"{run}-{u}-c", "event_type": "click",
                           "product_id": out["results"][2]["product_id"], "position": 3})
    r = requests.post(f"{serve_app['url']}/v1/events", json={"events": events}, headers={"X-API-Key": serve_app["api_key"]}, timeout=60)
    assert r.status_code == 200, r.text
    assert set(arms) <= {"control", "treatment"} and arms.get("control", 0) > arms.get("treatment", 0)

    result = abtest.run(AbtestConfig(workspace=str(serve_app["root"]), db=serve_app["db"], models_dir=serve_app["models_dir"],
                                     shares=["control=0.9", "treatment=0.1"], candidate="ranker@candidate", resamples=200,
                                     out=str(tmp_path / "ab.json"), quiet=True))
    control = result.arms["control"]
    assert result.control == "control" and control["units"] >= arms["control"]  # other tests' users may have arms too
    assert 0 < control["click_rate"]["rate"] < 1 and control["click_rate"]["low"] <= control["click_rate"]["rate"]
    if "treatment" in result.arms:
        assert "p_value" in result.versus_control["treatment"]["click"]
    assert result.sample_ratio["checked"] and not result.sample_ratio["mismatch"]
    est = result.offline_estimate
    assert est["candidate"] == "ranker@candidate" and "estimate" in est["kind"] and est["requests"] >= arms["control"]
    assert est["interval"][0] <= est["estimated_clicks_per_request"] <= est["interval"][1]
    assert (tmp_path / "ab.json").is_file() and "Offline estimate" in open(result.report).read()
