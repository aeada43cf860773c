"""Negation and uncertainty of a finding mention (NegEx / ConText style, on character offsets).

Policy (documented in docs/report_parsing.md):

* scope is the *clause* holding the mention: a sentence is cut at ``;``, ``:``, ``but``,
  ``however``, ``although``, ``whereas``, ``except``, ``, which`` and at ``and`` / ``,`` when they
  start a new statement (``..., and there is ...``);
* a *pre-negation* cue (``no``, ``not``, ``without``, ``absence of``, ``negative for``, ``free of``,
  ``neither/nor``) before the mention in its clause negates it;
* a *post-negation* cue after the mention in its clause negates it (``was not observed``, ``were not
  detected``, ``is not seen``, ``did not reach pathological size``, ``within normal limits``,
  ``is natural/normal/unremarkable/preserved``, ``absent``, ``resolved``);
* pseudo-negations are not cues (``no change``, ``no significant change``, ``not only``,
  ``no increase``, ``no progression``);
* uncertainty (``?``, ``suspicious for``, ``suspected``, ``possible``, ``probable``, ``may``,
  ``cannot be excluded``, ``not ruled out``, ``in favor of``, ``differential``, ``questionable``)
  makes a mention UNCERTAIN, which wins over negation when both apply (``cannot be excluded``).
  Uncertain mentions count as present for labels and abnormal flags (configurable).
"""

from __future__ import annotations

import bisect
import re
from typing import TYPE_CHECKING

import numpy as np

from report_parsing.tokens import TYPE_TABLE, Limits, glued_word_starts

if TYPE_CHECKING:
    from report_parsing.tokens import TokenView

AFFIRMED = "affirmed"
NEGATED = "negated"
UNCERTAIN = "uncertain"

# Every expression starts with one word boundary + one group (not a top-level alternation of
# lookarounds), which lets the regex engine reject most positions quickly; texts are lower-case.
_STARTERS = r"(?:there|no|a|an|the|it|in|on|at|minimal|mild|millimetric|slight|both|bilateral|left|right)"
_CLAUSE_BREAK = re.compile(
    r"[;:]|,\s*(?:(?:which|its|their|and)\b|(?=(?:there|no|a|an|it|in|on|minimal|mild|millimetric|slight|bilateral)\s))"
    r"|\b(?:but|however|although|whereas|except(?: for)?|apart from|other than|while|and(?=\s+" + _STARTERS + r"\b))\b"
)
_PSEUDO = re.compile(
    r"\b(?:no (?:significant |evident |obvious |marked |remarkable |apparent )?(?:change|changes|increase|progression|difference|"
    r"regression|interval change)\b"
    # "did not reach pathological size": the finding is there, only small
    r"|(?:(?:do|does|did|are|is|were|was)\s+)?not\s+(?:reach\w*\s+|in\s+|of\s+|at\s+)?(?:the\s+)?(?:\w+\s+)?patholog\w*"
    r"(?:\s+(?:in\s+)?(?:size|sizes|dimensions?|appearance|configuration|criteria))?"
    r"|(?:(?:do|does|did)\s+)?not\s+(?:differ|change|progress|increase|decrease)\w*"
    r"|(?:(?:was|were|is|are|has|have|had)\s+)?not\s+(?:been\s+)?(?:detected|observed|seen|present|noted|visualized|described)\s+(?:in|on|at)\s+"
    r"(?:the\s+|his\s+|her\s+|their\s+)?(?:previous|prior|last|former|earlier|old)\b"
    r"|not only\b|not necessarily\b|no longer\b(?= \w+ (?:than|in size)))"
)
_PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|neither|nor|absence of|absent|negative for|free of|no evidence of|no sign of|rather than|instead of)\b"
)
_POST_NEGATION = re.compile(
    r"\b(?:(?:was|were|is|are|has|have|had|been|be|could|can|did|does|do)\s+not\b|not\s+(?:been\s+)?(?:observed|detected|seen|"
    r"found|noted|present|identified|visualized|visualised|monitored|evident|shown|determined|encountered|reached|"
    r"reach|apparent|demonstrated|recognized|existing|considered|pathological)|didn't|doesn't|wasn't|weren't|isn't|aren't|"
    r"absent|within normal limits|within normal range|(?:is|are|was|were|appears?|appeared)\s+(?:\w+\s+)?(?:normal|natural|unremarkable|preserved|clear|"
    r"open|patent)\b|resolved|disappeared|regressed completely|ruled out|excluded|negative\b)"
)
_UNCERTAIN = re.compile(
    r"\b(?:suspicious\b|suspect\w*|possibl[ey]\b|probabl[ey]\b|may\b|might\b|could\b(?! not)|questionabl[ey]\b|"
    r"cannot be (?:excluded|ruled out|differentiated|distinguished)|not (?:be )?(?:excluded|ruled out)\b|"
    r"in favou?r of\b|differential\b|suggest\w*|concern\w* for\b|versus\b|vs\b|likely\b|equivocal\b|doubtful\b)"
)
_UNCERTAIN_OVER_NEGATION = re.compile(r"\b(?:cannot be|(?:could )?not (?:be )?)(?:excluded|ruled out)")

PRE_WINDOW_CHARS = 120
POST_WINDOW_CHARS = 200


def clause_breaks(lower_sentence: str) -> list[tuple[int, int]]:
    """(start, end) of every clause break in a lower-case sentence."""
    return [(match.start(), match.end()) for match in _CLAUSE_BREAK.finditer(lower_sentence)]


def clause_bounds(
    lower_sentence: str, position: int, position_end: int | None = None, breaks: list[tuple[int, int]] | None = None
) -> tuple[int, int]:
    """(start, end) of the clause of a lower-case sentence that holds characters [position, position_end)."""
    position_end = position if position_end is None else position_end
    breaks = clause_breaks(lower_sentence) if breaks is None else breaks
    start, end = 0, len(lower_sentence)
    for break_start, break_end in breaks:
        if break_end <= position:
            start = break_end
        elif break_start >= position_end:
            end = break_start
            break
    return start, end


# The words (lower-case tokens) each cue expression can start with: the expressions are only tried at
# such tokens (tests check this finds what a full scan finds).
_CUE_PATTERNS: dict[str, re.Pattern[str]] = {
    "breaks": _CLAUSE_BREAK,
    "pseudo": _PSEUDO,
    "pre": _PRE_NEGATION,
    "post": _POST_NEGATION,
    "uncertain": _UNCERTAIN,
    "uncertain_over_negation": _UNCERTAIN_OVER_NEGATION,
}
_AUXILIARIES = {"was", "were", "is", "are", "has", "have", "had", "been", "be", "could", "can", "did", "does", "do"}
_CUE_FIRST_WORDS: dict[str, frozenset[str]] = {
    "breaks": frozenset(
        {";", ":", ",", "but", "however", "although", "whereas", "except", "apart", "other", "while", "and"}
    ),
    "pseudo": frozenset({"no", "not"} | _AUXILIARIES),
    "pre": frozenset(
        {"no", "not", "without", "neither", "nor", "absence", "absent", "negative", "free", "rather", "instead"}
    ),
    "post": frozenset(
        {
            "not",
            "absent",
            "within",
            "appears",
            "appear",
            "appeared",
            "resolved",
            "disappeared",
            "regressed",
            "ruled",
            "excluded",
            "negative",
        }
        | _AUXILIARIES
    ),
    "uncertain": frozenset(
        {
            "suspicious",
            "may",
            "might",
            "could",
            "cannot",
            "can",
            "not",
            "in",
            "differential",
            "versus",
            "vs",
            "likely",
            "equivocal",
            "doubtful",
        }
    ),
    "uncertain_over_negation": frozenset({"cannot", "can", "could", "not"}),
}
_CUE_STEMS: dict[str, tuple[str, ...]] = {
    "uncertain": ("suspect", "possibl", "probabl", "questionabl", "suggest", "concern"),
}


def _cue_names(word: str) -> tuple[str, ...]:
    word = word.strip("-\u2013\u2014\u00b7\u2022*\"'()\u201c\u201d/.") or word
    return tuple(
        name
        for name in _CUE_PATTERNS
        if word in _CUE_FIRST_WORDS[name] or word.startswith(_CUE_STEMS.get(name, ("\0",)))
    )


_CUE_NAMES: tuple[str, ...] = tuple(_CUE_PATTERNS)


def _cue_code(word: str) -> int:
    """Bitmask over :data:`_CUE_NAMES` of the cue expressions a word type can start."""
    names = _cue_names(word)
    return sum(1 << number for number, name in enumerate(_CUE_NAMES) if name in names)


def _cue_lead(word: str) -> bool:
    """True when a token of this type does not start with a character a cue can start with."""
    return not word or not (word[0].isalnum() or word[0] in ";:,")


# columns of the shared type table (registered at import: never lazily, the CLI parses in threads)
_CUE_COLUMN = TYPE_TABLE.register(_cue_code, np.int64)
_LEAD_COLUMN = TYPE_TABLE.register(_cue_lead, bool)


def report_cues(lower_text: str, view: TokenView, limits: Limits | None = None) -> dict[str, list[tuple[int, int]]]:
    """Spans of every cue kind in a lower-case report, found at candidate tokens only; each match is
    bounded by its span of ``limits`` (default: the whole text)."""
    end_of = (limits or Limits.whole(lower_text)).end_of
    found: dict[str, list[tuple[int, int]]] = {name: [] for name in _CUE_PATTERNS}
    # per cue kind, its candidates (position, end of its span of limits), ascending, distinct; each
    # kind's spans do not overlap
    candidates_of: list[list[tuple[int, int]]] = [[] for _ in _CUE_NAMES]
    if view.lowers.size:
        codes = TYPE_TABLE.values(_CUE_COLUMN, view)
        candidates = np.flatnonzero(codes)
        codes = codes[candidates]
        positions = view.starts[candidates]
        # tokens starting with other punctuation ('"no'): the cue starts after it
        led = np.flatnonzero(TYPE_TABLE.values(_LEAD_COLUMN, view)[candidates])
        if led.size:
            text_length = len(lower_text)
            for index in led.tolist():
                position = int(positions[index])
                while position < text_length and not (lower_text[position].isalnum() or lower_text[position] in ";:,"):
                    position += 1
                positions[index] = position
        if limits is not None:
            ends = limits.ends_for(positions)
            inside = ends >= 0
            codes, positions, ends = codes[inside], positions[inside], ends[inside]
        else:
            ends = np.full(positions.shape, len(lower_text), dtype=np.int64)
        for number in range(len(_CUE_NAMES)):
            selected = (codes & (1 << number)) != 0
            candidates_of[number] = list(zip(positions[selected].tolist(), ends[selected].tolist(), strict=False))
    glued = glued_word_starts(lower_text)
    if glued:
        for mark, word_start, word in glued:
            for position, names in ((mark, _cue_names(lower_text[mark])), (word_start, _cue_names(word))):
                end = end_of(position)
                if end < 0:
                    continue
                for number, name in enumerate(_CUE_NAMES):
                    if name in names:
                        candidates_of[number].append((position, end))
        candidates_of = [sorted(set(candidates)) for candidates in candidates_of]
    for number, name in enumerate(_CUE_NAMES):
        candidates = candidates_of[number]
        if not candidates:
            continue
        match_at = _CUE_PATTERNS[name].match
        spans = found[name]
        last_end = -1
        previous = -1
        for position, end in candidates:
            if position < last_end or position == previous:
                continue  # non-overlapping, like finditer
            previous = position
            match = match_at(lower_text, position, end)
            if match:
                span = match.span()
                spans.append(span)
                last_end = span[1]
    question = lower_text.find("?")
    while question != -1:
        if end_of(question) >= 0:
            found["uncertain"].append((question, question + 1))
        question = lower_text.find("?", question + 1)
    for spans in found.values():
        spans.sort()
    return found


def report_cues_full_scan(lower_text: str) -> dict[str, list[tuple[int, int]]]:
    """Reference: each cue expression over every position (slow; used by tests)."""
    found = {name: [m.span() for m in pattern.finditer(lower_text)] for name, pattern in _CUE_PATTERNS.items()}
    found["uncertain"] = sorted(found["uncertain"] + [(i, i + 1) for i, c in enumerate(lower_text) if c == "?"])
    return found


class SentenceCues:
    """The cues of one lower-case sentence (a sentence holds several mentions), read from the cue
    spans of the whole report (global offsets; the sentence starts at ``offset``)."""

    __slots__ = ("sentence", "offset", "cues", "breaks")

    def __init__(
        self, lower_sentence: str, cues: dict[str, list[tuple[int, int]]] | None = None, offset: int = 0
    ) -> None:
        self.sentence = lower_sentence
        if cues is None:
            cues, offset = report_cues_full_scan(lower_sentence), 0
        self.offset = offset
        self.cues = cues
        self.breaks = self._inside("breaks")

    def _inside(self, name: str) -> list[tuple[int, int]]:
        spans = self.cues[name]
        offset, end = self.offset, self.offset + len(self.sentence)
        low = bisect.bisect_left(spans, (offset, -1))
        high = bisect.bisect_left(spans, (end, -1))
        return [(a - offset, min(b, end) - offset) for a, b in spans[low:high]]

    def _any_start_in(self, name: str, start: int, end: int) -> bool:
        spans = self.cues[name]
        index = bisect.bisect_left(spans, (self.offset + start, -1))
        return index < len(spans) and spans[index][0] < self.offset + end

    def _is_pseudo(self, start: int, end: int) -> bool:
        spans = self.cues["pseudo"]
        index = bisect.bisect_right(spans, (self.offset + start, 1 << 62))
        return any(
            p_start <= self.offset + start and self.offset + end <= p_end
            for p_start, p_end in spans[max(0, index - 3) : index]
        )

    def classify(self, mention_start: int, mention_end: int) -> str:
        return self.classify_in_clause(mention_start, mention_end)[0]

    def classify_in_clause(self, mention_start: int, mention_end: int) -> tuple[str, int, int]:
        """(polarity, clause start, clause end) of the mention at [mention_start, mention_end)."""
        clause_start, clause_end = clause_bounds(self.sentence, mention_start, mention_end, self.breaks)
        return self._classify(mention_start, mention_end, clause_start, clause_end), clause_start, clause_end

    def _classify(self, mention_start: int, mention_end: int, clause_start: int, clause_end: int) -> str:
        if self._any_start_in("uncertain_over_negation", clause_start, clause_end):
            return UNCERTAIN
        offset = self.offset
        # pre-negation: a cue between the window start and the mention's end (the mention itself may
        # span its cue: "lymph node that did not reach ..."), outside pseudo-negations
        window_start = max(clause_start, mention_start - PRE_WINDOW_CHARS)
        spans = self.cues["pre"]
        index = bisect.bisect_left(spans, (offset + window_start, -1))
        while index < len(spans) and spans[index][0] < offset + mention_end:
            start, end = spans[index][0] - offset, spans[index][1] - offset
            if end <= mention_end and not self._is_pseudo(start, end):
                return NEGATED
            index += 1
        window_end = min(clause_end, mention_end + POST_WINDOW_CHARS)
        spans = self.cues["post"]
        index = bisect.bisect_left(spans, (offset + mention_end, -1))
        while index < len(spans) and spans[index][0] < offset + window_end:
            start, end = spans[index][0] - offset, spans[index][1] - offset
            if end <= window_end and not self._is_pseudo(start, end):
                return NEGATED
            index += 1
        if self._any_start_in("uncertain", clause_start, clause_end):
            return UNCERTAIN
        return AFFIRMED


def location_text(lower_sentence: str, clause_start: int) -> str:
    """The sentence from a mention's clause on, up to the next negation cue: where its location words
    are looked up (``plaques in the aorta, and in the coronary arteries``)."""
    cue = _PRE_NEGATION.search(lower_sentence, clause_start + 1)
    return lower_sentence[clause_start : cue.start() if cue else len(lower_sentence)]
