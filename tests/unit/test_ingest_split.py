"""Splitting one file between ingest tasks (no Ray): JSONL and CSV byte ranges cut at line starts
found by one streaming pass (CSV: never inside a quoted field), Parquet runs of row groups. Every
split must read exactly what the whole file reads: the same rows, row numbers, raw text, errors."""
from __future__ import annotations

import random
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_app.ingest import readers
from ray_app.ingest.pipeline import TableSpec, plan_units, stage_units
from tests.fuzz_files import LIMIT, shop_file

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 1)


def _rows(units: list[dict], path: str) -> list[dict]:
    batch = {k: [u[k] for u in units] for k in units[0]}
    table = stage_units(batch, [TableSpec("products")], {"pseudonym_key": "k", "max_field_chars": LIMIT, "now": NOW},
                        None, None)[0]
    return sorted(table.to_pylist(), key=lambda r: (r["_row"], r["_sub"]))


@settings(max_examples=80, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(f=shop_file(), block_rows=st.integers(1, 3))
def test_any_split_reads_what_the_whole_file_reads(tmp_path_factory, f, block_rows):
    path = tmp_path_factory.mktemp("split") / f.name
    path.write_bytes(f.payload)
    whole = [{"path": str(path), "read_from": str(path), "kind": "whole", "start": 0, "end": -1, "first_line": 1, "header_end": 0}]
    # ranges of ~400-1200 bytes, row groups of 1-3 rows; gzip decompressed into the spill folder first
    units = plan_units([str(path)], None, block_rows, spill_dir=str(path.parent / "spill"))
    split, one = _rows(units, str(path)), _rows(whole, str(path))
    assert split == one
    if f.name.endswith(".json"):
        assert [u["kind"] for u in units] == ["whole"]


def test_a_gzipped_file_is_decompressed_once_and_split_like_a_plain_one(tmp_path):
    import gzip

    lines = ['product_id,title'] + [f'p{i},"item {i}, blue"' for i in range(300)]
    csv_gz, jsonl_gz = tmp_path / "products.csv.gz", tmp_path / "products.jsonl.gz"
    csv_gz.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    jsonl_gz.write_bytes(gzip.compress("".join(f'{{"product_id": "p{i}", "title": "item {i}"}}\n' for i in range(300)).encode()))
    for path in (csv_gz, jsonl_gz):
        spill = tmp_path / f"spill-{path.name}"
        units = plan_units([str(path)], None, 5, spill_dir=str(spill))
        assert len(units) > 2 and {u["kind"] for u in units} == {"lines"} and {u["path"] for u in units} == {str(path)}
        assert {u["read_from"] for u in units} == {str(next(spill.iterdir()))}  # the one decompressed copy
        whole = plan_units([str(path)], None, 5)  # no spill folder: one task reads the whole file
        assert [u["kind"] for u in whole] == ["whole"]
        split, one = _rows(units, str(path)), _rows(whole, str(path))
        assert split == one and len(split) == 300 and {r["_source"] for r in split} == {str(path)}
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"product_id": "p1"}\n' * 400)[:-30])  # cut short: not whole gzip
    spill = tmp_path / "spill-broken"
    units = plan_units([str(broken)], None, 5, spill_dir=str(spill))
    assert [u["kind"] for u in units] == ["whole"] and units[0]["read_from"] == str(broken)
    assert not spill.exists() or not any(spill.iterdir())  # the partial copy removed
    assert _rows(units, str(broken))[-1]["_status"] == "quarantine"  # the error reported as before


def test_big_files_are_split_and_each_task_reads_only_its_range(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = ['product_id,title,description'] + [f'p{i},"item {i}, blue","say ""hi"" {i}"' for i in range(300)]
    csv_path = tmp_path / "products.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    jsonl_path = tmp_path / "products.jsonl"
    jsonl_path.write_text("".join(f'{{"product_id": "p{i}", "title": "item {i}"}}\n' for i in range(300)))
    pq_path = tmp_path / "products.parquet"
    pq.write_table(pa.table({"product_id": [f"p{i}" for i in range(300)], "title": [f"item {i}" for i in range(300)]}),
                   pq_path, row_group_size=50)
    read: list[int] = []
    real = readers.read_range
    monkeypatch.setattr("ray_app.ingest.pipeline.read_range", lambda p, s, e: read.append(e - s) or real(p, s, e))
    for path, kinds in ((csv_path, {"lines"}), (jsonl_path, {"lines"}), (pq_path, {"row_groups"})):
        units = plan_units([str(path)], None, 10)
        assert len(units) > 2 and {u["kind"] for u in units} == kinds, units
        read.clear()
        rows = _rows(units, str(path))
        assert [r["product_id"] for r in rows] == [f"p{i}" for i in range(300)] and {r["_status"] for r in rows} == {"ok"}
        assert [r["_row"] for r in rows] == list(range(2 if path == csv_path else 1, 301 + (path == csv_path)))
        if path != pq_path:  # each range once, and for CSV the header line once per later range
            header = len(lines[0]) + 1 if path == csv_path else 0
            assert sum(read) == path.stat().st_size + header * (len(units) - 1)
    assert rows[7]["title"] == "item 7"

    # a quoted value holding a newline: cut only before it, the rest is one range
    multi = lines[:201] + ['p200,"two\nlines",x'] + lines[202:]  # lines[0] is the header
    csv_path.write_text("\n".join(multi) + "\n")
    units = plan_units([str(csv_path)], None, 10)
    offset = len("\n".join(multi[:201])) + 1
    assert len(units) > 2 and all(u["start"] <= offset for u in units) and units[-1]["end"] == csv_path.stat().st_size
    rows = _rows(units, str(csv_path))
    assert len(rows) == 300 and {r["_status"] for r in rows} == {"ok"} and rows[200]["title"] == "two lines"  # (whitespace folded by the cleaner)


def test_line_starts_cut_at_line_starts_outside_quotes(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "SCAN_BLOCK", 64)  # cuts across the planner's read blocks too
    rng = random.Random(1)
    for trial in range(200):
        parts = []
        for _ in range(rng.randint(0, 60)):
            kind = rng.random()
            parts.append('a,"multi\nline ""q"" field",c' if kind < 0.2 else 'a stray 12" quote,x' if kind < 0.25
                         else "x" * rng.randint(0, 30))
        data = ("\n".join(parts) + ("\n" if rng.random() < 0.5 else "")).encode()
        path = tmp_path / f"f{trial}"
        path.write_bytes(data)
        chunk = rng.randint(1, 80)
        for quotes in (False, True):
            points = readers.line_starts(str(path), chunk, quotes)
            assert points[0] == (0, 1)
            offsets = [o for o, _ in points]
            assert offsets == sorted(set(offsets)) and all(b - a >= chunk for a, b in zip(offsets[1:], offsets[2:]))
            for offset, line in points[1:]:
                assert 0 < offset < len(data) and data[offset - 1:offset] == b"\n"
                assert data[:offset].count(b"\n") + 1 == line
                if quotes:  # every line before a cut is balanced: each is one whole record
                    assert all(line.count(b'"') % 2 == 0 for line in data[:offset].split(b"\n"))


def test_one_parse_fills_every_table_of_a_file_as_separate_parses_would(tmp_path):
    """An invoice log feeds products and events: staged in one pass, each table's rows (ok and
    quarantined, row numbers, reasons) are what a pass of its own stages, and a transform that
    edits the record it is given leaves the other table's record alone."""
    from ray_app.ingest.retail import RAW_COLUMNS, retail_event, retail_product

    log = tmp_path / "online_retail.csv"
    log.write_text("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
                   "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
                   "536365,POST,POSTAGE,1,2010-12-01 08:26:00,18,17850.0,United Kingdom\n"
                   "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom\n"
                   "536366,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom\n"
                   "536366,22633,HAND WARMER,not a number,2010-12-01 08:28:00,1.85,17850.0,France\n"
                   "536367,\"broken\n")

    def greedy(rec: dict, source: str) -> list[dict]:  # edits its input: the next table must not see it
        rec["StockCode"] = "EDITED"
        return retail_product(rec, source)

    ctx = {"pseudonym_key": "k", "now": NOW}
    units = plan_units([str(log)], None, 2, spill_dir=str(tmp_path / "spill"))
    batch = {k: [u[k] for u in units] for k in units[0]}
    products = TableSpec("products", dict(RAW_COLUMNS), retail_product, derived=True)
    events = TableSpec("events", dict(RAW_COLUMNS), retail_event)

    def rows(table) -> list[dict]:  # a sealed raw row is encrypted with a fresh IV: compare whether there is one
        return [{**r, "_sealed": bool(r["_sealed"])} for r in table.to_pylist()]

    both = stage_units(batch, [products, events], ctx, None, None)
    alone = [stage_units(batch, [spec], ctx, None, None)[0] for spec in (products, events)]
    for one, own in zip(both, alone):
        assert rows(one) == rows(own)
    statuses = [r["_status"] for r in both[1].to_pylist()]
    assert statuses.count("ok") >= 2 and "quarantine" in statuses  # rows of both kinds were compared
    edited = stage_units(batch, [TableSpec("products", dict(RAW_COLUMNS), greedy, derived=True), events], ctx, None, None)
    assert rows(edited[1]) == rows(both[1]) and "EDITED" in {r["product_id"] for r in edited[0].to_pylist()}


def test_the_job_parses_once_for_the_sources_that_read_the_same_files(tmp_path):
    from jobs.ingest import source_groups
    from ray_app.ingest.adapters import Source, judgment_sources
    from ray_app.ingest.retail import retail_sources

    log = tmp_path / "online_retail.csv"
    log.write_text("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n")
    assert [[s.table for s in g] for g in source_groups(retail_sources(str(log)))] == [["products", "events"]]
    catalogue, judged = [str(tmp_path / "products.jsonl")], [str(tmp_path / "judgments.csv")]
    plan = [Source("products", catalogue), *judgment_sources(judged, {}), Source("products", judged), Source("users", judged)]
    # consecutive sources of one file, each table once in a pass; order kept
    assert [[s.table for s in g] for g in source_groups(plan)] == [["products"], ["queries", "judgments", "products", "users"]]
    again = [Source("products", catalogue), Source("products", catalogue)]
    assert [[s.table for s in g] for g in source_groups(again)] == [["products"], ["products"]]


def test_a_file_splits_into_a_multiple_of_the_cpus_and_still_reads_every_row(tmp_path):
    path = tmp_path / "products.jsonl"
    path.write_text("".join(f'{{"product_id": "p{i:05d}", "title": "item {i:05d}"}}\n' for i in range(1050)))
    alone = plan_units([str(path)], None, 100)
    assert len(alone) % 2 == 1  # 11 ranges of ~100 rows: on 2 CPUs the last would run by itself
    for cpus in (2, 3, 4):
        units = plan_units([str(path)], None, 100, parallelism=cpus)
        assert len(units) % cpus == 0 and len(units) >= len(alone)
        assert _rows(units, str(path)) == _rows(alone, str(path))
