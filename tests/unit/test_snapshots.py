"""Snapshots read through their tags, and their creation is all-or-nothing and resumable."""
from __future__ import annotations

import pytest

from ray_app.store import SNAPSHOT_TAG_PREFIX, Store, StoreError, rows_to_arrow, utcnow
from schemas.records import DATA_TABLES


def products(ids, title="Shoe"):
    return rows_to_arrow([{"product_id": i, "title": f"{title} {i}", "updated_at": utcnow()} for i in ids], "products")


def ids(table) -> set[str]:
    return set(table.column("product_id").to_pylist())


def test_snapshot_of_a_recreated_table_is_an_error_not_the_new_rows(store):
    store.upsert("products", products(["a", "b", "c"]))
    store.create_snapshot("v1")
    pinned = store.snapshot_versions("v1")["products"]
    store.db.drop_table("products")
    store.upsert("products", products(["x", "y"], title="Hat"))  # same name, versions numbered from 1 again
    assert store.version("products") == pinned  # the old version number now names the new rows
    with pytest.raises(StoreError, match=r"table 'products' was dropped and re-created after snapshot 'v1'"):
        store.read_snapshot("v1", "products")
    assert store.read_snapshot("v1", "queries").num_rows == 0  # the other tables still read back
    store.db.drop_table("products")
    with pytest.raises(StoreError, match=r"table 'products' was dropped after snapshot 'v1'"):
        store.read_snapshot("v1", "products")


def test_a_moved_tag_is_reported(store):
    store.upsert("products", products(["a"]))
    store.create_snapshot("v1")
    store.upsert("products", products(["b"]))
    tbl = store.table("products")
    tbl.tags.update(SNAPSHOT_TAG_PREFIX + "v1", tbl.version)
    with pytest.raises(StoreError, match="tag 'snapshot-v1' of table 'products' points at version"):
        store.read_snapshot("v1", "products")


def test_tags_left_by_a_crashed_attempt_are_replaced_by_the_rerun(store):
    store.upsert("products", products(["a"]))
    store.table("products").tags.create(SNAPSHOT_TAG_PREFIX + "v1", store.version("products"))  # crash after one tag
    store.upsert("products", products(["b"]))
    snap = store.create_snapshot("v1")
    assert snap.name == "v1" and ids(store.read_snapshot("v1", "products")) == {"a", "b"}
    with pytest.raises(StoreError, match="already exists"):  # once committed, the name is taken
        store.create_snapshot("v1")


def test_a_failure_half_way_leaves_no_snapshot_and_the_rerun_succeeds(store, monkeypatch):
    store.upsert("products", products(["a", "b"]))
    opened = Store.table

    def fail_on_events(self, name):
        if name == "events":
            raise OSError("disk full while opening 'events'")
        return opened(self, name)

    monkeypatch.setattr(Store, "table", fail_on_events)
    with pytest.raises(OSError, match="disk full"):
        store.create_snapshot("v1")
    monkeypatch.setattr(Store, "table", opened)
    assert store.find_snapshot("v1") is None  # the snapshots row is the commit point
    assert SNAPSHOT_TAG_PREFIX + "v1" not in store.table("products").tags.list()  # its tags were removed
    store.upsert("products", products(["c"]))
    store.create_snapshot("v1")
    assert ids(store.read_snapshot("v1", "products")) == {"a", "b", "c"}
    for table in DATA_TABLES:
        assert store.table(table).tags.list()[SNAPSHOT_TAG_PREFIX + "v1"]["version"] == store.snapshot_versions("v1")[table]


def test_report_against_a_snapshot_taken_before_a_table_existed(store):
    import json

    from ray_app.quality import snapshot_report

    store.upsert("products", products(["a"]))
    snap = store.create_snapshot("v1")
    old = {t: v for t, v in json.loads(snap.versions).items() if t != "taxonomy"}  # as a store made before it pinned one
    snap.versions = json.dumps(old)
    store.upsert("snapshots", rows_to_arrow([snap.model_dump()], "snapshots"))
    store.upsert("products", products(["b"]))
    store.create_snapshot("v2")
    report = snapshot_report(store, "v2", previous="v1")
    assert report["row_counts"]["products"] == 2
