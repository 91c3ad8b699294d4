"""The checked-in Serve config is valid for Ray Serve's own schema and for the app's config, and
names every deployment of the graph with max_ongoing_requests >= its batch size."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_validates_and_matches_the_graph():
    from ray.serve.schema import ServeDeploySchema

    from schemas.serving import ServeAppConfig
    from serve.app import DEPLOYMENTS

    raw = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema(**raw)
    (app,) = schema.applications
    assert app.import_path == "serve.app:build_app"
    ServeAppConfig(**app.args)  # the app's own contract accepts its args
    names = {d["name"] for d in raw["applications"][0]["deployments"]}
    assert names == set(DEPLOYMENTS)
    for d in raw["applications"][0]["deployments"]:
        assert "autoscaling_config" in d and "ray_actor_options" in d
        assert d.get("max_queued_requests", 0) > 0  # overload is a 503, never an unbounded queue
        batch = (d.get("user_config") or {}).get("max_batch_size")
        if batch:
            assert d["max_ongoing_requests"] >= batch
        assert "num_gpus" not in d["ray_actor_options"] or d["name"] in {"QueryUnderstanding", "Retriever", "Ranker"}
    assert (ROOT / app.args["rules"]).is_file()


def test_build_app_rejects_unknown_deployments_and_fields():
    from serve.app import build_app

    with pytest.raises(ValueError, match="Rankr"):
        build_app({"deployments": {"Rankr": {"num_replicas": 2}}})
    with pytest.raises(ValueError, match="rerank_dpeth"):
        build_app({"rerank_dpeth": 5})
