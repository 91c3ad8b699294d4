"""The invoice-line adapter (Online Retail's layout) and the driver steps it relies on: returns
linked to their purchase, product title variants kept. Pure functions, no Ray."""
from __future__ import annotations

import json
from datetime import datetime

import pyarrow as pa
import pytest

from ray_app.ingest.clean import CleanContext, Reject, clean_record
from ray_app.ingest.resolve import keep_variants, link_returns
from ray_app.ingest.retail import country_locale, non_product_reason, retail_event, retail_product
from ray_app.store import schema_of

pytestmark = pytest.mark.unit
KEY = "test-key"


def line(**kw) -> dict:
    base = {"InvoiceNo": "536365", "StockCode": "85123A", "Description": "WHITE HANGING HEART T-LIGHT HOLDER",
            "Quantity": "6", "InvoiceDate": "2010-12-01 08:26:00", "UnitPrice": "2.55", "CustomerID": "17850.0",
            "Country": "United Kingdom"}
    return {**base, **kw}


def event_row(rec: dict) -> dict:
    return clean_record(retail_event(rec, "f.csv")[0], CleanContext(table="events", pseudonym_key=KEY))


def test_purchase_line_becomes_a_pseudonymised_purchase():
    row = event_row(line())
    assert row["event_type"] == "purchase" and row["product_id"] == "85123A" and row["quantity"] == 6
    assert row["value"] == pytest.approx(2.55) and row["locale"] == "gb"
    assert row["user_id"].startswith("u_") and "17850" not in row["user_id"]
    assert row["session_id"].startswith("s_") and "536365" not in row["session_id"]
    assert row["timestamp"] == datetime(2010, 12, 1, 8, 26)


def test_cancellation_is_a_return_with_positive_quantity():
    row = event_row(line(InvoiceNo="C536379", Quantity="-2"))
    assert row["event_type"] == "return" and row["quantity"] == 2


def test_line_without_customer_is_an_anonymous_session_never_a_shared_user():
    a, b = event_row(line(CustomerID="")), event_row(line(CustomerID="", InvoiceNo="536400"))
    assert a["user_id"].startswith("anon-s_") and a["user_id"] != b["user_id"]
    assert event_row(line(CustomerID="", StockCode="22633"))["user_id"] == a["user_id"]  # one basket, one anonymous user


def test_exact_duplicate_lines_share_an_id_and_distinct_lines_do_not():
    assert retail_event(line(), "f")[0]["event_id"] == retail_event(line(), "f")[0]["event_id"]
    assert retail_event(line(), "f")[0]["event_id"] != retail_event(line(Quantity="7"), "f")[0]["event_id"]


@pytest.mark.parametrize("rec, field, words", [
    (line(StockCode="POST", Description="POSTAGE"), "product_id", "postage"),
    (line(StockCode="gift_0001_20"), "product_id", "gift voucher"),
    (line(Quantity="-3", Description="damages", CustomerID="", UnitPrice="0"), "quantity", "stock adjustment"),
    (line(CustomerID="", UnitPrice="0", Description="check"), "value", "zero-price"),
    (line(InvoiceNo="A563185", StockCode="B"), "product_id", "bad-debt"),
    (line(InvoiceNo="A563186", StockCode="22633"), "session_id", "bad-debt"),
])
def test_lines_that_are_not_sales_are_rejected_with_the_reason(rec, field, words):
    with pytest.raises(Reject) as err:
        retail_event(rec, "f")
    assert err.value.field == field and words in err.value.reason


def test_product_rows_keep_the_catalogue_clean():
    assert retail_product(line(), "f")[0]["title"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert retail_product(line(UnitPrice="0"), "f")[0]["price"] is None  # a free line says nothing about the price
    for rec in (line(StockCode="DOT"), line(Quantity="-1", CustomerID="", UnitPrice="0", Description="thrown away"),
                line(Description="?")):
        with pytest.raises(Reject) as err:
            retail_product(rec, "f")
        assert err.value.record and "17850" not in json.dumps(err.value.record)  # what quarantine keeps names no one
    assert non_product_reason("85123A") == "" and non_product_reason("m") == "manual adjustment"
    assert country_locale("EIRE") == "ie" and country_locale("Narnia") == "narnia"


def _events(rows: list[dict]) -> pa.Table:
    full = [{"event_id": r["id"], "event_type": r["type"], "user_id": r["user"], "session_id": "", "query_id": "",
             "product_id": r["product"], "position": None, "timestamp": r["ts"], "device": "", "locale": "gb",
             "quantity": 1, "value": 1.0, "ref_event_id": r.get("ref")} for r in rows]
    return pa.Table.from_pylist(full, schema=schema_of("events"))


def test_returns_link_to_the_latest_earlier_purchase_of_that_user_and_product():
    t = lambda d: datetime(2011, 1, d)  # noqa: E731
    rows = _events([
        {"id": "p1", "type": "purchase", "user": "u_a", "product": "X", "ts": t(1)},
        {"id": "p2", "type": "purchase", "user": "u_a", "product": "X", "ts": t(5)},
        {"id": "p3", "type": "purchase", "user": "u_b", "product": "X", "ts": t(6)},
        {"id": "r1", "type": "return", "user": "u_a", "product": "X", "ts": t(7)},
        {"id": "r2", "type": "return", "user": "u_a", "product": "Y", "ts": t(7)},  # bought before the log: no link
        {"id": "r3", "type": "return", "user": "u_c", "product": "X", "ts": t(8)},  # bought in an earlier feed
        {"id": "r4", "type": "return", "user": "u_a", "product": "X", "ts": t(2), "ref": "given"},  # the feed's own link stays
    ])
    stored = _events([{"id": "old", "type": "purchase", "user": "u_c", "product": "X", "ts": t(3)}])
    out, counts = link_returns(rows, lambda users: stored.filter(pa.compute.is_in(stored["user_id"], pa.array(users))))
    refs = dict(zip(out["event_id"].to_pylist(), out["ref_event_id"].to_pylist()))
    assert refs["r1"] == "p2" and refs["r2"] is None and refs["r3"] == "old" and refs["r4"] == "given"
    assert refs["p1"] is None and counts == {"returns": 4, "returns_linked": 3}


def test_the_latest_title_wins_and_the_others_are_kept_as_variants():
    ok = pa.table({"product_id": ["A", "A", "A", "B"], "title": ["MUG, BLUE", "BLUE MUG", "BLUE MUG", "PLATE"],
                   "attributes": ['{"colour": "blue"}'] * 3 + ["{}"]})
    kept = pa.table({"product_id": ["A", "B"], "title": ["BLUE MUG", "PLATE"], "attributes": ['{"colour": "blue"}', "{}"]})
    out = keep_variants(ok, kept).to_pylist()
    assert json.loads(out[0]["attributes"]) == {"colour": "blue", "title_variants": ["MUG, BLUE"]}
    assert out[1]["attributes"] == "{}"


def test_a_store_written_before_the_new_event_columns_gets_them_as_nulls(tmp_path):
    """Event.quantity/value/ref_event_id were added after stores existed: such a store keeps working."""
    import lancedb

    from ray_app.store import Store, rows_to_arrow

    old = schema_of("events")
    old = pa.schema([f for f in old if f.name not in ("quantity", "value", "ref_event_id")])
    db = lancedb.connect(str(tmp_path))
    db.create_table("events", data=pa.Table.from_pylist([{
        "event_id": "e0", "event_type": "click", "user_id": "u_x", "session_id": "", "query_id": "q", "product_id": "p",
        "position": 1, "timestamp": datetime(2011, 1, 1), "device": "", "locale": "us"}], schema=old))
    store = Store(str(tmp_path))
    store.upsert("events", rows_to_arrow([{"event_id": "e1", "event_type": "return", "user_id": "u_x", "product_id": "p",
                                           "timestamp": datetime(2011, 1, 2), "quantity": 2, "ref_event_id": "e0"}], "events"),
                 insert_only=True)
    rows = {r["event_id"]: r for r in store.read("events").to_pylist()}
    assert rows["e0"]["quantity"] is None and rows["e1"]["quantity"] == 2 and rows["e1"]["ref_event_id"] == "e0"
