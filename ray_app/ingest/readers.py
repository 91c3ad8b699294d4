"""Reading CSV, JSONL/JSON and Parquet (optionally gzipped) into raw rows, one per record.

Every record keeps its source file, its 1-based row number and its raw text, so that a row
that fails anywhere later can be quarantined exactly as it was read. Parsing problems (broken
UTF-8, invalid JSON, an empty line, a CSV row with the wrong number of fields) are not errors
here: the row is emitted with `_error` set and lands in quarantine.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from typing import Any, Iterator, Optional

import pyarrow.parquet as pq



def detect_format(path: str, forced: Optional[str] = None) -> str:
    """csv, jsonl, json or parquet, from the name (a trailing .gz is looked through)."""
    if forced:
        return forced
    name = path.lower().removesuffix(".gz")
    for ext, fmt in ((".csv", "csv"), (".tsv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                     (".json", "json"), (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    raise ValueError(f"cannot tell the format of {path!r} from its name; pass --format csv|jsonl|parquet")


def raw_row(source: str, row: int, raw: str, data: Optional[dict], error: str = "") -> dict[str, Any]:
    """The uniform raw-row shape every reader emits: the parsed record or the parse error."""
    return {"_source": source, "_row": row, "_raw": raw, "_data": data, "_error": error}


def _split_lines(payload: bytes) -> list[bytes]:
    lines = payload.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the file is not an empty row
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def _decode_lines(lines: list[bytes], encoding: Optional[str] = None) -> tuple[list[Optional[str]], str]:
    """Strict UTF-8 per line (or the declared legacy `encoding`); None marks a broken line.

    There is no guessing: a Latin-1 byte in a UTF-8 file is a broken row and is quarantined;
    a whole file in a legacy encoding is read with `--encoding latin-1` (or cp1252...).
    """
    if encoding and encoding.lower().replace("-", "") not in ("utf8", "utf8sig"):
        out: list[Optional[str]] = []
        for ln in lines:
            try:
                out.append(ln.decode(encoding))
            except UnicodeDecodeError:
                out.append(None)
        return out, encoding
    return [decode_utf8(ln) for ln in lines], "utf-8"


def decode_utf8(data: bytes) -> Optional[str]:
    """Strict UTF-8, also repairing CESU-8 (emoji written as two encoded UTF-16 surrogates,
    as some exporters do: lossless to fix). None when the bytes are really broken."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("utf-8", "surrogatepass")
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeError:
        return None


def parse_jsonl(source: str, payload: bytes, encoding: Optional[str] = None, first_line: int = 1) -> Iterator[dict[str, Any]]:
    lines = _split_lines(payload)
    decoded, _ = _decode_lines(lines, encoding)
    for i, (raw_bytes, text) in enumerate(zip(lines, decoded), start=first_line):
        if text is None:
            bad = raw_bytes.decode("utf-8", errors="replace")
            try:
                raw_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield raw_row(source, i, bad, None, f"broken encoding: not valid UTF-8 at byte {exc.start}")
            continue
        if not text.strip():
            yield raw_row(source, i, text, None, "empty line")
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield raw_row(source, i, text, None, f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(data, dict):
            yield raw_row(source, i, text, None, f"expected a JSON object, got {type(data).__name__}")
            continue
        yield raw_row(source, i, text, data)


class _RecordTooLong(Exception):
    """A CSV record ran over MAX_RECORD_LINES lines: an unbalanced quote, not a real field."""


# A quoted CSV field may hold newlines; one that spans more lines than this is an unclosed quote.
MAX_RECORD_LINES = 2_000


class _LineFeed:
    """Feeds body lines to csv.reader from `start`, counting what it consumed for the current record."""

    def __init__(self, texts: list[str], start: int):
        self.texts, self.pos, self.record_start = texts, start, start

    def __iter__(self) -> "_LineFeed":
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.texts):
            raise StopIteration
        if self.pos - self.record_start >= MAX_RECORD_LINES:
            raise _RecordTooLong()
        self.pos += 1
        return self.texts[self.pos - 1] + "\n"


def csv_records(texts: list[str], delimiter: str = ",") -> Iterator[tuple[int, int, Optional[list[str]], str]]:
    """(first line, end line, fields or None, error) for each record of CSV body lines.

    Strict parsing, so a quote left open never swallows the rest of the file: the record's first
    line alone is reported bad and parsing resumes on the next line. Every line belongs to exactly
    one record, whatever the input.
    """
    csv.field_size_limit(2**31 - 1)  # fields of any size are read; the cleaner quarantines oversized ones
    i = 0
    while i < len(texts):
        feed = _LineFeed(texts, i)
        reader = csv.reader(feed, delimiter=delimiter, strict=True)
        while True:
            feed.record_start = start = feed.pos
            try:
                fields = next(reader)
            except StopIteration:
                return
            except _RecordTooLong:
                yield start, start + 1, None, f"unbalanced quote: a quoted field is still open after {MAX_RECORD_LINES:,} lines"
                i = start + 1
                break
            except csv.Error as exc:
                if feed.pos - start > 1 or feed.pos >= len(texts):  # an open quote ran on: only its first line is bad
                    yield start, start + 1, None, f"unbalanced quote: {exc}"
                    i = start + 1
                else:
                    yield start, feed.pos, None, f"malformed CSV: {exc}"
                    i = feed.pos
                break
            yield start, feed.pos, fields, ""


def parse_csv(source: str, payload: bytes, delimiter: str = ",", encoding: Optional[str] = None) -> Iterator[dict[str, Any]]:
    lines = _split_lines(payload)
    decoded, _ = _decode_lines(lines, encoding)
    good: list[tuple[int, str]] = []
    for i, (raw_bytes, text) in enumerate(zip(lines, decoded), start=1):
        if text is None:
            try:
                raw_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield raw_row(source, i, raw_bytes.decode("utf-8", errors="replace"), None,
                              f"broken encoding: not valid UTF-8 at byte {exc.start}")
            continue
        good.append((i, text))
    if not good:
        return
    header_line, header_text = good[0]
    header_fields = next(csv.reader([header_text], delimiter=delimiter), [])
    header = [h.strip().lstrip("\ufeff").strip() for h in header_fields]
    # One strict reader over the remaining lines so quoted newlines work; map back to line numbers.
    numbers = [n for n, _ in good[1:]]
    texts = [t for _, t in good[1:]]
    for start, end, fields, error in csv_records(texts, delimiter):
        line_no, raw = numbers[start], "\n".join(texts[start:end])
        if error:
            yield raw_row(source, line_no, raw, None, error)
        elif not fields or all(not f.strip() for f in fields):
            yield raw_row(source, line_no, raw, None, "empty line")
        elif len(fields) != len(header):
            yield raw_row(source, line_no, raw, None,
                          f"CSV row has {len(fields)} fields, the header has {len(header)} ({', '.join(header)[:300]})")
        else:
            yield raw_row(source, line_no, raw, dict(zip(header, fields)))


def parse_json_document(source: str, payload: bytes, encoding: Optional[str] = None) -> Iterator[dict[str, Any]]:
    """A JSON file holding a list of objects (or a JSONL file misnamed .json)."""
    lines = _split_lines(payload)
    decoded, _ = _decode_lines(lines, encoding)
    if any(t is None for t in decoded):  # never repair a document silently: each broken line is quarantined
        yield from parse_jsonl(source, payload, encoding)
        return
    try:
        data = json.loads("\n".join(decoded))
    except json.JSONDecodeError:
        yield from parse_jsonl(source, payload, encoding)
        return
    items = data if isinstance(data, list) else [data]
    for i, item in enumerate(items, start=1):
        raw = json.dumps(item, ensure_ascii=False, default=str)
        if isinstance(item, dict):
            yield raw_row(source, i, raw, item)
        else:
            yield raw_row(source, i, raw, None, f"expected a JSON object, got {type(item).__name__}")


def parse_parquet(source: str, payload: bytes) -> Iterator[dict[str, Any]]:
    table = pq.read_table(io.BytesIO(payload))
    for i, row in enumerate(table.to_pylist(), start=1):
        yield raw_row(source, i, "", row)  # raw text is rendered only if the row is quarantined


def parse_file(path: str, payload: bytes, forced_format: Optional[str] = None,
               encoding: Optional[str] = None, first_line: int = 1) -> Iterator[dict[str, Any]]:
    """Dispatch on the format; gzip is undone first. `first_line` numbers a JSONL byte range."""
    if payload[:2] == b"\x1f\x8b":
        payload = gzip.decompress(payload)
    if first_line == 1 and payload.startswith(b"\xef\xbb\xbf"):
        payload = payload[3:]  # a UTF-8 byte-order mark is not part of the first row
    fmt = detect_format(path, forced_format)
    if fmt == "jsonl":
        yield from parse_jsonl(path, payload, encoding, first_line)
    elif fmt == "json":
        yield from parse_json_document(path, payload, encoding)
    elif fmt == "csv":
        yield from parse_csv(path, payload, "\t" if path.lower().removesuffix(".gz").endswith(".tsv") else ",", encoding)
    elif fmt == "parquet":
        yield from parse_parquet(path, payload)
    else:
        raise ValueError(f"unsupported format {fmt!r}")


def read_bytes(path: str) -> bytes:
    """Whole file from a local path or any URI pyarrow's filesystems understand (s3://, gs://)."""
    if "://" not in path:
        with open(path, "rb") as f:
            return f.read()
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


def line_range(payload: bytes, start: int, end: int) -> tuple[bytes, int]:
    """The lines whose first byte lies in [start, end) and the 1-based number of the first one.

    Splitting a file into byte ranges this way gives every line to exactly one range, so a
    large JSONL file is parsed by several tasks without losing or doubling a row."""
    if start > 0:
        nl = payload.find(b"\n", start - 1)
        start = len(payload) if nl < 0 else nl + 1
    if end < len(payload):
        nl = payload.find(b"\n", end - 1)
        end = len(payload) if nl < 0 else nl + 1
    end = max(start, end)
    return payload[start:end], payload.count(b"\n", 0, start) + 1
