"""Behaviour logs in: an invoice-line log through `--source online-retail` (returns linked, fees
kept out of the catalogue, duplicates counted, anonymous sessions, no raw id at rest) and a
ratings log of another domain (books) through `--source generic` with `--map` and `--event-type`."""
from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest

from jobs import ingest
from ray_app.store import Store

pytestmark = pytest.mark.integration
HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]


def write_invoice_log(path: Path, seed: int = 3) -> dict:
    """A small log with the real one's quirks; returns what the ingest must find."""
    rng = random.Random(seed)
    rows, expect = [], {"dupes": 0, "returns": 0, "anon_baskets": 0, "non_products": 0, "adjustments": 0}
    products = {f"2{i:04d}": f"CERAMIC MUG NO {i}" for i in range(40)}
    for n in range(120):
        invoice, customer = f"5{n:05d}", "" if n % 10 == 0 else f"{12000 + n % 25}.0"
        expect["anon_baskets"] += customer == ""
        day = f"2011-{1 + n // 12:02d}-{1 + n % 12:02d} 10:{n % 60:02d}:00"
        for code in rng.sample(sorted(products), 4):
            rows.append([invoice, code, products[code], str(rng.randint(1, 12)), day, "2.55", customer, "France" if n % 7 == 0 else "United Kingdom"])
        if n % 15 == 1:
            rows.append(rows[-1][:])  # an exact duplicate line
            expect["dupes"] += 1
        if n % 9 == 2:
            rows.append([invoice, "POST", "POSTAGE", "1", day, "18.0", customer, "France"])
            expect["non_products"] += 1
        if n % 20 == 5 and customer:  # a cancellation of the first line of this basket, a day later
            first = rows[-4 - (n % 15 == 1)]
            rows.append(["C" + invoice, first[1], first[2], "-" + first[3], day.replace(":00:00", ":59:00"), "2.55", customer, first[7]])
            expect["returns"] += 1
    rows.append(["599999", "20001", "damages", "-5", "2011-11-30 09:00:00", "0", "", "United Kingdom"])  # a stock adjustment
    rows.append(["599998", "20002", "CERAMIC MUG NO 2, WHITE", "2", "2011-12-01 09:00:00", "2.75", "12001.0", "United Kingdom"])
    expect["adjustments"] = 1
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return {**expect, "lines": len(rows), "customers": {r[6][:-2] for r in rows if r[6]}}


def run(capsys, *args: str) -> dict:
    assert ingest.main(list(args)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_invoice_log_every_line_accounted_returns_linked_no_raw_ids(ray_session, tmp_path, capsys):
    log = tmp_path / "retail" / "online_retail.csv"
    log.parent.mkdir()
    expect = write_invoice_log(log)
    out = run(capsys, "--source", "online-retail", "--path", str(log.parent), "--workspace", str(tmp_path / "ws"), "--quiet")
    tables = {t["table"]: t for t in out["tables"]}
    for t in tables.values():
        assert t["read"] == expect["lines"] == t["accepted"] + t["quarantined"] + t["duplicates"]
    ev = tables["events"]
    assert ev["quarantined"] == expect["non_products"] + expect["adjustments"]
    assert ev["duplicates"] == expect["dupes"]
    assert ev["notes"] == {"returns": expect["returns"], "returns_linked": expect["returns"]}
    store = Store(str(tmp_path / "ws" / "lancedb"))
    products = {p["product_id"]: p for p in store.read("products").to_pylist()}
    assert "POST" not in products and len(products) == 40
    assert products["20002"]["title"] == "CERAMIC MUG NO 2, WHITE"  # the latest description wins
    assert json.loads(products["20002"]["attributes"])["title_variants"] == ["CERAMIC MUG NO 2"]
    assert products["20001"]["title"] == "CERAMIC MUG NO 1"  # an adjustment's note never names a product
    events = store.read("events").to_pylist()
    by_id = {e["event_id"]: e for e in events}
    returns = [e for e in events if e["event_type"] == "return"]
    assert all(by_id[r["ref_event_id"]]["product_id"] == r["product_id"] and by_id[r["ref_event_id"]]["user_id"] == r["user_id"]
               for r in returns)
    anon = {e["user_id"] for e in events if e["user_id"].startswith("anon-")}
    assert len(anon) == expect["anon_baskets"]
    assert {e["locale"] for e in events} == {"gb", "fr"}
    # no raw customer or invoice number anywhere at rest: every table, quarantine included
    blob = json.dumps([store.read(t).to_pylist() for t in store.table_names()], default=str)
    for customer in expect["customers"]:
        assert f'"{customer}' not in blob and f"{customer}.0" not in blob
    assert '"500001' not in blob and "C500005" not in blob
    # a re-run of the same log adds nothing
    again = {t["table"]: t for t in run(capsys, "--source", "online-retail", "--path", str(log), "--workspace",
                                       str(tmp_path / "ws"), "--quiet")["tables"]}
    assert again["events"]["inserted"] == 0 and store.count("events") == len(events)


def test_a_ratings_log_of_another_domain_goes_through_the_generic_path(ray_session, tmp_path, capsys):
    """Books: users, items with titles and genres, ratings with epoch timestamps - renamed with --map."""
    books = tmp_path / "books.csv"
    books.write_text("isbn,book_title,genre,author\n" + "".join(
        f"97800000{i:02d},Book number {i},Fiction > {'Crime' if i % 2 else 'Fantasy'},Author {i % 5}\n" for i in range(30)))
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("reader,isbn,stars,ts\n" + "".join(
        f"reader-{i % 12},97800000{(i * 7) % 30:02d},{1 + i % 5},{1_300_000_000 + i * 3600}\n" for i in range(200))
        + "reader-1,9780000001,4,yesterday\n")  # a timestamp that is not one
    ws = str(tmp_path / "ws")
    run(capsys, "--table", "products", "--path", str(books), "--map", "isbn=product_id", "--map", "book_title=title",
        "--map", "genre=category_path", "--map", "author=brand", "--workspace", ws, "--quiet")
    out = run(capsys, "--table", "events", "--path", str(ratings), "--map", "reader=user_id", "--map", "isbn=product_id",
              "--map", "stars=value", "--map", "ts=timestamp", "--event-type", "rating", "--workspace", ws, "--quiet")
    t = out["tables"][0]
    assert (t["read"], t["accepted"], t["quarantined"]) == (201, 200, 1)
    assert any(k.startswith("timestamp:") for k in t["quarantine_reasons"])
    store = Store(os.path.join(ws, "lancedb"))
    events = store.read("events").to_pylist()
    assert {e["event_type"] for e in events} == {"purchase"} and {e["value"] for e in events} == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert all(e["user_id"].startswith("u_") for e in events)
    assert store.read("products").to_pylist()[0]["category_path"][0] == "Fiction"
