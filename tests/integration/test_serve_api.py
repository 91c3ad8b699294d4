"""The search app over real HTTP on the session's Serve: search with understanding, filters,
re-ranking, rules and explain; understand, suggest, health and OpenAPI; every bad input a 4xx
JSON body naming the field; the same order every time across two replicas."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.model]


def search(app, **body):
    r = requests.post(f"{app['url']}/v1/search", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_search_answers_with_versions_understanding_and_explain(serve_app):
    out = search(serve_app, query="sony headphones", size=5, explain=True, user_id="shopper-1")
    assert len(out["results"]) == 5 and out["request_id"] and out["total"] >= 5
    v = serve_app["versions"]
    assert out["versions"]["understanding"] == v["intent"]
    assert out["versions"]["ranker"] in (v["ranker"], v["ranker_candidate"])
    assert out["versions"]["rules"] == "tiny-1" and out["versions"]["retriever"].startswith("tiny-bert+")
    assert out["arm"] in ("control", "treatment") and out["degraded"] == []
    assert set(out["understanding"]) >= {"intent", "confidence", "entities", "version"}
    scores = [h["score"] for h in out["results"]]
    assert scores == sorted(scores, reverse=True)
    for rank, hit in enumerate(out["results"], start=1):
        assert hit["explain"]["final"]["rank"] == rank
        assert "first_stage" in hit["explain"] and ("bm25" in hit["explain"] or "dense" in hit["explain"])
    assert any("ranker" in h["explain"] for h in out["results"])
    assert all(h["stock"] != 0 for h in out["results"])  # the exclusion rule
    assert sum(out["facets"]["brand"].values()) == out["total"] == sum(out["facets"]["category"].values())


def test_filters_hold_and_understanding_filters_are_reported(serve_app):
    out = search(serve_app, query="shoe", size=20, filters={"brand": "Nike", "price": {"max": 120}, "in_stock": True})
    assert out["results"], out
    assert all(h["brand"] == "nike" and h["price"] <= 120 and h["stock"] > 0 for h in out["results"])
    assert out["filters_applied"]["filters"]["brand"] == ["Nike"]
    # locale and category together
    out = search(serve_app, query="lamp", size=50, filters={"category": ["desk lamp"], "locale": "de"})
    from tests.integration.serve_shop import products

    expected = {p["product_id"] for p in products() if p["category_path"][-1] == "desk lamp" and p["locale"] == "de"
                and p["stock"] != 0}
    assert {h["product_id"] for h in out["results"]} == expected


def test_rules_pin_diversity_and_context_boost(serve_app):
    out = search(serve_app, query="coffee mug", size=6)
    assert out["results"][1]["product_id"] == "p013" and "pin-mug" in out["rules_applied"]
    brands = [h["brand"] for h in out["results"]]
    assert max(brands.count(b) for b in set(brands)) <= 2
    plain = search(serve_app, query="headphones", size=10)
    mobile = search(serve_app, query="headphones", size=10, context={"device": "mobile"})
    assert "sony-mobile" in mobile["rules_applied"] and "sony-mobile" not in plain["rules_applied"]


def test_pages_do_not_overlap(serve_app):
    first = search(serve_app, query="running shoe", size=5, page=1)
    second = search(serve_app, query="running shoe", size=5, page=2)
    ids1, ids2 = [h["product_id"] for h in first["results"]], [h["product_id"] for h in second["results"]]
    assert len(ids2) == 5 and not set(ids1) & set(ids2)


def test_same_order_every_time_on_two_replicas(serve_app):
    body = {"query": "bosch cordless drill", "size": 10, "explain": True}

    def one(_):
        return search(serve_app, **body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(50)))
    orders = {tuple(h["product_id"] for h in a["results"]) for a in answers}
    assert len(orders) == 1, orders
    assert len({a["served_by"]["retriever"] for a in answers}) == 2  # both Retriever replicas answered
    assert len({a["served_by"]["ranker"] for a in answers}) == 2
    assert len({tuple(round(h["score"], 6) for h in a["results"]) for a in answers}) == 1


def test_understand_suggest_health_docs(serve_app):
    url = serve_app["url"]
    u = requests.post(f"{url}/v1/understand", json={"query": "Nike running shoe under 50"}, timeout=30).json()
    assert u["version"] == serve_app["versions"]["intent"] and u["intent"] and "entities" in u
    s = requests.get(f"{url}/v1/suggest", params={"q": "nike run"}, timeout=30).json()
    assert s["suggestions"] and all(x["text"].startswith("nike") for x in s["suggestions"])
    typo = requests.get(f"{url}/v1/suggest", params={"q": "nkie"}, timeout=30).json()
    assert any(x["text"].startswith("nike") for x in typo["suggestions"])
    h = requests.get(f"{url}/healthz", timeout=30)
    assert h.status_code == 200 and h.json()["ok"]
    assert set(h.json()["deployments"]) == {"QueryUnderstanding", "Retriever", "Ranker", "Suggest", "Recommender", "EventWriter"}
    spec = requests.get(f"{url}/openapi.json", timeout=30).json()
    assert {"/v1/search", "/v1/understand", "/v1/suggest", "/healthz"} <= set(spec["paths"])
    assert requests.get(f"{url}/docs", timeout=30).status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"query": ""}, "query"),
    ({"query": "   "}, "query"),
    ({"query": "x" * 257}, "query"),
    ({}, "query"),
    ({"query": "shoe", "filters": {"colour": "red"}}, "filters.colour"),
    ({"query": "shoe", "page": 21}, "page"),
    ({"query": "shoe", "size": 0}, "size"),
    ({"query": "shoe", "filters": {"price": {"min": 50, "max": 10}}}, "filters.price"),
    ({"query": "shoe", "context": {"device": "fridge"}}, "context.device"),
    ({"query": "shoe", "sort": "price"}, "sort"),
])
def test_bad_search_is_422_naming_the_field(serve_app, body, field):
    r = requests.post(f"{serve_app['url']}/v1/search", json=body, timeout=30)
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]], r.json()


def test_malformed_json_wrong_type_and_unknown_path(serve_app):
    url = serve_app["url"]
    r = requests.post(f"{url}/v1/search", data='{"query": "shoe"', headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["detail"][0]["field"] == "body"
    r = requests.post(f"{url}/v1/search", data="query=shoe", headers={"content-type": "text/plain"}, timeout=30)
    assert r.status_code == 415 and r.json()["detail"][0]["field"] == "content-type"
    r = requests.get(f"{url}/v1/suggest", params={"q": ""}, timeout=30)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "q"
    r = requests.get(f"{url}/v1/nothing", timeout=30)
    assert r.status_code == 404 and r.json()["error"]


def test_the_retrievers_answer_is_the_candidates_contract(serve_app):
    """The hop Retriever -> Ranker is the schemas.api.Candidates contract, not an ad-hoc dict."""
    from ray import serve

    from schemas.api import Candidates

    handle = serve.get_deployment_handle("Retriever", app_name="shopsearch")
    out = handle.retrieve.remote({"query": "sony headphones", "filters": {"in_stock": True}}, None).result(timeout_s=60)
    hop = Candidates(**out)
    assert hop.candidates and all(c.text and c.stages["first_stage"].rank == i + 1 for i, c in enumerate(hop.candidates))
    assert hop.filters_applied.filters == {"in_stock": True}
