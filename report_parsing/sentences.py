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
        "dr",
        "mr",
        "mrs",
        "ms",
        "prof",
        "e.g",
        "i.e",
        "eg",
        "ie",
        "vs",
        "approx",
        "appr",
        "etc",
        "cf",
        "no",
        "nos",
        "fig",
        "st",
        "sr",
        "jr",
        "incl",
        "resp",
        "ref",
        "al",
        "pt",
        "pts",
        "hx",
        "dx",
        "sec",
        "vol",
        "ant",
        "post",
        "sup",
        "inf",
        "lat",
        "med",
        "bil",
    }
)

# Boundaries in one C-level scan (one leading character class, so the engine skips ahead fast): a run of
# [.!?;] (+ closing quotes / brackets) followed by white space or the end, a line break, a bullet or a
# quote (CT-RATE impression items start with '"'; it must follow white space, checked in Python, as is
# a single '.': abbreviation / list number).
_BOUNDARY = re.compile(
    r"[.!?;\n\u2022\u00b7\"\u201c\u201d]"
    r"(?:(?<=[.!?;])[.!?;]*[\"'\u201d\u201c)]*(?=\s|\Z)|(?<=[\n\u2022\u00b7\"\u201c\u201d]))"
)
_QUOTES = "\"\u201c\u201d"
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
    for match in _BOUNDARY.finditer(text, start, end):
        position, stop = match.span()
        if stop == position + 1:
            char = text[position]
            if char == ".":
                if position - piece_start >= 12:  # the abbreviation window lies inside the piece: one lookup
                    is_abbreviation, trimmed = _piece_ending_in_dot(text[piece_start:stop])
                    if not is_abbreviation:
                        if trimmed is not None:
                            spans.append((piece_start + trimmed[0], piece_start + trimmed[1]))
                        piece_start = stop
                    continue
                if _is_abbreviation(text, position):
                    continue
            elif char not in ".!?;":  # a line break, a bullet or an opening quote: cut before it
                if char in _QUOTES and position > start and not text[position - 1].isspace():
                    continue
                _append(text, piece_start, position, spans)
                piece_start = stop
                continue
        _append(text, piece_start, stop, spans)
        piece_start = stop
    _append(text, piece_start, end, spans)
    return spans


@functools.lru_cache(maxsize=1 << 16)  # pure; report templates repeat the same sentences
def _piece_ending_in_dot(piece: str) -> tuple[bool, tuple[int, int] | None]:
    """(the final '.' ends an abbreviation / list number, :func:`_trimmed` of the piece) of a piece of
    at least 13 characters ending in '.'."""
    return _window_is_abbreviation(piece[-13:]), _trimmed(piece)


_ALNUM = re.compile(r"[^\W_]")
_STRIP_LEAD = re.compile(r"[\s\"'\u201c\u201d\-\u2022*]*(?:\(?\d{1,2}[.)](?=\s))?[\s\"'\u201c\u201d]*")


def _append(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    if end > start:
        trimmed = _trimmed(text[start:end])
        if trimmed is not None:
            spans.append((start + trimmed[0], start + trimmed[1]))


@functools.lru_cache(maxsize=1 << 16)  # pure; report templates repeat the same pieces
def _trimmed(piece: str) -> tuple[int, int] | None:
    """(start, end) of a piece without its leading list number / quotes / bullets and trailing white
    space / quotes; None when what is left has no letter or digit (not a sentence)."""
    start, end = _STRIP_LEAD.match(piece).end(), len(piece)
    while end > start and (piece[end - 1].isspace() or piece[end - 1] in "\"'\u201c\u201d"):
        end -= 1
    # a piece of only punctuation is not a sentence ([^\W_] is exactly str.isalnum)
    if end > start and _ALNUM.search(piece, start, end):
        return start, end
    return None


def clear_text_caches() -> None:
    """Empty this module's per-window / per-piece memos (a cold start, see ``pipeline.forget_everything``)."""
    for text_cache in (_window_is_abbreviation, _trimmed, _piece_ending_in_dot):
        text_cache.cache_clear()
