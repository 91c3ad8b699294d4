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


def parse_csv(source: str, payload: bytes, delimiter: str = ",", encoding: Optional[str] = None,
              first_line: int = 1) -> Iterator[dict[str, Any]]:
    """`first_line` > 1: `payload` is the header line followed by a range of the file whose first
    line is line `first_line` (rows keep their numbers in the whole file)."""
    lines = _split_lines(payload)
    decoded, _ = _decode_lines(lines, encoding)
    good: list[tuple[int, str]] = []
    shift = first_line - 2 if first_line > 1 else 0  # line i >= 2 of the payload is line i + shift of the file
    for i, (raw_bytes, text) in enumerate(zip(lines, decoded), start=1):
        i = i + shift if i > 1 else i
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
    """Dispatch on the format; gzip is undone first. `first_line` numbers a JSONL byte range (a CSV
    range: the header line, then the range)."""
    broken = ""
    if payload[:2] == b"\x1f\x8b":
        payload, broken = gunzip(payload)
    if first_line == 1 and payload.startswith(b"\xef\xbb\xbf"):
        payload = payload[3:]  # a UTF-8 byte-order mark is not part of the first row
    fmt = detect_format(path, forced_format)
    last = 0
    for row in _parse(path, fmt, payload, encoding, first_line):
        last = row["_row"]
        yield row
    if broken:  # what decompressed was read; the rest of the file is one row in quarantine, saying why
        yield raw_row(path, last + 1, "", None, broken)


def _parse(path: str, fmt: str, payload: bytes, encoding: Optional[str], first_line: int) -> Iterator[dict[str, Any]]:
    if fmt == "jsonl":
        yield from parse_jsonl(path, payload, encoding, first_line)
    elif fmt == "json":
        yield from parse_json_document(path, payload, encoding)
    elif fmt == "csv":
        yield from parse_csv(path, payload, "\t" if path.lower().removesuffix(".gz").endswith(".tsv") else ",", encoding,
                             first_line)
    elif fmt == "parquet":
        yield from parse_parquet(path, payload)
    else:
        raise ValueError(f"unsupported format {fmt!r}")


def gunzip(payload: bytes) -> tuple[bytes, str]:
    """The decompressed bytes (every gzip member), and "" or why the stream stops early: a file cut
    short or damaged still gives what decompresses before the damage (fed in 64 KiB steps)."""
    import zlib

    parts: list[bytes] = []
    pos, step = 0, 1 << 16
    while pos < len(payload):
        member = zlib.decompressobj(31)
        while not member.eof:
            if pos >= len(payload):
                parts.append(member.flush())
                return b"".join(parts), f"the file ends inside its gzip stream (after {sum(map(len, parts))} bytes): it was cut short"
            chunk = payload[pos:pos + step]
            try:
                parts.append(member.decompress(chunk))
            except zlib.error as exc:
                return b"".join(parts), f"the gzip stream is damaged after {sum(map(len, parts))} bytes ({exc}): the rest cannot be read"
            pos += len(chunk) - len(member.unused_data)
        if not payload[pos:].lstrip(b"\0"):  # trailing zero padding ends the file
            break
    return b"".join(parts), ""


def read_bytes(path: str) -> bytes:
    """Whole file from a local path or any URI pyarrow's filesystems understand (s3://, gs://)."""
    with _open_input(path) as f:
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


# -- splitting one file between tasks -------------------------------------------------------
SCAN_BLOCK = 8 << 20  # bytes the planner reads at a time: its memory stays flat whatever the file size


def _open_input(path: str):
    """A random-access binary file of a local path or a URI."""
    if "://" not in path:
        return open(path, "rb")
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    return fs.open_input_file(inner)


def _open_output(path: str):
    """A new binary file at a local path (its folders made) or a URI."""
    if "://" not in path:
        import os

        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, "wb")
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(path)
    return fs.open_output_stream(inner)


def file_size(path: str) -> Optional[int]:
    try:
        if "://" not in path:
            import os

            return os.path.getsize(path)
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        info = fs.get_file_info(inner)
        return info.size if info.type == pafs.FileType.File else None
    except (OSError, ValueError):
        return None


def read_range(path: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of a local file or a URI, nothing else of the file."""
    with _open_input(path) as f:
        f.seek(start)
        return f.read(end - start)


_NOT_QUOTE_OR_NL = bytes(b for b in range(256) if b not in b'"\n')


def line_starts(path: str, chunk: int, quotes: bool = False) -> list[tuple[int, int]]:
    """Where a text file can be cut into ranges of about `chunk` bytes: (byte offset, 1-based line
    number) of line starts, (0, 1) first. One streaming pass that counts newlines block by block,
    so no range task reads what comes before its range to number its rows.

    `quotes` (CSV): a line with an odd number of `"` opens a quoted field that runs on (a newline in
    a value) or is a stray quote; where the record after it starts is then known only by parsing,
    so nothing after the first such line is cut: cuts before it fall between whole records (every
    line before it is one record), and the rest of the file is one range."""
    points = [(0, 1)]
    target, offset, lines = chunk, 0, 0
    limit = None  # no cut after this offset (the start of the first line with an odd quote count)
    carry_q, carry_start = 0, 0  # quotes so far in the line the previous block ended inside, and its start
    with _open_input(path) as f:
        while True:
            block = f.read(SCAN_BLOCK)
            if not block:
                break
            if quotes and limit is None:
                pieces = block.translate(None, _NOT_QUOTE_OR_NL).split(b"\n")
                for i, piece in enumerate(pieces[:-1]):
                    if (len(piece) + (carry_q if i == 0 else 0)) % 2:
                        nl = -1
                        for _ in range(i):  # the start of line i of this block: after its i-th newline
                            nl = block.find(b"\n", nl + 1)
                        limit = carry_start if i == 0 else offset + nl + 1
                        break
                else:
                    if len(pieces) > 1:
                        carry_q, carry_start = len(pieces[-1]), offset + block.rfind(b"\n") + 1
                    else:
                        carry_q += len(pieces[-1])
            pos = max(0, target - offset)
            seen_l, upto = lines, 0  # newlines up to block[upto]: one linear pass over the block
            while pos < len(block):
                nl = block.find(b"\n", pos)
                if nl < 0 or (limit is not None and offset + nl + 1 > limit):
                    break
                seen_l += block.count(b"\n", upto, nl)
                upto = nl
                start = offset + nl + 1
                points.append((start, seen_l + 2))  # the newline at `nl` ends line seen_l + 1
                target = start + chunk
                pos = max(nl + 1, target - offset)
            lines += block.count(b"\n")
            offset += len(block)
    if len(points) > 1 and points[-1][0] >= offset:  # a cut at the very end starts no range
        points.pop()
    return points


def parse_parquet_groups(source: str, first: int, last: int, first_row: int) -> Iterator[dict[str, Any]]:
    """Rows of row groups [first, last) of a Parquet file, numbered from `first_row`; only those
    groups are read."""
    with _open_input(source) as f:
        table = pq.ParquetFile(f).read_row_groups(list(range(first, last)))
    for i, row in enumerate(table.to_pylist(), start=first_row):
        yield raw_row(source, i, "", row)
