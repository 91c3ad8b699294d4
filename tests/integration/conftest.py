"""Serve, started once per test session on the session's local Ray, over the tiny shop of
`serve_shop.py`, and shut down at the end."""
from __future__ import annotations

import pytest

from ray_app.net import free_port

SERVE_TEST_OPTIONS = {  # small CPU reservations: the test Ray has 2 CPUs for the whole graph
    "QueryUnderstanding": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
    "Retriever": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.1}},
    "Ranker": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.1}},
    "Suggest": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
    "Recommender": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
    "EventWriter": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
    # a small front queue, so the overload test can fill it: beyond 16 running + 16 queued, Serve answers 503
    "SearchIngress": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 16,
                      "max_queued_requests": 16},
}


EXPERIMENT = {"name": "ranker-ab-test", "unit": "user",
              "arms": {"control": {"model": "ranker@production", "share": 0.9},
                       "treatment": {"model": "ranker@candidate", "share": 0.1}}}


@pytest.fixture(scope="session")
def tiny_shop(tmp_path_factory, s3):
    """The Serve tests' shop, its LanceDB and its model registry on the session's S3 server (files
    such as rules and keys local): every replica and job resolves models through the shared registry."""
    from tests.integration.serve_shop import build

    return build(tmp_path_factory.mktemp("serve-shop"), db=f"s3://{s3.bucket}/serve-shop/lancedb",
                 models_dir=f"s3://{s3.bucket}/serve-shop/models")


@pytest.fixture(scope="session")
def serve_app(ray_session, tiny_shop):
    """The search app on the tiny shop: its base URL and the shop's details."""
    from ray import serve

    from schemas.serving import ServeAppConfig
    from serve.run import start

    from jobs import recommend
    from schemas.recs import RecommendConfig

    # every known shopper's precomputed list, from the tiny recommender (Ray Data on the session's Ray)
    recommend.run(RecommendConfig(db=tiny_shop["db"], models_dir=tiny_shop["models_dir"], workspace=str(tiny_shop["root"]),
                                  k=20, quiet=True))
    config = ServeAppConfig(db=tiny_shop["db"], models_dir=tiny_shop["models_dir"], workspace=str(tiny_shop["root"]),
                            encoder="tiny-bert", rules=tiny_shop["rules"], experiment=EXPERIMENT, torch_threads=1, reload_s=1.0, refresh_s=1.0,
                            shadow_model="ranker@candidate", api_keys_file=tiny_shop["api_keys_file"], recs_stats_refresh_s=1.0, personal_weight=0.3,
                            events_compact_s=30.0, deployments=SERVE_TEST_OPTIONS)
    base = start(config, "127.0.0.1", free_port(), timeout_s=240)
    yield {"url": base, "config": config, **tiny_shop}
    serve.shutdown()


def pytest_collection_modifyitems(config, items):
    """Tests on the session's Serve run last: its replicas hold CPUs of the 2-CPU test Ray for as
    long as it is up, which training and Ray Data tests would otherwise wait for. `serve deploy`'s
    own cluster (test_serve_deploy.py) runs just before them, while the session's Serve is not up."""
    def group(item) -> int:
        if "serve_app" in getattr(item, "fixturenames", ()):
            return 2
        return 1 if item.nodeid.split("::")[0].endswith("test_serve_deploy.py") else 0

    items[:] = sorted(items, key=group)  # stable: the order within each group is kept
