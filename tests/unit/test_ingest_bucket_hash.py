"""The key hash that splits a large feed into key ranges, and commits that stream from a scan."""
from __future__ import annotations

import subprocess
import sys

import pyarrow as pa

from ray_app.ingest.buckets import NBUCKETS, bucket_of, ranges
from ray_app.store import Store, rows_to_arrow


def test_ranges_cover_every_bucket_once():
    for n in (1, 2, 7, 100, NBUCKETS, 10 * NBUCKETS):
        spans = ranges(n)
        assert spans[0][0] == 0 and spans[-1][1] == NBUCKETS
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and all(lo < hi for lo, hi in spans)
        assert len(spans) == min(n, NBUCKETS)


def test_the_hash_is_the_same_in_every_process():
    """Tasks in other processes (on other nodes) must put a key in the same bucket: no per-process salt."""
    keys = ["P1", "P2", "", "naïve", "x" * 300]
    here = bucket_of(pa.array(keys)).to_pylist()
    code = f"from ray_app.ingest.buckets import bucket_of; import pyarrow as pa; print(bucket_of(pa.array({keys!r})).to_pylist())"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=".").stdout.strip()
    assert there == str(here) and all(0 <= b < NBUCKETS for b in here)
    assert bucket_of(pa.array([None, ""])).to_pylist() == [here[2]] * 2  # a missing key hashes like an empty one
    assert len(set(bucket_of(pa.array([f"P{i}" for i in range(5000)])).to_pylist())) > NBUCKETS // 2  # spread out


def test_upsert_streams_batches_and_matches_a_table_write(tmp_path):
    rows = [{"event_id": f"e{i}", "event_type": "click", "user_id": f"u{i % 3}", "product_id": "p",
             "timestamp": 1_700_000_000 + i} for i in range(10)]
    import datetime as dt

    for r in rows:
        r["timestamp"] = dt.datetime.fromtimestamp(r["timestamp"])
    table = rows_to_arrow(rows, "events")
    calls = []

    def scan():
        calls.append(1)
        return iter(table.to_batches(max_chunksize=3))

    streamed, whole = Store(str(tmp_path / "a")), Store(str(tmp_path / "b"))
    got = streamed.upsert("events", scan, insert_only=True)
    want = whole.upsert("events", table, insert_only=True)
    assert (got.inserted, got.updated) == (want.inserted, want.updated) == (10, 0) and calls == [1]
    assert streamed.read("events").sort_by("event_id").equals(whole.read("events").sort_by("event_id"))
    assert streamed.upsert("events", lambda: iter([]), insert_only=True).inserted == 0  # an empty scan commits nothing new


def test_staged_rows_leave_a_task_in_bucket_order():
    """A key range must be a slice of each staging fragment, not rows scattered over all its pages."""
    from ray_app.ingest.buckets import with_bucket
    from ray_app.ingest.pipeline import staging_schema

    rows = pa.Table.from_pylist([{"product_id": f"P{i}", "_row": i} for i in range(500)], schema=staging_schema("products"))
    out = with_bucket(rows, "products")
    buckets = out.column("_bucket").to_pylist()
    assert buckets == sorted(buckets) and sorted(out.column("_row").to_pylist()) == list(range(500))
    assert buckets == sorted(bucket_of(pa.array([f"P{i}" for i in range(500)])).to_pylist())
