"""Ingest of a shop's own files: oversized CSV fields, repeated events, partial feeds, concurrent
ingests, ignored columns, and no raw identifier anywhere in the store (every table, every version)."""
from __future__ import annotations

import csv
import io
import json
import random
import re
import threading
import time
from pathlib import Path

import pytest

from jobs import ingest
from ray_app.ingest.pipeline import ingest_table
from ray_app.privacy import resolve_key, unseal
from ray_app.store import Store

pytestmark = pytest.mark.integration
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _run(capsys, *args: str) -> tuple[int, dict, str]:
    code = ingest.main(list(args))
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    return code, summary, captured.err


def write_messy_csv(path: Path, n: int = 1000, seed: int = 5) -> None:
    """n product rows, 100 of them bad: missing ids, wrong types, twenty 1 MB descriptions,
    duplicate ids, out-of-range values, Latin-1 lines."""
    rng = random.Random(seed)
    kinds = ["missing_id"] * 20 + ["wrong_type"] * 20 + ["huge"] * 20 + ["duplicate"] * 20 + ["range"] * 10 + ["latin1"] * 10
    bad_at = dict(zip(rng.sample(range(50, n), len(kinds)), kinds))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["product_id", "title", "description", "brand", "price", "rating", "stock"])
    lines = [out.getvalue().encode()]
    for i in range(n):
        row = [f"P{i:05d}", f"Mug number {i}, blue", "A mug", "Acme", f"{rng.uniform(1, 90):.2f}", "4.5", str(rng.randint(0, 9))]
        kind = bad_at.get(i)
        if kind == "missing_id":
            row[0] = ""
        elif kind == "wrong_type":
            row[4] = "about ten dollars"
        elif kind == "huge":
            row[2] = "y" * 1_048_576
        elif kind == "duplicate":
            row[0], row[1] = f"P{rng.randint(0, 49):05d}", "Updated mug"
        elif kind == "range":
            row[5] = "11"
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        line = buf.getvalue()
        lines.append(line.replace("Mug", "Café").encode("latin-1") if kind == "latin1" else line.encode())
    path.write_bytes(b"".join(lines))


def test_csv_with_oversized_fields_and_bad_rows_loses_nothing(ray_session, tmp_path, capsys):
    src = tmp_path / "catalogue.csv"
    write_messy_csv(src)
    db = str(tmp_path / "db")
    code, summary, err = _run(capsys, "--db", db, "--table", "products", "--path", str(src))
    assert code == 0, err
    assert (summary["read"], summary["accepted"], summary["quarantined"], summary["duplicates"]) == (1000, 900, 80, 20)
    quarantine = Store(db).read("quarantine").to_pylist()
    assert sum(len(q["raw"]) > 1_000_000 and q["field"] == "description" for q in quarantine) == 20  # kept whole
    by_field = {}
    for q in quarantine:
        by_field[q["field"] or q["reason"].split(":")[0]] = by_field.get(q["field"] or q["reason"].split(":")[0], 0) + 1
    assert by_field == {"product_id": 20, "price": 20, "description": 20, "rating": 10, "broken encoding": 10}
    assert not ANSI.search(json.dumps(summary))


def test_identical_events_in_a_feed_are_separate_events(ray_session, tmp_path, capsys):
    src = tmp_path / "events.csv"
    src.write_text("event_type,user_id,product_id,timestamp,event_id\n"
                   "purchase,C1,P1,2024-01-01T10:00:00,\n"
                   "purchase,C1,P1,2024-01-01T10:00:00,\n"  # the same item on two lines of one invoice
                   "click,C2,P2,2024-01-01T10:00:01,E7\n"
                   "click,C2,P2,2024-01-01T10:00:01,E7\n")  # a retry the feed itself marked as one event
    db = str(tmp_path / "db")
    code, first, _ = _run(capsys, "--db", db, "--table", "events", "--path", str(src), "--quiet")
    assert code == 0 and (first["read"], first["accepted"], first["duplicates"]) == (4, 3, 1)
    code, again, _ = _run(capsys, "--db", db, "--table", "events", "--path", str(src), "--quiet")
    assert code == 0 and again["tables"][0]["inserted"] == 0 and Store(db).count("events") == 3


def test_price_and_stock_feed_changes_only_price_and_stock(ray_session, tmp_path, capsys):
    db = str(tmp_path / "db")
    full = tmp_path / "full.csv"
    full.write_text("product_id,title,description,brand,category_path,price,rating,stock,image_url\n"
                    "A1,Red mug,Stoneware,Acme,Home > Kitchen,9.99,4.1,3,http://img/a1\n"
                    "A2,Blue mug,Porcelain,Acme,Home > Kitchen,12.50,3.9,0,http://img/a2\n")
    assert _run(capsys, "--db", db, "--table", "products", "--path", str(full), "--quiet")[0] == 0
    before = {r["product_id"]: r for r in Store(db).read("products").to_pylist()}
    prices = tmp_path / "prices.csv"
    prices.write_text("product_id,price,stock\nA1,8.49,10\nA9,5.00,1\n")  # A9 is not in the catalogue yet
    code, summary, _ = _run(capsys, "--db", db, "--table", "products", "--path", str(prices), "--quiet")
    assert code == 0 and (summary["accepted"], summary["quarantined"]) == (1, 1)
    partial_title = tmp_path / "titles.csv"
    partial_title.write_text("product_id,title,price,stock\nA2,Blue mug XL,13.00,4\n")
    assert _run(capsys, "--db", db, "--table", "products", "--path", str(partial_title), "--quiet")[0] == 0
    after = {r["product_id"]: r for r in Store(db).read("products").to_pylist()}
    assert set(after) == {"A1", "A2"}
    changed = {"A1": {"price": 8.49, "stock": 10}, "A2": {"title": "Blue mug XL", "price": 13.0, "stock": 4}}
    for pid, new in changed.items():
        for col, value in before[pid].items():
            if col in ("updated_at", "missing_fields"):
                continue
            assert after[pid][col] == new.get(col, value), (pid, col)
    (q,) = Store(db).read("quarantine").to_pylist()
    assert q["field"] == "title" and "A9" in q["raw"] and "not in the store yet" in q["reason"]


def test_two_ingests_at_once_both_succeed(ray_session, tmp_path):
    db = str(tmp_path / "db")
    store = Store(db)
    # a staging dataset of an ingest still running elsewhere, and one left by a crash two days ago
    live = Path(db) / "_staging" / f"users-{int(time.time())}-0123456789abcdef.lance"
    stale = Path(db) / "_staging" / f"users-{int(time.time()) - 2 * 86400}-fedcba9876543210.lance"
    for folder in (live, stale):
        folder.mkdir(parents=True)
        (folder / "part").write_text("x")
    products, events = tmp_path / "p.jsonl", tmp_path / "e.jsonl"
    products.write_text("".join(json.dumps({"product_id": f"P{i}", "title": f"Item {i}"}) + "\n" for i in range(2000)) + "{bad\n")
    events.write_text("".join(json.dumps({"event_type": "click", "user_id": f"C{i % 40}", "product_id": f"P{i}",
                                          "timestamp": 1_700_000_000 + i}) + "\n" for i in range(2000)) + "{bad\n")
    results, errors = {}, {}

    def go(table: str, path: Path) -> None:
        try:
            results[table] = ingest_table(Store(db), table, [str(path)], {"pseudonym_key": "k"}, block_rows=400)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors[table] = repr(exc)

    threads = [threading.Thread(target=go, args=("products", products)), threading.Thread(target=go, args=("events", events))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == {}
    assert {t: (r.read, r.accepted, r.quarantined) for t, r in results.items()} == {
        "products": (2001, 2000, 1), "events": (2001, 2000, 1)}
    assert store.count("products") == 2000 and store.count("events") == 2000 and store.count("quarantine") == 2
    assert live.exists() and not stale.exists()


def test_ignored_and_unmatched_columns_are_named(ray_session, tmp_path, capsys):
    src = tmp_path / "p.csv"
    src.write_text("sku,name,colour_code,warehouse\nA1,Red mug,R,W1\n")
    code, summary, err = _run(capsys, "--db", str(tmp_path / "db"), "--table", "products", "--path", str(src), "--quiet")
    assert code == 0 and summary["tables"][0]["ignored_columns"] == ["colour_code", "warehouse"]
    assert "colour_code" in err and any("colour_code" in w for w in summary["warnings"])
    other = tmp_path / "o.csv"
    other.write_text("foo,bar\n1,2\n")
    code, summary, _ = _run(capsys, "--db", str(tmp_path / "db2"), "--table", "products", "--path", str(other), "--quiet")
    (reason,) = summary["tables"][0]["quarantine_reasons"]
    assert code == 0 and summary["quarantined"] == 1 and "bar, foo" in reason and "--map SRC=product_id" in reason
    assert any("no row accepted" in w for w in summary["warnings"])


RAW_IDS = ["alice@example.com", "bob.smith@shop.test", "u_abcdefabcdefabcdefabcdef", "SESSION-77-XYZ", "carol@example.org"]


def _every_string(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _every_string(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _every_string(v)]
    return []


def test_no_raw_identifier_in_any_table_or_version(ray_session, tmp_path, capsys):
    alice, bob, lookalike, session, carol = RAW_IDS
    users = tmp_path / "users.csv"
    users.write_text(f"user_id,locale,signup_at\n{alice},us,2024-01-01\n{lookalike},de,2024-02-01\n"
                     f"{bob},us,not a date\n{carol},us,2024-01-01,extra\n")
    (tmp_path / "broken.csv").write_bytes(b"user_id,locale\n" + f"{carol},".encode() + b"caf\xe9\n")
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([
        json.dumps({"event_type": "click", "user_id": alice, "session_id": session, "product_id": "P1", "timestamp": 1_700_000_000}),
        json.dumps({"event_type": "teleport", "user_id": bob, "session_id": session, "product_id": "P1", "timestamp": 1_700_000_000}),
        json.dumps({"event_type": "click", "user_id": carol, "product_id": "P1", "timestamp": f"when {carol} felt like it"}),
        '{"event_type": "click", "user_id": "' + bob + '", broken json',
    ]) + "\n")
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join([
        json.dumps({"task": "intent", "target_id": "q1", "value": "product_search", "source": "human", "annotator": alice}),
        json.dumps({"task": "intent", "target_id": "q2", "value": "no_such_intent", "source": "human", "annotator": bob}),
        '{"task": "intent", "annotator": "' + carol + '", broken',
    ]) + "\n")
    db = str(tmp_path / "db")
    for table, path in (("users", users), ("users", tmp_path / "broken.csv"), ("events", events), ("events", events),
                        ("labels", labels)):
        code, summary, _ = _run(capsys, "--db", db, "--table", table, "--path", str(path), "--quiet")
        assert code == 0 and summary["read"] == summary["accepted"] + summary["quarantined"] + summary["duplicates"]
    store = Store(db)
    assert store.count("users") == 2 and store.count("events") == 1 and store.count("labels") == 1
    assert store.count("quarantine") == 8
    hits = []
    for name in store.table_names():
        tbl = store.db.open_table(name)
        for v in tbl.list_versions():
            tbl.checkout(v["version"])
            for row in tbl.to_arrow().to_pylist():
                hits += [(name, v["version"], raw) for s in _every_string(row) for raw in RAW_IDS if raw in s]
    assert hits == []
    quarantine = store.read("quarantine").to_pylist()
    assert all(q["raw_sealed"].startswith("sealed:v1:") for q in quarantine)  # every row here is a personal table's
    assert {unseal(q["raw_sealed"], resolve_key()[0]) for q in quarantine if q["table"] == "labels"} >= {
        '{"task": "intent", "annotator": "' + carol + '", broken'}  # kept whole for the key holder


def test_intents_file_keyed_by_query_text_fills_queries_and_labels(ray_session, tmp_path, capsys):
    (tmp_path / "taxonomy.yaml").write_text("intents: [product_search, translate, order_support, out_of_scope]\n"
                                            "out_of_scope: out_of_scope\n")
    src = tmp_path / "intents.csv"
    src.write_text("query,intent\nRed running shoes,product_search\ntranslate this page,translate\n"
                   "where is my parcel,order_support\nplay some jazz,music\n")
    db = str(tmp_path / "db")
    code, summary, _ = _run(capsys, "--db", db, "--table", "labels", "--path", str(src), "--quiet",
                            "--taxonomy", str(tmp_path / "taxonomy.yaml"))
    assert code == 0
    per_table = {t["table"]: (t["read"], t["accepted"], t["quarantined"]) for t in summary["tables"]}
    assert per_table == {"queries": (4, 4, 0), "labels": (4, 3, 1)}  # 'music' is not a declared intent
    store = Store(db)
    queries = {q["text"]: q["query_id"] for q in store.read("queries").to_pylist()}
    labels = {l["target_id"]: l["value"] for l in store.read("labels").to_pylist()}
    assert labels == {queries["Red running shoes"]: "product_search", queries["translate this page"]: "translate",
                      queries["where is my parcel"]: "order_support"}
    (q,) = store.read("quarantine").to_pylist()
    assert "music" in q["reason"] and '"value": "music"' in q["raw"] and '"text": "play some jazz"' in q["raw"]
    assert unseal(q["raw_sealed"], resolve_key()[0]) == "play some jazz,music"  # labels name people: sealed as read


def test_judgments_keyed_by_query_id_alone(ray_session, tmp_path, capsys):
    src = tmp_path / "judgments.csv"
    src.write_text("query_id,product_id,grade\nq1,P1,E\nq1,P2,I\n")  # no query text: nothing to put in `queries`
    code, summary, _ = _run(capsys, "--db", str(tmp_path / "db"), "--table", "judgments", "--path", str(src), "--quiet")
    per_table = {t["table"]: (t["read"], t["accepted"]) for t in summary["tables"]}
    assert code == 0 and per_table == {"queries": (0, 0), "judgments": (2, 2)}
