"""The ingest job end to end on the local Ray: accounting, quarantine, idempotence, real datasets."""
from __future__ import annotations

import json
import random

import pytest

from jobs import ingest
from ray_app.store import Store
from schemas.config import IngestConfig

pytestmark = pytest.mark.integration


def write_messy_products(path, n=1000, seed=3) -> dict[str, int]:
    """n lines of JSONL, 100 of them bad in different ways; returns the expected counts."""
    rng = random.Random(seed)
    kinds = ["missing_key"] * 15 + ["wrong_type"] * 15 + ["bad_range"] * 10 + ["broken_encoding"] * 15 + \
            ["huge_description"] * 5 + ["duplicate"] * 20 + ["empty_line"] * 10 + ["invalid_json"] * 10
    bad_at = dict(zip(rng.sample(range(50, n), len(kinds)), kinds))
    lines: list[bytes] = []
    for i in range(n):
        row = {"product_id": f"P{i:05d}", "title": f"Product {i}", "price": round(rng.uniform(1, 500), 2),
               "brand": "Acme", "category_path": ["Home", "Kitchen"], "stock": rng.randint(0, 20)}
        kind = bad_at.get(i)
        if kind == "missing_key":
            row.pop("product_id")
        elif kind == "wrong_type":
            row["price"] = "about ten dollars"
        elif kind == "bad_range":
            row["rating"] = 11
        elif kind == "huge_description":
            row["description"] = "x" * 1_048_576
        elif kind == "duplicate":
            row["product_id"] = f"P{rng.randint(0, 49):05d}"  # repeats a (clean) earlier id: the later row wins
            row["title"] = "Updated product"
        if kind == "empty_line":
            lines.append(b"")
        elif kind == "invalid_json":
            lines.append(json.dumps(row).encode()[:-3])
        elif kind == "broken_encoding":
            lines.append(json.dumps(row).replace("Product", "Caf\u00e9").encode("utf-8").replace(b"\xc3\xa9", b"\xe9"))
        else:
            lines.append(json.dumps(row).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {"read": n, "duplicates": 20, "quarantined": 80, "accepted": n - 100}


def test_messy_file_loses_nothing(ray_session, tmp_path, capsys):
    src = tmp_path / "products.jsonl"
    expected = write_messy_products(src)
    db = str(tmp_path / "db")
    code = ingest.main(["--db", db, "--source", "generic", "--table", "products", "--path", str(src)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    for key, value in expected.items():
        assert summary[key] == value, key
    assert summary["read"] == summary["accepted"] + summary["quarantined"] + summary["duplicates"]
    store = Store(db)
    assert store.count("products") == expected["accepted"]
    quarantine = store.read("quarantine").to_pylist()
    assert len(quarantine) == 80 and all(q["reason"] and q["source"] for q in quarantine)
    reasons = summary["tables"][0]["quarantine_reasons"]
    for prefix in ("product_id: required column is absent", "empty line", "broken encoding: not valid UTF-8",
                   "invalid JSON: ", "price: expected a number, got …", "description: value is … characters"):
        assert any(r.startswith(prefix) for r in reasons), prefix
    assert sum(reasons.values()) == 80
    phases = summary["tables"][0]["phase_seconds"]  # where the time went, stage by stage
    assert list(phases) == ["plan", "parse", "resolve", "commit", "quarantine"] and all(s >= 0 for s in phases.values())
    assert sum(phases.values()) <= summary["seconds"] + 0.01
    assert any(len(q["raw"]) > 1_000_000 for q in quarantine)  # the 1 MB row is kept whole
    dup_ids = {f"P{i:05d}" for i in range(50)}
    updated = [r for r in store.read("products").to_pylist() if r["product_id"] in dup_ids]
    assert len(updated) == 50 and sum(r["title"] == "Updated product" for r in updated) > 0
    # Re-running the same file changes no counts (upserts by key, quarantine ids are stable).
    assert ingest.main(["--db", db, "--source", "generic", "--table", "products", "--path", str(src), "--quiet"]) == 0
    assert store.count("products") == expected["accepted"] and store.count("quarantine") == 80


def test_latest_row_wins_and_map_renames(ray_session, tmp_path):
    src = tmp_path / "catalogue.csv"
    src.write_text("sku,name,cost\nA,Old title,1\nB,Bee,2\nA,New title,3\n")
    result = ingest.run(IngestConfig(db=str(tmp_path / "db"), table="products", path=str(src),
                                     map={"sku": "product_id", "name": "title", "cost": "price"}, quiet=True))
    assert (result.read, result.accepted, result.duplicates) == (3, 2, 1)
    rows = {r["product_id"]: r for r in Store(str(tmp_path / "db")).read("products").to_pylist()}
    assert rows["A"]["title"] == "New title" and rows["A"]["price"] == 3.0


def test_unreadable_input_exits_nonzero_with_a_reason(ray_session, tmp_path, capsys):
    code = ingest.main(["--db", str(tmp_path / "db"), "--table", "products", "--path", str(tmp_path / "nope.csv")])
    captured = capsys.readouterr()
    assert code == 1 and "no such file" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["ok"] is False


def test_bad_flag_value_names_the_field(tmp_path, capsys):
    assert ingest.main(["--table", "products", "--path", "x", "--max-field-chars", "ten"]) == 2
    captured = capsys.readouterr()
    assert "max_field_chars" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["ok"] is False


@pytest.mark.realdata
def test_esci150_counts_and_rerun(ray_session, tmp_path, shared_data):
    db = str(tmp_path / "db")
    config = IngestConfig(db=db, source="esci", path=str(shared_data / "esci150"), quiet=True)
    first = ingest.run(config)
    counts = {t.table: t.accepted for t in first.tables}
    assert counts == {"products": 6764, "queries": 150, "judgments": 6678}
    assert first.quarantined == 0
    second = ingest.run(config)
    store = Store(db)
    assert {t: store.count(t) for t in counts} == counts
    assert all(second.versions[t] == first.versions[t] + 1 for t in counts)  # a new version, same rows
    splits = {r["split"] for r in store.read("judgments", columns=["split"]).to_pylist()}
    assert splits == {"train", "test"}


@pytest.mark.realdata
def test_snips_utterances_with_intents_and_spans(ray_session, tmp_path, shared_data):
    db = str(tmp_path / "db")
    result = ingest.run(IngestConfig(db=db, source="snips", path=str(shared_data / "snips"), quiet=True))
    assert result.quarantined == 0
    store = Store(db)
    queries = {r["query_id"]: r for r in store.read("queries").to_pylist()}
    assert len(queries) == 14484
    assert sum(q["split"] == "test" for q in queries.values()) == 700
    labels = store.read("labels").to_pylist()
    intents = [l for l in labels if l["task"] == "intent"]
    assert len(intents) == 14484 and len({l["value"] for l in intents}) == 7
    spans = [(l["target_id"], s) for l in labels if l["task"] == "entity" for s in l["spans"]]
    assert len(spans) > 30000 and len({s["type"] for _, s in spans}) == 39
    assert all(queries[q]["text"][s["start"]:s["end"]] == s["text"] for q, s in spans)
    assert any("\U0001f355" in q["text"] for q in queries.values())  # the file's CESU-8 emoji survived
    from ray_app.taxonomy import declared_taxonomy  # SNIPS declares its own vocabulary as the store's taxonomy

    taxonomy = declared_taxonomy(store)
    assert taxonomy.name == "snips" and len(taxonomy.intents) == 7 and len(taxonomy.entity_types) == 39
