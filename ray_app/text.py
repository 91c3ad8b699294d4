"""Text normalisation that keeps character offsets: entity spans survive cleaning."""
from __future__ import annotations

import html
import re
import unicodedata

_TAG = re.compile(r"<[^>]{0,2000}>")
_BLOCK_TAG = re.compile(r"<\s*(br|/p|p|/div|div|li|/li|/h\d|tr)\b[^>]{0,2000}>", re.I)
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)
_CONTROL = {c for c in map(chr, range(32)) if c not in "\t\n\r"} | {"\x7f"}


def normalize_with_offsets(text: str) -> tuple[str, list[int]]:
    """NFKC + control chars removed + whitespace collapsed and trimmed.

    Returns the new text and `pos`, where pos[i] is the index in the new text of original
    character i (len(text)+1 entries, the last one mapping the end), so a span [s, e) becomes
    [pos[s], pos[e]) after normalisation.
    """
    out: list[str] = []
    pos: list[int] = []
    pending_space = False
    for ch in text:
        norm = unicodedata.normalize("NFKC", ch)
        if ch in _CONTROL or unicodedata.category(ch) == "Cf":
            norm = ""
        if norm and norm.isspace():
            pending_space = bool(out)
            pos.append(len(out))
            continue
        if pending_space and norm:
            out.append(" ")
            pending_space = False
        pos.append(len(out))
        out.extend(norm)
    pos.append(len(out))
    new = "".join(out)
    return new, [min(p, len(new)) for p in pos]


def normalize_text(text: str) -> str:
    """Unicode (NFKC) and whitespace normalisation of a short text field."""
    return normalize_with_offsets(text)[0]


def strip_html(text: str) -> str:
    """Remove markup from a description, keeping paragraph breaks as spaces, and unescape entities."""
    if "<" not in text and "&" not in text:
        return text
    text = _SCRIPT.sub(" ", text)
    text = _BLOCK_TAG.sub(" ", text)
    text = _TAG.sub("", text)
    return html.unescape(text)


def remap_span(pos: list[int], start: int, end: int) -> tuple[int, int]:
    """Map an original [start, end) span through normalize_with_offsets' position list."""
    new_start = pos[start]
    new_end = pos[end]
    return new_start, max(new_start, new_end)
