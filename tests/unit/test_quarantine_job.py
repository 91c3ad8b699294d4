"""jobs.quarantine: filters, whole reasons, the readable copy by default, the sealed row with the key."""
from __future__ import annotations

import json

import pytest

from jobs import quarantine
from ray_app.privacy import seal
from ray_app.store import rows_to_arrow, utcnow

pytestmark = pytest.mark.unit


def test_lists_filters_and_unseals(store, capsys):
    now = utcnow()
    rows = [{"quarantine_id": "q1", "table": "products", "source": "p.csv", "row_number": 3, "raw": "A9,5,5",
             "reason": "expected a number, got 'ten'", "field": "price", "run_id": "r1", "created_at": now},
            {"quarantine_id": "q2", "table": "events", "source": "e.csv", "row_number": 7, "raw": "",
             "raw_sealed": seal("alice@example.com,teleport", "k"), "reason": "invalid JSON", "field": "",
             "run_id": "r2", "created_at": now}]
    store.upsert("quarantine", rows_to_arrow(rows, "quarantine"))
    assert quarantine.main(["--db", store.uri, "--table", "products"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert summary["total"] == 1 and summary["by_reason"] == {"price: expected a number, got …": 1}
    assert "p.csv:3" in out.err and "expected a number, got 'ten'" in out.err
    assert quarantine.main(["--db", store.uri, "--table", "events"]) == 0
    assert "alice" not in capsys.readouterr().err
    assert quarantine.main(["--db", store.uri, "--table", "events", "--unseal", "--pseudonym-key", "k"]) == 0
    assert "alice@example.com,teleport" in capsys.readouterr().err
    assert quarantine.main(["--db", store.uri, "--table", "events", "--unseal", "--pseudonym-key", "wrong"]) == 1
    assert "cannot unseal" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
