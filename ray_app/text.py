"""Text normalisation that keeps character offsets: entity spans survive cleaning.

NFKC composes a base character with the marks that follow it ("e" + U+0301 -> "é") and Hangul
jamo into syllables, so it cannot be applied one character at a time. The text is cut into
clusters (a starter plus every following character that NFKC would combine with it), each
cluster is normalised whole, and the position map goes from cluster to cluster: the output is
exactly NFKC of the text (control characters removed first, whitespace collapsed after).
"""
from __future__ import annotations

import html
import re
import unicodedata

_TAG = re.compile(r"<[^>]{0,2000}>")
_BLOCK_TAG = re.compile(r"<\s*(br|/p|p|/div|div|li|/li|/h\d|tr)\b[^>]{0,2000}>", re.I)
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)
_CONTROL = {c for c in map(chr, range(32)) if c not in "\t\n\r"} | {"\x7f"}
_ASCII_DROP = dict.fromkeys(map(ord, _CONTROL))


def _dropped(ch: str) -> bool:
    return ch in _CONTROL or unicodedata.category(ch) == "Cf"


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _joins(text: str, cluster: list[int], ch: str) -> bool:
    """Whether NFKC may combine `ch` with the cluster before it (so no boundary may fall between).

    A boundary is safe only before a character that decomposes to a starter first (U+0F73 does
    not: its marks may reorder and let a later accent compose with the base before it) and that
    does not compose with what precedes it (Hangul vowel and final jamo do, as do a few
    class-0 vowel signs).
    """
    if unicodedata.combining(unicodedata.normalize("NFKD", ch)[:1] or " "):
        return True
    prev = "".join(text[j] for j in cluster)
    return _nfkc(prev + ch) != _nfkc(prev) + _nfkc(ch)


def _nfkc_with_offsets(text: str) -> tuple[str, list[int]]:
    """NFKC of `text` without control/format characters, and the original -> new position map.

    A character maps to the start of its cluster when it begins one, otherwise to the end of its
    cluster: a span [s, e) keeps exactly the clusters whose first character lies inside it.
    """
    kept = "".join(ch for ch in text if not _dropped(ch))
    # an already normalised text only needs its marks grouped with their base characters
    stable = kept.isascii() or unicodedata.is_normalized("NFKC", kept)
    clusters: list[list[int]] = []  # original indices of each cluster's kept characters
    for i, ch in enumerate(text):
        if _dropped(ch):
            continue
        if clusters and not ch.isascii() and (unicodedata.combining(ch) or not stable and _joins(text, clusters[-1], ch)):
            clusters[-1].append(i)
        else:
            clusters.append([i])
    out: list[str] = []
    pos = [0] * (len(text) + 1)
    n_out, i = 0, 0
    for members in clusters:
        piece = "".join(text[j] for j in members)
        piece = piece if stable else _nfkc(piece)
        while i <= members[0]:  # dropped characters before the cluster, and its first one
            pos[i] = n_out
            i += 1
        n_out += len(piece)
        while i <= members[-1]:  # the rest of the cluster, dropped characters inside included
            pos[i] = n_out
            i += 1
        out.append(piece)
    while i <= len(text):
        pos[i] = n_out
        i += 1
    return "".join(out), pos


def _collapse_whitespace(text: str) -> tuple[str, list[int]]:
    """Runs of whitespace -> one space, trimmed at both ends, with the position map."""
    out: list[str] = []
    pos: list[int] = []
    pending_space = False
    for ch in text:
        if ch.isspace():
            pending_space = bool(out)
            pos.append(len(out))
            continue
        if pending_space:
            out.append(" ")
            pending_space = False
        pos.append(len(out))
        out.append(ch)
    pos.append(len(out))
    return "".join(out), pos


def normalize_with_offsets(text: str) -> tuple[str, list[int]]:
    """NFKC + control chars removed + whitespace collapsed and trimmed.

    Returns the new text and `pos`, where pos[i] is the index in the new text of original
    character i (len(text)+1 entries, the last one mapping the end), so a span [s, e) becomes
    [pos[s], pos[e]) after normalisation. A combining mark belongs to its base character: a span
    holds a composed character when it holds the base.
    """
    composed, first = _nfkc_with_offsets(text)
    new, second = _collapse_whitespace(composed)
    return new, [second[p] for p in first]


def normalize_text(text: str) -> str:
    """Unicode (NFKC) and whitespace normalisation of a short text field (no position map)."""
    # the same result as normalize_with_offsets(text)[0], without its per-character bookkeeping
    if text.isascii():
        kept = text.translate(_ASCII_DROP)
    else:
        kept = "".join(ch for ch in text if not _dropped(ch))
    return " ".join(_nfkc(kept).split())


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
