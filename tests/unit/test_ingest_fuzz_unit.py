"""Property test of the readers and cleaner without Ray: any file, every record accounted for once."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from ray_app.ingest.clean import CleanContext, Reject, clean_record
from ray_app.ingest.readers import parse_file
from tests.fuzz_files import LIMIT, shop_file

pytestmark = pytest.mark.unit
EXAMPLES = int(os.environ.get("SHOPSEARCH_FUZZ_EXAMPLES", "0")) or 150


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize="SHOPSEARCH_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(shop_file())
def test_every_record_is_read_once_and_kept_whole(f):
    rows = list(parse_file(f.name, f.payload))
    if f.records is not None:
        assert len(rows) == f.records
    ctx = CleanContext(table="products", pseudonym_key="k", max_field_chars=LIMIT)
    for r in rows:
        assert r["_row"] >= 1 and (r["_error"] or r["_data"] is not None)
        if r["_row"] in f.lines:  # a line-based record starts here: its raw text is the record as written
            assert r["_raw"] == f.lines[r["_row"]]
        if r["_data"] is not None:
            try:
                clean_record(r["_data"], ctx)
            except Reject as exc:
                assert exc.reason  # a rejection always says why
