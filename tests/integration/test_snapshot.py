"""Snapshots read back exactly; the quality report sees changes; the main job runs end to end."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from jobs import main as main_job
from jobs import snapshot
from ray_app.store import Store, StoreError, rows_to_arrow, utcnow
from schemas.config import MainConfig, SnapshotConfig

pytestmark = pytest.mark.integration


def products(ids, title="Shoe"):
    return rows_to_arrow([{"product_id": i, "title": f"{title} {i}", "updated_at": utcnow()} for i in ids], "products")


def test_old_snapshot_reads_back_old_rows(tmp_path):
    store = Store(str(tmp_path / "db"))
    store.upsert("products", products(["a", "b", "c"]))
    store.create_snapshot("v1")
    store.upsert("products", products(["b", "d"], title="Boot"))  # one changed, one new
    store.delete("products", "product_id = 'a'")
    store.create_snapshot("v2")
    old = {r["product_id"]: r["title"] for r in store.read_snapshot("v1", "products").to_pylist()}
    new = {r["product_id"]: r["title"] for r in store.read_snapshot("v2", "products").to_pylist()}
    assert old == {"a": "Shoe a", "b": "Shoe b", "c": "Shoe c"}
    assert new == {"b": "Boot b", "c": "Shoe c", "d": "Boot d"}
    with pytest.raises(OSError, match="tagged"):  # LanceDB refuses to clean up versions a snapshot pins
        store.table("products").cleanup_old_versions(older_than=timedelta(0), delete_unverified=True)
    assert store.read_snapshot("v1", "products").num_rows == 3
    with pytest.raises(StoreError, match="already exists"):
        store.create_snapshot("v1")
    with pytest.raises(StoreError, match="not found"):
        store.read_snapshot("nope", "products")


def test_snapshot_job_reports_changes(tmp_path, capsys):
    db = str(tmp_path / "db")
    store = Store(db)
    store.upsert("products", products(["a", "b"]))
    assert snapshot.main(["--db", db, "--name", "v1", "--report-dir", str(tmp_path / "r"), "--quiet"]) == 0
    store.upsert("products", products(["b", "c"], title="Boot"))
    assert snapshot.main(["--db", db, "--name", "v2", "--report-dir", str(tmp_path / "r"), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((tmp_path / "r" / "quality-v2.json").read_text())
    assert summary["row_counts"]["products"] == 3
    assert report["changes"]["tables"]["products"] == {"added": 1, "removed": 0, "changed": 1, "row_delta": 1}
    assert "Changes since `v1`" in (tmp_path / "r" / "quality-v2.md").read_text()
    assert snapshot.main(["--db", db, "--action", "show", "--name", "missing"]) == 1


def test_main_job_small(ray_session, tmp_path):
    result = main_job.run(MainConfig(db=str(tmp_path / "db"), demo_dir=str(tmp_path / "demo"), products=300,
                                     queries=120, users=40, events=4000, report_dir=str(tmp_path / "reports"),
                                     models=False))
    for table, counts in result.ingest.items():
        assert counts["read"] == counts["accepted"] + counts["quarantined"] + counts["duplicates"], table
    assert result.labels["weak"]["rule"] > 0 and result.labels["human"]["human"] > 0
    report = json.loads((tmp_path / "reports" / f"quality-{result.snapshot}.json").read_text())
    assert report["row_counts"]["events"] == result.ingest["events"]["accepted"]
    assert report["labels"]["intent"]


def test_snapshot_job_names_a_recreated_table_and_resumes_a_failed_run(tmp_path, capsys):
    db = str(tmp_path / "db")
    store = Store(db)
    store.upsert("products", products(["a", "b"]))
    store.table("products").tags.create("snapshot-v1", store.version("products"))  # left by a crashed run
    assert snapshot.main(["--db", db, "--name", "v1", "--report-dir", str(tmp_path / "r"), "--quiet"]) == 0
    store.db.drop_table("products")
    store.upsert("products", products(["x"], title="Hat"))
    capsys.readouterr()
    assert snapshot.main(["--db", db, "--action", "show", "--name", "v1", "--report-dir", str(tmp_path / "r")]) == 1
    captured = capsys.readouterr()
    assert "table 'products' was dropped and re-created after snapshot 'v1'" in captured.out + captured.err
    assert "Traceback" not in captured.err
