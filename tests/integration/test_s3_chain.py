"""The data platform and training on object storage: the session's real S3-compatible server
(SeaweedFS on loopback, signed requests), `s3://` URIs and nothing else changed.

The rest of the chain runs there too: the Serve tests' shop (tests/integration/serve_shop.py) is
embedded by jobs.embed into `s3://shop/serve-shop/lancedb` and every Serve test, the feedback
writer and the online refresh loop (labels, snapshot, training, evaluation, recommend) read and
write it, with the model registry on S3 as well. Here: generate -> ingest (Ray Data writers) ->
labels -> snapshot, the Train run with its checkpoints and its registered version on S3, and two
ingests committing to the same S3 tables at once. Tune's storage on S3: test_tune.py."""
from __future__ import annotations

import pyarrow.fs as pafs
import pytest

pytestmark = pytest.mark.integration


def s3_files(prefix: str) -> list[str]:
    """Every object under s3://<prefix> (through the session's AWS_* environment)."""
    fs, path = pafs.FileSystem.from_uri(f"s3://{prefix}")
    return [f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
            if f.type == pafs.FileType.File]


@pytest.mark.model
def test_a_workspace_on_s3_holds_the_store_demo_reports_checkpoints_and_models(ray_session, s3, tmp_path):
    from jobs import main as main_job
    from ray_app.registry import Registry
    from ray_app.store import Store
    from ray_app.training.trainer import run_training
    from schemas.config import MainConfig
    from schemas.training import TrainConfig

    workspace = f"s3://{s3.bucket}/chain"  # one root on the bucket: every output path derives from it
    db = f"{workspace}/lancedb"
    result = main_job.run(MainConfig(workspace=workspace, products=200, queries=120, users=30, events=2000,
                                     models=False))
    for table, counts in result.ingest.items():  # nothing lost on the way to S3
        assert counts["read"] == counts["accepted"] + counts["quarantined"] + counts["duplicates"], table
    assert list(tmp_path.iterdir()) == []  # nothing on the local disk: store, demo files, reports are the bucket's
    demo = s3_files(f"{s3.bucket}/chain/demo")
    assert any(p.endswith("/products.jsonl") for p in demo) and any(p.endswith("/events.parquet") for p in demo)
    assert any(p.endswith(f"/quality-{result.snapshot}.md") for p in s3_files(f"{s3.bucket}/chain/reports"))
    objects = s3_files(f"{s3.bucket}/chain/lancedb")
    assert any(p.endswith(".lance") or ".lance/" in p for p in objects), objects[:5]
    assert not any("/_staging/" in p and p.endswith(".lance") for p in objects)  # staging cleaned up
    store = Store(db)
    assert store.read_snapshot(result.snapshot, "products").num_rows == result.ingest["products"]["accepted"]

    checkpoints, models = f"{workspace}/ray_results", f"{workspace}/models"
    config = TrainConfig(task="intent_entity", snapshot=result.snapshot, base_model="tiny-bert", epochs=1, batch_size=16,
                         max_length=16, num_workers=1, workspace=workspace, quiet=True)
    assert (config.db, config.storage_path, config.models_dir) == (db, checkpoints, models)  # all from the one root
    trained = run_training(config, store)
    assert trained.checkpoint_path.startswith(f"{s3.bucket}/chain/ray_results/") or \
        trained.checkpoint_path.startswith(checkpoints), trained.checkpoint_path
    assert any(p.endswith("model.pt") for p in s3_files(f"{s3.bucket}/chain/ray_results"))
    version = Registry(models).get(trained.model_version)
    assert version.path == f"{models}/{trained.model_version}" and list(tmp_path.iterdir()) == []
    assert version.snapshot == result.snapshot and version.config["storage_path"] == checkpoints
    assert Registry(models).load_model(trained.model_version).predict(["sony headphones"])[0]["raw_intent"]


def test_two_ingests_into_the_same_s3_table_at_once_lose_nothing(ray_session, s3, tmp_path):
    """Lance commits on S3 with conditional puts: two writers of `events` (and of `quarantine`)
    at the same moment both commit, nothing overwritten, nothing counted twice."""
    import json
    import threading

    from ray_app.ingest.pipeline import ingest_table
    from ray_app.store import Store

    db = f"s3://{s3.bucket}/concurrent/lancedb"
    files = {}
    for part in (0, 1):
        path = tmp_path / f"e{part}.jsonl"
        path.write_text("".join(json.dumps({"event_id": f"x{part}-{i}", "event_type": "click", "user_id": f"C{i % 9}",
                                            "product_id": f"P{i}", "timestamp": 1_700_000_000 + i}) + "\n"
                                for i in range(1500)) + "{bad\n")
        files[part] = path
    results, errors = {}, {}

    def go(part: int) -> None:
        try:
            results[part] = ingest_table(Store(db), "events", [str(files[part])], {"pseudonym_key": "k"}, block_rows=500)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors[part] = repr(exc)

    threads = [threading.Thread(target=go, args=(part,)) for part in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == {}
    assert [(r.read, r.accepted, r.quarantined) for _, r in sorted(results.items())] == [(1501, 1500, 1)] * 2
    store = Store(db)
    assert store.count("events") == 3000 and store.count("quarantine") == 2


def test_reports_reach_s3_whole_or_not_at_all(s3):
    """What jobs.evaluate, evaluate_recs, abtest and snapshot write their reports through."""
    import uuid

    from ray_app.labeling.human_io import load_records
    from ray_app.object_store import Output, read_text, write_text

    root = f"s3://{s3.bucket}/reports-test/{uuid.uuid4().hex[:8]}"
    with Output(root) as out:
        (out.folder / "eval.md").write_text("# figures")
        (out.folder / "plots").mkdir()
        (out.folder / "plots" / "a.png").write_bytes(b"\x89PNG")
        where = out.uri(out.folder / "plots" / "a.png")
    assert where == f"{root}/plots/a.png"
    assert sorted(p.rsplit("/", 2)[-2:][-1] for p in s3_files(root.removeprefix("s3://"))) == ["a.png", "eval.md"]
    assert read_text(f"{root}/eval.md") == "# figures"
    with pytest.raises(RuntimeError):
        with Output(f"{root}/failed") as out:
            (out.folder / "half.md").write_text("half")
            raise RuntimeError("the job failed")
    assert s3_files(f"{root.removeprefix('s3://')}/failed") == []  # nothing half-written published
    labels = write_text(f"{root}/labels.jsonl", '{"task": "intent"}\nnot json\n')
    assert labels == f"{root}/labels.jsonl"
    kind, records = load_records(labels)  # jobs.label --action import --path s3://...
    assert kind == "common" and records[0] == (1, {"task": "intent"}) and records[1][1].startswith("invalid JSON")
    with pytest.raises(FileNotFoundError):
        read_text(f"{root}/missing.md")
