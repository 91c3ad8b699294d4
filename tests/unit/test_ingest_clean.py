"""Cleaning, parsing and normalisation rules of the ingest, without Ray."""
from __future__ import annotations

import json

import pytest

from ray_app.ingest.clean import CleanContext, Reject, clean_record
from ray_app.ingest.readers import decode_utf8, parse_file
from ray_app.privacy import pseudonymise
from ray_app.text import normalize_with_offsets, remap_span, strip_html

pytestmark = pytest.mark.unit


def ctx(table: str, **kw) -> CleanContext:
    return CleanContext(table=table, pseudonym_key="k", **kw)


def test_product_is_coerced_normalised_and_flagged():
    row = clean_record({"item_id": " P1 ", "name": "Red\u00a0 Shoe ", "description": "<p>Soft &amp; <b>light</b></p>",
                        "price": "$1,299.50", "rating": "4.5", "stock": "3", "category": "Shoes > Running"},
                       ctx("products"), {"item_id": "product_id"})
    assert row["product_id"] == "P1" and row["title"] == "Red Shoe"
    assert row["description"] == "Soft & light"
    assert row["price"] == 1299.5 and row["stock"] == 3 and row["category_path"] == ["Shoes", "Running"]
    assert "brand" in row["missing_fields"] and "price" not in row["missing_fields"]


@pytest.mark.parametrize("record, field", [
    ({"title": "x"}, "product_id"),
    ({"product_id": "p", "title": ""}, "title"),
    ({"product_id": "p", "title": "t", "price": "cheap"}, "price"),
    ({"product_id": "p", "title": "t", "rating": 9}, "rating"),
    ({"product_id": "p", "title": "t", "stock": 1.5}, "stock"),
    ({"product_id": "p", "title": "t", "attributes": "[1, 2]"}, "attributes"),
    ({"product_id": "p", "title": "t", "description": "x" * 200_001}, "description"),
])
def test_bad_products_are_rejected_naming_the_field(record, field):
    with pytest.raises(Reject) as err:
        clean_record(record, ctx("products"))
    assert err.value.field == field


def test_events_are_pseudonymised_and_typed():
    row = clean_record({"type": "Add-To-Cart", "customer_id": "U1", "item_id": "P1", "ts": 1767225600, "rank": "2"},
                       ctx("events"))
    assert row["event_type"] == "add_to_cart" and row["position"] == 2
    assert row["user_id"] == pseudonymise("U1", "k") != "U1" and row["event_id"]
    with pytest.raises(Reject) as err:
        clean_record({"event_type": "hover", "user_id": "U1", "product_id": "P", "timestamp": "2026-01-01"}, ctx("events"))
    assert err.value.field == "event_type"


def test_pseudonym_is_keyed_and_stable():
    assert pseudonymise("U1", "a") == pseudonymise("U1", "a") != pseudonymise("U1", "b")
    assert pseudonymise(pseudonymise("U1", "a"), "a") == pseudonymise("U1", "a")


def test_normalisation_keeps_span_offsets():
    text = "  play\u00a0 Cita  Romántica\tnow "
    norm, pos = normalize_with_offsets(text)
    start = text.index("Cita")
    a, b = remap_span(pos, start, start + len("Cita  Romántica"))
    assert norm == "play Cita Romántica now" and norm[a:b] == "Cita Romántica"


def test_html_is_stripped():
    assert " ".join(strip_html("<div>A<br/>B &lt;3</div><script>x()</script>").split()) == "A B <3"


def test_jsonl_reader_reports_broken_lines_without_losing_them():
    payload = b'{"a": 1}\n\n{"a": \n' + '{"a": "caf\u00e9"}'.encode("latin-1") + b'\n[1]\n{"a": "\xed\xa0\xbc\xed\xbd\x95"}\n'
    rows = list(parse_file("x.jsonl", payload))
    assert [r["_row"] for r in rows] == [1, 2, 3, 4, 5, 6]
    errors = [r["_error"].split(":")[0] for r in rows]
    assert errors == ["", "empty line", "invalid JSON", "broken encoding", "expected a JSON object, got list", ""]
    assert rows[5]["_data"]["a"] == "\U0001f355"  # CESU-8 surrogates repaired, not quarantined
    assert decode_utf8(b"\xff") is None


def test_csv_reader_counts_fields_and_handles_quotes():
    payload = b'id,title\n1,"a, b"\n2\n\n3,"multi\nline"\n'
    rows = list(parse_file("x.csv", payload))
    assert [r["_data"] if r["_data"] is not None else r["_error"] for r in rows] == [
        {"id": "1", "title": "a, b"}, "CSV row has 1 fields, the header has 2 (id, title)", "empty line", {"id": "3", "title": "multi\nline"}]


def test_byte_ranges_give_every_line_to_exactly_one_range():
    from ray_app.ingest.readers import line_range

    payload = b"".join(f'{{"i": {i}}}\n'.encode() for i in range(1000))
    bounds = list(range(0, len(payload), 777)) + [len(payload)]
    seen = []
    for s, e in zip(bounds, bounds[1:]):
        chunk, first = line_range(payload, s, e)
        seen += [(r["_row"], r["_data"]["i"]) for r in parse_file("x.jsonl", chunk, first_line=first)]
    assert seen == [(i + 1, i) for i in range(1000)]
