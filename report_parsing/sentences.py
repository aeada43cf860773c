"""Sentence segmentation for radiology text, on character offsets (fast, regex-based).

A boundary is a ``.``, ``!``, ``?`` or ``;`` followed by white space, or a CT-RATE impression quote
(``"``), or a line break; it is NOT a boundary when the full stop belongs to

* a decimal number or measurement (``3.5 mm``, ``22x14.5 mm`` - no white space after the dot),
* a list number (``1.`` / ``2)`` at the start of an item),
* a known abbreviation (``Dr.``, ``e.g.``, ``approx.``, ``vs.``, ``No.`` ...) or a single capital
  letter (initials, ``T12.`` is kept as a boundary because it is a vertebra at a sentence end).

Hyphenated terms (``effusion-thickening``) and vertebra names (``T12``, ``L1``) never split.
"""

from __future__ import annotations

import functools
import re

ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "dr", "mr", "mrs", "ms", "prof", "e.g", "i.e", "eg", "ie", "vs", "approx", "appr", "etc", "cf",
        "no", "nos", "fig", "st", "sr", "jr", "incl", "resp", "ref",
        "al", "pt", "pts", "hx", "dx", "sec", "vol", "ant", "post", "sup", "inf", "lat", "med", "bil",
    }
)

# candidate boundary characters (one fast character-class scan); each is then checked in Python
_CANDIDATE_CHAR = re.compile(r"[.!?;\n\"\u201c\u201d\u2022\u00b7]")
_BULLETS = "\u2022\u00b7"
_QUOTES = "\"\u201c\u201d"
_CLOSERS = "\"'\u201d\u201c)"
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)\.$")
_LIST_NUMBER = re.compile(r"(?:^|\s)\(?\d{1,2}[.)]$")


def _is_abbreviation(text: str, dot_position: int) -> bool:
    """True when the '.' at ``dot_position`` ends an abbreviation or a list number."""
    return _window_is_abbreviation(text[max(0, dot_position - 12) : dot_position + 1])


@functools.lru_cache(maxsize=1 << 16)
def _window_is_abbreviation(window: str) -> bool:
    """:func:`_is_abbreviation` on the 13 characters ending with the '.' (pure; cached: report
    templates repeat the same sentence ends)."""
    if _LIST_NUMBER.search(window):
        return True
    match = _WORD_BEFORE.search(window)
    if not match:
        return False
    word = match.group(1).lower().rstrip(".")
    if word in ABBREVIATIONS:
        return True
    # initials like "J." but not a sentence-final capital word; single letters only
    return len(word) == 1 and match.group(1).isupper()


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences in ``text[start:end]``, stripped of white space
    and of leading list numbers / quotes; empty pieces are dropped."""
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    piece_start = start
    skip_until = start
    for match in _CANDIDATE_CHAR.finditer(text, start, end):
        position = match.start()
        if position < skip_until:
            continue
        char = text[position]
        if char in ".!?;":
            stop = position + 1
            while stop < end and text[stop] in ".!?;":
                stop += 1
            while stop < end and text[stop] in _CLOSERS:
                stop += 1
            skip_until = stop
            if stop < end and not text[stop].isspace():
                continue  # 3.5 mm, e.g.x, T12.5: no white space after the mark
            if char == "." and stop == position + 1 and _is_abbreviation(text, position):
                continue
            _append(text, piece_start, stop, spans)
            piece_start = stop
        elif char == "\n" or char in _BULLETS:
            _append(text, piece_start, position, spans)
            piece_start = position + 1
        else:  # a quote that opens an item: CT-RATE impression items start with '"'
            if position > start and not text[position - 1].isspace():
                continue
            _append(text, piece_start, position, spans)
            piece_start = position + 1
    _append(text, piece_start, end, spans)
    return spans


_ALNUM = re.compile(r"[^\W_]")
_STRIP_LEAD = re.compile(r"[\s\"'\u201c\u201d\-\u2022*]*(?:\(?\d{1,2}[.)](?=\s))?[\s\"'\u201c\u201d]*")


def _append(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    lead = _STRIP_LEAD.match(text, start, end)
    if lead:
        start = lead.end()
    while end > start and (text[end - 1].isspace() or text[end - 1] in "\"'\u201c\u201d"):
        end -= 1
    # a piece of only punctuation is not a sentence ([^\W_] is exactly str.isalnum)
    if end > start and _ALNUM.search(text, start, end):
        spans.append((start, end))
