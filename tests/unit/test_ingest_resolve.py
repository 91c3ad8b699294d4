"""Driver-side ingest rules without Ray: CSV records, repeats, partial rows, reasons, pseudonyms."""
from __future__ import annotations

import pyarrow as pa
import pytest

from ray_app.ingest.clean import CleanContext, clean_record
from ray_app.ingest.pipeline import reason_kind, staging_schema
from ray_app.ingest.readers import parse_csv
from ray_app.ingest.resolve import dedup_latest, merge_partial, number_repeats
from ray_app.privacy import is_pseudonym, pseudonymise, pseudonymise_session, seal, unseal

pytestmark = pytest.mark.unit


def test_csv_reader_takes_fields_over_the_csv_module_limit():
    big = "x" * 1_048_576
    rows = list(parse_csv("p.csv", f"product_id,title\nP1,{big}\nP2,ok\n".encode()))
    assert [r["_data"]["product_id"] for r in rows] == ["P1", "P2"]
    assert rows[0]["_data"]["title"] == big and not rows[0]["_error"]


def test_unbalanced_quote_costs_one_line_not_the_rest_of_the_file():
    payload = b'id,title\n1,ok\n2,"open quote\n3,fine\n4,"multi\nline"\n5,"a"b\n6,"open at the end\n'
    rows = list(parse_csv("p.csv", payload))
    assert [(r["_row"], bool(r["_error"])) for r in rows] == [(2, False), (3, True), (4, False), (5, False), (7, True), (8, True)]
    assert rows[1]["_raw"] == '2,"open quote' and rows[1]["_error"].startswith("unbalanced quote")
    assert rows[3]["_data"] == {"id": "4", "title": "multi\nline"}
    covered = sum(1 + r["_raw"].count("\n") for r in rows)
    assert covered == payload.count(b"\n") - 1  # every body line in exactly one row


def _staged(rows: list[dict], table: str) -> pa.Table:
    base = {"_status": "ok", "_raw": "", "_reason": "", "_field": "", "_sealed": "", "_sub": 0, "_ignored": []}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=staging_schema(table))


def test_repeated_identical_events_stay_separate_and_reproducible():
    ctx = CleanContext(table="events", pseudonym_key="k")
    event = {"event_type": "purchase", "user_id": "C1", "product_id": "P1", "timestamp": "2024-01-01T10:00:00"}
    cleaned = [clean_record(dict(event), ctx) for _ in range(3)]
    assert len({c["event_id"] for c in cleaned}) == 1 and all(c["_auto_key"] for c in cleaned)
    given = clean_record({**event, "event_id": "E9"}, ctx)
    staged = _staged([{**c, "_source": "f", "_row": i + 1} for i, c in enumerate(cleaned)]
                     + [{**given, "_source": "f", "_row": 9}, {**given, "_source": "f", "_row": 10}], "events")
    numbered = number_repeats(staged)
    ids = numbered.column("event_id").to_pylist()
    assert len(set(ids[:3])) == 3 and ids[0] == cleaned[0]["event_id"]  # the first keeps the content id
    assert number_repeats(staged).column("event_id").to_pylist() == ids  # a re-run gives the same ids
    kept, dropped = dedup_latest(numbered, ["event_id"])
    assert kept.num_rows == 4 and dropped == 1  # only the repeated feed id is a duplicate


def test_partial_rows_keep_stored_columns_and_new_keys_need_a_title():
    ctx = CleanContext(table="products", pseudonym_key="k")
    full = clean_record({"product_id": "P1", "title": "Mug", "brand": "Acme", "description": "Blue", "price": "3"}, ctx)
    stored = pa.Table.from_pylist([{k: v for k, v in full.items() if not k.startswith("_")}])
    update = [clean_record({"product_id": pid, "price": "4.5", "stock": "7"}, ctx) for pid in ("P1", "P2")]
    staged = _staged([{**u, "_source": "f", "_row": i} for i, u in enumerate(update)], "products")
    columns = [f.name for f in staging_schema("products") if not f.name.startswith("_")]
    merged, rejected = merge_partial("products", staged, "product_id", lambda keys: stored, columns)
    (row,) = merged.to_pylist()
    assert (row["title"], row["brand"], row["description"], row["price"], row["stock"]) == ("Mug", "Acme", "Blue", 4.5, 7)
    assert "stock" not in row["missing_fields"] and "brand" not in row["missing_fields"]
    assert [(r["product_id"], field) for r, field, _ in rejected] == [("P2", "title")]
    assert "not in the store yet" in rejected[0][2]


def test_reason_kinds_keep_the_whole_reason_without_its_values():
    assert reason_kind("grade", "'3.0' is not one of E, S, C, I") == "grade: … is not one of E, S, C, I"
    assert reason_kind("", "broken encoding: not valid UTF-8 at byte 17") == "broken encoding: not valid UTF-8 at byte …"


def test_pseudonyms_are_recognised_by_key_not_by_shape():
    p = pseudonymise("alice@example.com", "k")
    assert is_pseudonym(p, "k") and pseudonymise(p, "k") == p
    assert not is_pseudonym(p, "other-key") and pseudonymise(p, "other-key") != p
    lookalike = "u_" + "a" * 24  # shaped like a pseudonym, but a raw id
    assert pseudonymise(lookalike, "k") != lookalike
    s = pseudonymise_session("sess-42", "k")
    assert s.startswith("s_") and s != pseudonymise("sess-42", "k") and pseudonymise_session(s, "k") == s


def test_sealed_rows_open_only_with_the_key():
    token = seal("alice@example.com,click", "k")
    assert "alice" not in token and unseal(token, "k") == "alice@example.com,click"
    with pytest.raises(ValueError):
        unseal(token, "wrong")


def test_a_row_without_a_split_keeps_its_stored_split():
    from ray_app.ingest.resolve import keep_stored_splits

    stored = pa.Table.from_pylist([{"query_id": "q1", "split": "test"}, {"query_id": "q2", "split": ""}])
    rows = pa.Table.from_pylist([{"query_id": q, "split": s} for q, s in (("q1", ""), ("q2", ""), ("q3", ""), ("q4", "train"))])
    kept, n = keep_stored_splits("queries", rows, ["query_id"], lambda keys: stored)
    assert kept.column("split").to_pylist() == ["test", "", "", "train"] and n == 1


def test_query_ids_from_text_agree_whatever_the_locale_spelling():
    from ray_app.ingest.judged import query_key, text_label

    ctx = CleanContext(table="queries", pseudonym_key="k")
    by_query = clean_record({"text": "Red  Shoes", "locale": " "}, ctx)["query_id"]
    (label,) = text_label({"query": "red shoes", "intent": "product_search", "locale": " US "}, "f.csv")
    assert by_query == label["target_id"] == query_key("red shoes", "us") == query_key("RED SHOES", "")


def test_quarantined_personal_rows_keep_only_their_table_columns_readable():
    from ray_app.ingest.quarantine import redact_personal

    ctx = CleanContext(table="events", pseudonym_key="k")
    data = {"user_id": " bob@x.test ", "email": "bob@x.test", "event_type": "teleport", "note": "ask bob@x.test"}
    raw, reason, sealed = redact_personal("line", data, "'teleport' unknown for bob@x.test", ctx, {})
    assert "bob@x.test" not in raw + reason and "email" not in raw and "note" not in raw
    assert pseudonymise("bob@x.test", "k") in raw  # the same pseudonym as the accepted rows get
    assert unseal(sealed, "k") == "line"


def test_prices_as_shops_write_them():
    from ray_app.ingest.fields import parse_number

    assert parse_number("€129,00") == (129.0, "EUR") and parse_number("1.299,50 EUR") == (1299.5, "EUR")
    assert parse_number("$1,299.50") == (1299.5, "USD") and parse_number("1,299") == (1299.0, "")
    assert parse_number("4.125") == (4.125, "") and parse_number("1 299,50") == (1299.5, "")
    assert parse_number("12,34,5") is None and parse_number("5 6") is None and parse_number("about ten") is None
    ctx = CleanContext(table="products", pseudonym_key="k")
    row = clean_record({"product_id": "P1", "title": "Spade", "price": "€129,00"}, ctx)
    assert (row["price"], row["currency"]) == (129.0, "EUR")  # not 12900 USD


def test_reason_kinds_keep_the_scale_and_limits():
    assert reason_kind("grade", "'4' is outside the scale numeric:0-3 (0 to 3)") == "grade: … is outside the scale numeric:0-3 (0 to 3)"
    assert reason_kind("description", "value is 1,048,576 characters, over the limit of 100,000") == \
        "description: value is … characters, over the limit of 100,000"
