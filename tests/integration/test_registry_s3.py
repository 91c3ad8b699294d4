"""The model registry on object storage (the session's real S3-compatible server): versions that
every process resolves, compare-and-swap writes that concurrent writers never lose, a failed save
that leaves nothing behind, and local copies that are never reused across registries. The Serve
tests run their whole graph (replicas in separate processes, jobs.refresh's training) on an
s3:// registry too (`tiny_shop` in conftest.py)."""
from __future__ import annotations

import json
import multiprocessing
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _uri(s3) -> str:
    return f"s3://{s3.bucket}/registry-tests/{uuid.uuid4().hex[:8]}"


def _save_note(text: str):
    def save(folder: Path) -> dict:
        (folder / "note.txt").write_text(text)
        (folder / "sub").mkdir()
        (folder / "sub" / "more.json").write_text(json.dumps({"text": text}))
        return {"full_model_bytes": len(text)}
    return save


def test_versions_resolve_from_another_process_s_view(s3, tmp_path, monkeypatch):
    from ray_app.object_store import S3Folder
    from ray_app.registry import Registry, version_folder

    uri = _uri(s3)
    writer = Registry(uri)
    first = writer.add("ranker", _save_note("one"), base_model="tiny-bert", lora=False, config={"n": 1})
    second = writer.add("ranker", _save_note("two"), base_model="tiny-bert", lora=False, config={"n": 2})
    assert (first.name, second.name) == ("ranker-v1", "ranker-v2")
    assert second.path == f"{uri}/ranker-v2"  # where it lives, not a folder of this machine
    writer.promote(first.name, "production")
    writer.record_gate(second.name, {"passed": False, "metric": "ndcg@10"})

    # another "node": its own empty cache, nothing shared with the writer but the bucket
    monkeypatch.setenv("SHOPSEARCH_MODEL_CACHE", str(tmp_path / "other-node"))
    reader = Registry(uri)
    assert reader.resolve("ranker@production").name == "ranker-v1"
    assert reader.resolve("ranker@latest").gates == [{"passed": False, "metric": "ndcg@10"}]
    folder = reader.local_path("ranker-v2")
    assert folder.is_relative_to(tmp_path / "other-node")
    assert (folder / "note.txt").read_text() == "two" and json.loads((folder / "sub" / "more.json").read_text()) == {"text": "two"}
    assert reader.local_path("ranker-v2") == folder and version_folder(second.path) == folder  # downloaded once
    writer.demote("ranker", "production")
    assert reader.aliases() == {"ranker": {}}
    assert S3Folder(uri).get_json("registry.json")[0]["pending"] == {}  # both reservations were recorded


def _writer(uri: str, worker: int, count: int, cache: str, out) -> None:
    import os

    os.environ["SHOPSEARCH_MODEL_CACHE"] = cache
    from ray_app.registry import Registry

    registry = Registry(uri)
    names = []
    for i in range(count):
        v = registry.add("ranker", _save_note(f"{worker}-{i}"), base_model="tiny-bert", lora=False,
                         config={"worker": worker, "i": i})
        registry.promote(v.name, f"w{worker}")
        registry.record_gate(v.name, {"worker": worker})
        names.append(v.name)
    out.put(names)


def test_concurrent_writers_in_separate_processes_lose_nothing(s3, tmp_path):
    from ray_app.registry import Registry

    uri, workers, count = _uri(s3), 4, 3
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as separate jobs on separate nodes
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, w, count, str(tmp_path / f"node{w}"), out)) for w in range(workers)]
    for p in procs:
        p.start()
    got = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    names = [n for per in got for n in per]
    assert sorted(names, key=lambda n: int(n.rsplit("v", 1)[1])) == [f"ranker-v{i}" for i in range(1, workers * count + 1)]

    registry = Registry(uri)
    versions = registry.list("ranker")
    assert len(versions) == workers * count and registry._read().get("pending") == {}
    for v in versions:  # every promotion and gate of every writer is there, on the version it wrote
        assert v.gates == [{"worker": v.config["worker"]}]
        assert (registry.local_path(v) / "note.txt").read_text() == f"{v.config['worker']}-{v.config['i']}"
    last = {w: max((v for v in versions if v.config["worker"] == w), key=lambda v: v.config["i"]).name for w in range(workers)}
    assert registry.aliases()["ranker"] == {f"w{w}": last[w] for w in range(workers)}


def test_a_failed_save_leaves_no_version_files_or_reservation(s3):
    from ray_app.object_store import S3Folder
    from ray_app.registry import Registry

    uri = _uri(s3)
    registry = Registry(uri)

    def broken(folder: Path) -> dict:
        (folder / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        registry.add("ranker", broken, base_model="tiny-bert", lora=False)
    store = S3Folder(uri)
    assert store.get_json("registry.json")[0] == {"versions": {}, "aliases": {}, "pending": {}}
    assert store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.key("ranker-v1/")).get("KeyCount") == 0
    assert registry.add("ranker", _save_note("ok"), base_model="tiny-bert", lora=False).name == "ranker-v1"


def test_a_recreated_registry_at_the_same_uri_never_serves_an_old_local_copy(s3):
    from ray_app.object_store import S3Folder
    from ray_app.registry import Registry

    uri = _uri(s3)
    registry = Registry(uri)
    registry.add("ranker", _save_note("old"), base_model="tiny-bert", lora=False)
    assert (registry.local_path("ranker-v1") / "note.txt").read_text() == "old"
    store = S3Folder(uri)  # wiped by hand, then a new first version under the same name
    store.delete_folder("ranker-v1")
    store.client.delete_object(Bucket=store.bucket, Key=store.key("registry.json"))
    Registry(uri).add("ranker", _save_note("new"), base_model="tiny-bert", lora=False)
    assert (Registry(uri).local_path("ranker-v1") / "note.txt").read_text() == "new"


def test_a_real_model_trains_nowhere_near_where_it_is_loaded(s3, tmp_path, monkeypatch):
    """A tiny model registered through S3 loads, scores and warm-starts elsewhere from the URI alone."""
    from ray_app.models.lora import build_model
    from ray_app.registry import Registry
    from tests.integration.serve_shop import RANKER_HEAD, register_tiny

    uri = _uri(s3)
    name = register_tiny(uri, "ranker", RANKER_HEAD, 7, "production")
    monkeypatch.setenv("SHOPSEARCH_MODEL_CACHE", str(tmp_path / "serving-node"))
    loaded = Registry(uri).load_model("ranker@production")
    assert loaded.version.name == name
    scores = loaded.score("nike running shoe", ["nike running shoe model 1", "coffee mug"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
    monkeypatch.setenv("SHOPSEARCH_MODEL_CACHE", str(tmp_path / "training-node"))
    warm, _ = build_model("ranker", "tiny-bert", RANKER_HEAD, None, Registry(uri).get(name).path)
    assert (tmp_path / "training-node").is_dir()
    import torch

    base = {k: v for k, v in loaded.model.state_dict().items()}
    assert all(torch.equal(base[k], v) for k, v in warm.state_dict().items() if k in base)


def test_the_registry_refuses_object_stores_it_cannot_write_safely():
    from ray_app.registry import Registry, RegistryError

    with pytest.raises(RegistryError, match="s3://"):
        Registry("gs://bucket/models")
