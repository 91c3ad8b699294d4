"""Hypothesis strategies for shop files of every format with random mixes of good and bad rows.

`shop_file` draws a products file (CSV, TSV, JSONL, JSON or Parquet, optionally gzipped, with
or without a BOM and CRLF line ends) and returns its bytes with what a correct reader must make
of it: how many records it holds (None where a broken JSON document makes that undefined) and,
for each line-based record, its 1-based line number and its text as written.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

KINDS = ["good", "good", "good", "oversized", "wrong_type", "latin1", "mixed_encoding", "nul", "unbalanced_quote",
         "ragged", "long_line", "empty", "duplicate_key", "multiline", "emoji", "out_of_range"]
HEADER = ["product_id", "title", "price", "description"]
LIMIT = 2_000  # --max-field-chars used with these files: "oversized" is over it, "long_line" under it


@dataclass
class ShopFile:
    name: str
    payload: bytes
    records: Optional[int]  # rows a correct reader yields; None when not defined by the format
    lines: dict[int, str] = field(default_factory=dict)  # line number -> text of the record starting there


def _fields(kind: str, i: int) -> list:
    pid, title, price, desc = f"P{i}", f"Mug {i}, blue", f"{(i % 50) + 0.5:.2f}", "Stoneware mug"
    if kind == "oversized":
        desc = "d" * (LIMIT + 500)
    elif kind == "long_line":
        desc = "l" * (LIMIT - 100)
    elif kind == "wrong_type":
        price = "about ten dollars"
    elif kind == "out_of_range":
        price = "-5"
    elif kind == "nul":
        title = f"Mug\x00{i}"
    elif kind == "multiline":
        desc = "first line\nsecond line"
    elif kind == "emoji":
        title = f"Mug {i} \U0001f375 caf\u00e9"
    elif kind == "duplicate_key":
        pid, title = "P0", "Later mug"
    return [pid, title, price, desc]


def _csv_line(values: list, delimiter: str) -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerow(values)
    return buf.getvalue()[:-1]


def _delimited(kinds: list[str], delimiter: str, crlf: bool) -> tuple[bytes, dict[int, str]]:
    chunks, lines, line_no = [_csv_line(HEADER, delimiter).encode()], {}, 2
    for i, kind in enumerate(kinds):
        values = _fields(kind, i)
        if kind == "empty":
            text = ""
        elif kind == "ragged":
            text = _csv_line(values + ["extra"], delimiter)
        elif kind == "unbalanced_quote":
            text = delimiter.join([values[0], '"' + values[1].replace('"', "")] + values[2:])
        else:
            text = _csv_line(values, delimiter)
        if kind == "latin1":
            data = text.replace("Mug", "Caf\u00e9").encode("latin-1")
        elif kind == "mixed_encoding":
            data = text.encode() + " na\u00efve".encode("latin-1")
        else:
            data = text.encode()
            lines[line_no] = text
        chunks.append(data)
        line_no += text.count("\n") + 1
    end = b"\r\n" if crlf else b"\n"
    return end.join(c.replace(b"\n", end) for c in chunks) + end, lines


def _jsonl(kinds: list[str], crlf: bool) -> tuple[bytes, dict[int, str]]:
    chunks, lines = [], {}
    for i, kind in enumerate(kinds):
        pid, title, price, desc = _fields(kind, i)
        record = {"product_id": pid, "title": title, "price": price, "description": desc}
        if kind == "empty":
            text = ""
        elif kind == "ragged":
            text = json.dumps([pid, title])
        elif kind == "unbalanced_quote":
            text = json.dumps(record)[:-5]
        elif kind == "duplicate_key":
            text = '{"product_id": "P0", "product_id": "P0", "title": "Later mug"}'
        else:
            text = json.dumps(record, ensure_ascii=kind != "emoji")
        if kind in ("latin1", "mixed_encoding"):
            data = text.replace("Mug", "Caf\u00e9").encode("latin-1") + ("\u00e9".encode() if kind == "mixed_encoding" else b"")
        else:
            data = text.encode()
            lines[i + 1] = text
        chunks.append(data)
    end = b"\r\n" if crlf else b"\n"
    return end.join(chunks) + (end if chunks else b""), lines


def _parquet(kinds: list[str]) -> bytes:
    rows = []
    for i, kind in enumerate(kinds):
        pid, title, price, desc = _fields(kind, i)
        rows.append({"product_id": None if kind == "empty" else pid, "title": title, "price": price, "description": desc})
    table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in HEADER]))
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=4)  # several row groups: ingest splits Parquet files by them
    return buf.getvalue()


@st.composite
def shop_file(draw) -> ShopFile:
    """A products file of a random format holding a random mix of good and bad rows."""
    fmt = draw(st.sampled_from(["csv", "tsv", "jsonl", "json", "parquet"]))
    kinds = draw(st.lists(st.sampled_from(KINDS), max_size=25))
    bom, crlf, gz = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    records: Optional[int] = len(kinds)
    lines: dict[int, str] = {}
    if fmt in ("csv", "tsv"):
        header_only = not kinds and draw(st.booleans())
        payload, lines = _delimited(kinds, "," if fmt == "csv" else "\t", crlf)
        if not kinds and not header_only:
            payload = b""
    elif fmt == "jsonl":
        payload, lines = _jsonl(kinds, crlf)
    elif fmt == "json":
        body, _ = _jsonl(kinds, crlf)
        payload = b"[" + b",".join(l for l in body.splitlines() if l) + b"]"
        parsable = all(k not in ("empty", "unbalanced_quote", "latin1", "mixed_encoding") for k in kinds)
        records = len(kinds) if parsable else None
    else:
        payload, bom, records = _parquet(kinds), False, len(kinds)
    if bom:
        payload = b"\xef\xbb\xbf" + payload
    name = f"products.{fmt}"
    if gz:
        payload, name = gzip.compress(payload), name + ".gz"
    return ShopFile(name=name, payload=payload, records=records, lines=lines)
