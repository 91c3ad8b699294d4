"""Fusion of the hybrid's lists (`ray_app.search.fuse`), its spec, its registry versions and the fit's grid."""
from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from ray_app.index import rrf
from ray_app.search.fusion import fuse
from schemas.fusion import FusionSpec

pytestmark = pytest.mark.unit


def scored(ids: list[str], top: float = 1.0) -> list[tuple[str, float]]:
    return [(p, top - i / 100) for i, p in enumerate(ids)]


def random_lists(seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    pool = [f"p{i:02d}" for i in range(30)]
    return rng.sample(pool, rng.randint(0, 20)), rng.sample(pool, rng.randint(1, 20))


@pytest.mark.parametrize("seed", range(40))
def test_equal_weight_rrf_is_index_rrf(seed):
    a, b = random_lists(seed)
    expected = rrf([a, b], k=60)
    same = fuse({"bm25": scored(a), "dense": scored(b)}, FusionSpec())
    assert same == expected  # the default spec: identical order and identical scores
    halves = fuse({"bm25": scored(a), "dense": scored(b)}, FusionSpec(weights={"bm25": 0.5, "dense": 0.5}), limit=7)
    assert [p for p, _ in halves] == [p for p, _ in expected][:7]
    k10 = fuse({"bm25": scored(a), "dense": scored(b)}, FusionSpec(rrf_k=10))
    assert [p for p, _ in k10] == [p for p, _ in rrf([a, b], k=10)]


@pytest.mark.parametrize("method", ["rrf", "minmax", "zscore"])
def test_a_zero_weight_leaves_the_other_list_alone(method):
    bm25, dense = scored(["a", "b", "c", "x"]), [("c", 0.9), ("y", 0.7), ("a", 0.2)]
    assert [p for p, _ in fuse({"bm25": bm25, "dense": dense}, FusionSpec(method=method, weights={"bm25": 0, "dense": 1}))] \
        == ["c", "y", "a"]
    assert [p for p, _ in fuse({"bm25": bm25, "dense": dense}, FusionSpec(method=method, weights={"bm25": 2, "dense": 0}))] \
        == ["a", "b", "c", "x"]


def test_minmax_by_hand():
    lists = {"bm25": [("a", 10.0), ("b", 6.0), ("c", 2.0)], "dense": [("b", 0.9), ("d", 0.5), ("a", 0.1)]}
    # bm25 -> a 1, b 0.5, c 0; dense -> b 1, d 0.5, a 0; absent: the list's minimum, 0
    got = fuse(lists, FusionSpec(method="minmax", weights={"bm25": 0.5, "dense": 0.5}))
    assert [p for p, _ in got] == ["b", "a", "d", "c"]
    assert [s for _, s in got] == pytest.approx([0.75, 0.5, 0.25, 0.0])
    tilted = fuse(lists, FusionSpec(method="minmax", weights={"bm25": 0.8, "dense": 0.2}), limit=2)
    assert tilted == [("a", pytest.approx(0.8)), ("b", pytest.approx(0.6))]


def test_zscore_by_hand_and_the_absent_rule():
    lists = {"bm25": [("a", 3.0), ("b", 2.0), ("c", 1.0)], "dense": [("b", 4.0), ("d", 0.0)]}
    z = 1 / math.sqrt(2 / 3)  # bm25: mean 2, population std sqrt(2/3) -> a +z, b 0, c -z; dense: b +1, d -1
    got = dict(fuse(lists, FusionSpec(method="zscore")))
    assert got["a"] == pytest.approx(z - 1)  # absent from dense: dense's minimum z (-1), not 0
    assert got["b"] == pytest.approx(1.0)
    assert got["d"] == pytest.approx(-z - 1)  # absent from bm25: bm25's minimum z
    assert got["c"] == got["d"]
    # c and d tie exactly; d's best rank (2, in dense) beats c's (3, in bm25)
    assert [p for p, _ in fuse(lists, FusionSpec(method="zscore"))] == ["b", "a", "d", "c"]


def test_lists_without_spread_carry_no_score():
    lists = {"bm25": [("x", 4.2)], "dense": [("y", 0.5), ("z", 0.5)]}
    for method in ("minmax", "zscore"):
        got = fuse(lists, FusionSpec(method=method))
        assert all(s == 0.0 for _, s in got)
        assert [p for p, _ in got] == ["x", "y", "z"]  # all tied: best rank, then first appearance (bm25 first)


@pytest.mark.parametrize("method", ["rrf", "minmax", "zscore"])
def test_ties_do_not_depend_on_dict_order(method):
    spec = FusionSpec(method=method, weights={"bm25": 1, "dense": 1})
    bm25, dense = [("a", 2.0), ("b", 1.0)], [("b", 2.0), ("a", 1.0)]
    forward = fuse({"bm25": bm25, "dense": dense}, spec)
    assert forward == fuse({"dense": dense, "bm25": bm25}, spec)
    assert [p for p, _ in forward] == ["a", "b"]  # same score, same best rank: first seen, reading bm25 first


def test_edges():
    assert fuse({"bm25": [], "dense": []}, FusionSpec()) == []
    assert [p for p, _ in fuse({"dense": [("a", 1.0), ("b", 0.5)]}, FusionSpec(method="minmax"))] == ["a", "b"]
    assert fuse({"bm25": [("a", 1.0), ("a", 0.2)], "dense": []}, FusionSpec()) == [("a", 1 / 61)]  # first place counts
    with pytest.raises(ValueError, match="unknown list"):
        fuse({"bm25": [], "sparse": []}, FusionSpec())


def test_spec_validation_and_description():
    assert FusionSpec().is_default() and FusionSpec().describe() == "rrf k=60, weights bm25 1 / dense 1"
    spec = FusionSpec(method="minmax", weights={"dense": 0.65, "bm25": 0.35})
    assert list(spec.weights) == ["bm25", "dense"] and spec.dense_share() == pytest.approx(0.65)
    assert spec.describe() == "minmax score fusion, weights bm25 0.35 / dense 0.65" and not spec.is_default()
    for bad, match in (({"bm25": -1, "dense": 1}, "non-negative"), ({"bm25": 0, "dense": 0}, "all be zero"),
                       ({"bm25": 1}, "exactly bm25, dense"), ({"bm25": 1, "dense": 1, "ann": 1}, "exactly")):
        with pytest.raises(ValidationError, match=match):
            FusionSpec(weights=bad)
    with pytest.raises(ValidationError):
        FusionSpec(method="borda")
    with pytest.raises(ValidationError):
        FusionSpec(rrf_k=0)


def test_registry_fusion_versions(tmp_path):
    from ray_app.registry import Registry, RegistryError
    from schemas.fusion import FUSION_FILE
    from schemas.training import TASKS

    registry = Registry(tmp_path)
    spec = FusionSpec(method="zscore", weights={"bm25": 0.3, "dense": 0.7})

    def save(folder):
        (folder / FUSION_FILE).write_text(spec.model_dump_json())
        return {}

    version = registry.add("fusion", save, base_model="minilm", lora=False, snapshot="s1",
                           config={"validation_queries": 9}, metrics={"val_ndcg@10": 0.7})
    assert version.name == "fusion-v1" and "fusion" not in TASKS  # training's tasks are unchanged
    registry.promote(version.name, "production")
    loaded, record = registry.load_fusion("fusion@production")
    assert loaded == spec and record.name == "fusion-v1" and record.aliases == ["production"]
    assert registry.resolve("production", task="fusion").name == "fusion-v1"
    assert [v.name for v in registry.list("fusion")] == ["fusion-v1"]
    with pytest.raises(RegistryError, match="not a model"):
        registry.load_model("fusion-v1")
    with pytest.raises(RegistryError, match="unknown task"):
        registry.add("fusionn", save, base_model="minilm", lora=False)


def test_grid_and_selection_rule():
    from jobs.fuse import candidate_specs, preference
    from schemas.evaluation import FuseConfig

    specs = candidate_specs(FuseConfig(snapshot="s", workspace="/tmp/unused-ws"))
    assert len(specs) == 21 * 3 + 21 + 21 and sum(s.is_default() for s in specs) == 1
    assert all(sum(s.weights.values()) == pytest.approx(1.0) for s in specs)
    tied = sorted(((s, 0.5) for s in specs), key=lambda t: preference(*t))
    assert tied[0][0].is_default()  # every setting ties: today's default is kept
    better = FusionSpec(method="minmax", weights={"bm25": 0.2, "dense": 0.8})
    assert sorted([(specs[0], 0.61), (better, 0.62)], key=lambda t: preference(*t))[0][0] == better
    # within 4 decimals it is a tie, and the setting nearer equal weights wins
    assert sorted([(better, 0.62001), (FusionSpec(), 0.62)], key=lambda t: preference(*t))[0][0].is_default()
    assert sorted([(better, 0.6201), (FusionSpec(), 0.62)], key=lambda t: preference(*t))[0][0] == better
