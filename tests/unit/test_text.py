"""NFKC of the whole text (marks compose with their base) with exact span offsets."""
from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_app.text import normalize_text, normalize_with_offsets, remap_span

pytestmark = pytest.mark.unit


def remapped(text: str, fragment: str) -> str:
    """The normalised text of the span that covers `fragment` in the original text."""
    norm, pos = normalize_with_offsets(text)
    start = text.index(fragment)
    a, b = remap_span(pos, start, start + len(fragment))
    return norm[a:b]


def test_combining_mark_composes_with_its_base():
    norm, pos = normalize_with_offsets("cafe\u0301")
    assert norm == "caf\u00e9" and len(norm) == 4
    assert pos == [0, 1, 2, 3, 4, 4]
    assert normalize_text("cafe\u0301") == "caf\u00e9"
    assert normalize_text("A\u0323\u0302") == "\u1eac"  # two marks reordered and composed: Ậ


def test_spans_over_composed_text_are_remapped_exactly():
    text = "le cafe\u0301  noir e\u0301te\u0301"
    norm, _ = normalize_with_offsets(text)
    assert norm == "le caf\u00e9 noir \u00e9t\u00e9"
    assert remapped(text, "cafe\u0301") == "caf\u00e9"
    assert remapped(text, "noir") == "noir"
    assert remapped(text, "e\u0301te\u0301") == "\u00e9t\u00e9"
    # the mark belongs to its base: a span that ends between them still holds the composed letter,
    # one that starts on the mark does not
    start = text.index("cafe")
    norm, pos = normalize_with_offsets(text)
    assert norm[slice(*remap_span(pos, start, start + 4))] == "caf\u00e9"
    assert norm[slice(*remap_span(pos, start + 4, start + 5))] == ""


def test_full_width_ligatures_and_numerals():
    text = "\uff2e\uff29\uff2b\uff25 \ufb01ne \u216b pack"  # ＮＩＫＥ ﬁne Ⅻ
    norm, _ = normalize_with_offsets(text)
    assert norm == "NIKE fine XII pack"
    assert remapped(text, "\uff2e\uff29\uff2b\uff25") == "NIKE"
    assert remapped(text, "\ufb01ne") == "fine" and remapped(text, "ne") == "ne"
    assert remapped(text, "\u216b") == "XII" and remapped(text, "pack") == "pack"


def test_hangul_jamo_compose_into_syllables():
    text = "\u1112\u1161\u11ab\u1100\u1173\u11af \ud0a4\ubcf4\ub4dc"  # 한글 as jamo, then 키보드
    norm, pos = normalize_with_offsets(text)
    assert norm == "\ud55c\uae00 \ud0a4\ubcf4\ub4dc" and len(norm) == 6
    assert remapped(text, "\u1112\u1161\u11ab") == "\ud55c"
    assert remapped(text, "\u1100\u1173\u11af") == "\uae00"
    assert remapped(text, "\ud0a4\ubcf4\ub4dc") == "\ud0a4\ubcf4\ub4dc"


def test_controls_and_whitespace_around_marks():
    # a control character between a base and its mark is removed first, so they still compose
    assert normalize_with_offsets("e\x00\u0301x") == ("\u00e9x", [0, 1, 1, 1, 2])
    text = "\u200b  play\u00a0 Cita  Roma\u0301ntica\tnow \x07"
    assert normalize_text(text) == "play Cita Rom\u00e1ntica now"
    assert remapped(text, "Cita  Roma\u0301ntica") == "Cita Rom\u00e1ntica"
    assert normalize_text("\u30ab\uff9e") == "\u30ac"  # half-width voiced mark composes: ガ


_MIXED = st.sampled_from(list("ae oAZ\t\u00a0\u0301\u0308\u0323\u1100\u1161\u11a8\u1112\uff2e\ufb01\u00b4"
                              "\u30ab\uff9e\u0bc6\u0bbe\u00e9\x00\u200d\u2003\u0344\u0f71\u0f72\u0f73"))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(_MIXED, max_size=24), st.text(max_size=24)))
def test_output_is_nfkc_of_the_whole_text_and_the_map_is_monotone(text):
    norm, pos = normalize_with_offsets(text)
    kept = "".join(ch for ch in text if ch in "\t\n\r" or (ord(ch) >= 32 and ch != "\x7f"
                                                           and unicodedata.category(ch) != "Cf"))
    assert norm == " ".join(unicodedata.normalize("NFKC", kept).split())
    assert normalize_text(text) == norm and normalize_text(norm) == norm
    assert len(pos) == len(text) + 1 and pos[0] == 0 and pos[-1] == len(norm)
    assert all(a <= b for a, b in zip(pos, pos[1:]))
    # spans over consecutive pieces of the original tile the normalised text (spaces aside)
    pieces = "".join(norm[slice(*remap_span(pos, i, i + 1))] for i in range(len(text)))
    assert pieces.replace(" ", "") == norm.replace(" ", "")
