"""A feed resolved in Ray tasks per key range (ray_app.ingest.buckets) ends exactly where the same
feed resolved on the driver ends: same rows in every table, same ledger counts, same quarantine."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ray_app.ingest.pipeline import ingest_table
from ray_app.store import Store

pytestmark = pytest.mark.integration
CTX = {"pseudonym_key": "k"}
VOLATILE = {"updated_at", "created_at", "run_id", "started_at", "finished_at"}  # when, not what
SEALED = "raw_sealed"  # encrypted with a fresh nonce each time: compared as "present or not"


def _jsonl(path: Path, rows: list, bad: int = 2) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows) + "{broken\n" * bad)
    return str(path)


def _feeds(tmp: Path) -> list[tuple[str, str]]:
    """(table, file) in ingest order: products with repeats and retitled rows, a partial price feed
    naming new products (rejected: no title), events with exact repeats, one explicit event id
    used twice for different users, and returns to link to purchases in the feed and stored."""
    rng = random.Random(3)
    products = [{"product_id": f"P{i % 150}", "title": f"Mug {i % 150}" + (" v2" if i >= 150 and i % 3 else ""),
                 "price": round(rng.uniform(1, 50), 2), "brand": "Acme"} for i in range(260)]
    partial = [{"product_id": f"P{i}", "price": 9.5} for i in range(100, 190)]  # P150.. are new: no title
    first = [{"event_type": "purchase", "user_id": f"U{i % 30}", "product_id": f"P{i % 150}",
              "timestamp": 1_700_000_000 + i} for i in range(120)]
    events = [{"event_type": rng.choice(["click", "purchase", "return", "add_to_cart"]), "user_id": f"U{rng.randrange(40)}",
               "product_id": f"P{rng.randrange(150)}", "timestamp": 1_700_001_000 + rng.randrange(500)} for _ in range(400)]
    events += events[:25]  # genuine repeats of the same content: numbered, all kept
    events += [{"event_type": "return", "user_id": f"U{i % 30}", "product_id": f"P{i % 150}", "timestamp": 1_700_002_000 + i}
               for i in range(0, 120, 7)]  # returns of the first feed's purchases
    events += [{"event_type": "return", "user_id": "", "session_id": "S9", "product_id": "P1", "timestamp": 1_700_003_000}]
    explicit = [{"event_id": "E1", "event_type": "click", "user_id": "U1", "product_id": "P1", "timestamp": 1_700_004_000},
                {"event_id": "E1", "event_type": "click", "user_id": "U2", "product_id": "P2", "timestamp": 1_700_004_001},
                {"event_id": "E2", "event_type": "purchase", "user_id": "U3", "product_id": "P3", "timestamp": 1_700_004_002}]
    return [("products", _jsonl(tmp / "products.jsonl", products)), ("products", _jsonl(tmp / "prices.jsonl", partial)),
            ("events", _jsonl(tmp / "first.jsonl", first, bad=0)), ("events", _jsonl(tmp / "events.jsonl", events)),
            ("events", _jsonl(tmp / "explicit.jsonl", explicit, bad=1))]


def _table(store: Store, name: str) -> list[dict]:
    rows = [{k: bool(v) if k == SEALED else v for k, v in r.items() if k not in VOLATILE} for r in store.read(name).to_pylist()]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_bucketed_resolve_matches_the_driver(ray_session, s3, tmp_path):
    feeds = _feeds(tmp_path)
    stores = {"driver": (str(tmp_path / "driver"), 1_000_000), "tasks": (str(tmp_path / "tasks"), 37),  # up to 12 tasks
              "tasks-s3": (f"s3://{s3.bucket}/buckets/lancedb", 37)}  # fragments written by tasks, committed once, on S3
    ledgers = {}
    for name, (uri, resolve_rows) in stores.items():
        store = Store(uri)
        ledgers[name] = [ingest_table(store, table, [path], CTX, block_rows=100, resolve_rows=resolve_rows).model_dump(
            exclude={"run_id", "version", "phase_seconds"}) for table, path in feeds]
    assert ledgers["tasks"] == ledgers["driver"] and ledgers["tasks-s3"] == ledgers["driver"]
    first, events, explicit = ledgers["driver"][2:]
    assert first["accepted"] == 120 and events["notes"]["returns_linked"] >= 17  # the earlier feed's purchases, linked
    assert ledgers["driver"][1]["quarantined"] == 42  # P150-P189 lack a title
    assert explicit["duplicates"] == 1 and explicit["accepted"] == 2
    driver = Store(stores["driver"][0])
    for name in ("tasks", "tasks-s3"):
        for table in ("products", "events", "quarantine"):
            assert _table(Store(stores[name][0]), table) == _table(driver, table), (name, table)
    assert not list((tmp_path / "tasks" / "_staging").iterdir())  # staging, resolved and linked all removed
    tasks = Store(stores["tasks"][0])
    before = tasks.count("quarantine")
    again = ingest_table(tasks, "products", [feeds[1][1]], CTX, block_rows=100, resolve_rows=37)
    assert again.quarantined == 42 and tasks.count("quarantine") == before  # a re-run quarantines nothing twice


def test_a_gzipped_feed_is_split_and_its_decompressed_copy_removed(ray_session, tmp_path):
    import gzip
    import tempfile

    plain = Path(_feeds(tmp_path)[3][1])
    packed = tmp_path / "packed" / "events.jsonl.gz"  # same name once unpacked: same rows, same ids
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    spills = lambda: {p.name for p in Path(tempfile.gettempdir()).glob("shopsearch-ingest-*")}  # noqa: E731
    before = spills()
    a, b = Store(str(tmp_path / "a")), Store(str(tmp_path / "b"))
    got = ingest_table(a, "events", [str(packed)], CTX, block_rows=50, resolve_rows=60)
    want = ingest_table(b, "events", [str(plain)], CTX, block_rows=50, resolve_rows=60)
    assert got.read == want.read == 446 and (got.accepted, got.quarantined, got.duplicates, got.notes) == (
        want.accepted, want.quarantined, want.duplicates, want.notes)
    assert spills() <= before  # the decompressed copy (raw ids) is gone once the parse tasks are
    assert sorted(a.read("events").column("event_id").to_pylist()) == sorted(b.read("events").column("event_id").to_pylist())
