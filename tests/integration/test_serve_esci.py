"""ESCI150 through the running app: the test queries sent over HTTP give the full-catalogue
NDCG@10 that jobs.evaluate reports for the same models and settings (the packaged MiniLM, BM25 on
the evaluated columns, RRF hybrid, no ranker), within 0.002 — offline figures are the figures of
what is served."""
from __future__ import annotations

import math

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.realdata, pytest.mark.realweights, pytest.mark.model]


def test_esci150_over_http_matches_jobs_evaluate(serve_app, shared_data, tmp_path):
    from ray import serve

    from jobs import embed, evaluate, ingest, snapshot
    from ray_app.evaluation import catalogue_metrics
    from ray_app.store import Store
    from schemas.config import IngestConfig, SnapshotConfig
    from schemas.evaluation import EmbedConfig, EvaluateConfig
    from schemas.serving import ServeAppConfig
    from serve.app import build_app
    from serve.run import wait_ready

    common = {"workspace": str(tmp_path), "quiet": True}
    ingest.run(IngestConfig(**common, source="esci", path=str(shared_data / "esci150")))
    snapshot.run(SnapshotConfig(**common, name="esci"))
    embed.run(EmbedConfig(**common, model="minilm"))
    config = EvaluateConfig(**common, split="test", dataset="esci", compare_to="none")
    offline = evaluate.run(config).full_catalogue

    app = ServeAppConfig(workspace=str(tmp_path), understanding_model="none", ranker_model="none", suggest=False,
                         retrieve_depth=config.recall_k, brand_policy="off", price_policy="off", torch_threads=1,
                         deployments={d: {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
                                      for d in ("QueryUnderstanding", "Retriever", "SearchIngress")})
    serve.run(build_app(app), name="esci", route_prefix="/esci", blocking=False)
    base = f"{serve_app['url']}/esci"
    try:
        wait_ready(base, 300)
        store = Store(str(tmp_path / "lancedb"))
        queries = evaluate.eval_queries(store, config)
        judged, _ = evaluate.judged_lists(store, config, queries, set(store.read("products", columns=["product_id"])
                                                                        .column("product_id").to_pylist()))
        queries = [q for q in queries if q["query_id"] in judged]
        figures = []
        for q in queries:
            r = requests.post(f"{base}/v1/search", json={"query": q["text"], "size": 10}, timeout=60)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["degraded"] == [] and "ranker" not in body["versions"]
            figures.append(catalogue_metrics([h["product_id"] for h in body["results"]], judged[q["query_id"]], 10, 10))
        served = sum(f["ndcg@10"] for f in figures if not math.isnan(f["ndcg@10"])) / len(figures)
    finally:
        serve.delete("esci")
    assert len(queries) == offline["hybrid"]["queries"] == 65
    assert served == pytest.approx(offline["hybrid"]["ndcg@10"], abs=0.002), (served, offline["hybrid"])
