"""Anatomy assignment: which anatomies of an anatomy set a piece of text talks about.

The vocabulary comes from ``core/anatomy_sets.yaml`` (``vocabulary`` lists). Single words are
looked up per token type (cached); multi-word phrases (``ground glass``, ``lymph node``) are tried with
one compiled expression at tokens that can start them. A sentence may belong to several anatomies; a
sentence with none is kept as ``other``. Which hits assign, and which clause each anatomy gets, is
``report_parsing.clauses``; its data tables (dependent words, companions, labels outside the text) are
``anatomy_clauses.yaml`` beside this file.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from report_parsing.clauses import NO_RULES, ClauseRules
from report_parsing.tokens import TYPE_TABLE, Limits, TokenView, WordTypeFilter

_PUNCTUATION = "-\u2013\u2014\u00b7\u2022*\"'(\u201c\u201d/.,;:"


def _lead(text: str, position: int) -> int:
    offset = 0
    while position + offset < len(text) and not text[position + offset].isalnum():
        offset += 1
    return offset


def _has_lead(text: str, found: list[tuple[int, tuple[int, ...]]]) -> bool:
    length = len(text)
    # any hit at a non-alphanumeric character (str.isalnum of the joined characters: all of them are)
    return not "".join([text[p] for p, _ in found if p < length]).isalnum()


OTHER_ANATOMY = "other"


@dataclass
class AnatomyMatcher:
    anatomy_names: tuple[str, ...]
    single: dict[str, tuple[int, ...]]  # one-word vocabulary -> anatomy indices
    phrase_pattern: re.Pattern[str] | None  # multi-word phrases (lower-case text)
    phrase_anatomies: dict[str, tuple[int, ...]]  # normalised phrase -> anatomy indices
    phrase_first_words: frozenset[str]
    # the data-table clause rules resolved to this set's anatomy indices (anatomy_clauses.yaml)
    clause_rules: ClauseRules = NO_RULES
    type_filter: WordTypeFilter = field(init=False)
    code_column: int = field(init=False)
    decoded: dict = field(init=False)

    def __post_init__(self) -> None:
        def starts_phrase(word: str) -> bool:
            word = word.lstrip(_PUNCTUATION)
            head = re.split(r"[^\w]", word, maxsplit=1)[0]
            return head in self.phrase_first_words

        self.type_filter = WordTypeFilter(starts_phrase)
        # anatomy bitmask of each word type (one-word vocabulary), a column of the shared type table
        self.code_column = TYPE_TABLE.register(self._code, np.int64)
        self.decoded: dict[int, tuple[int, ...]] = {0: ()}

    def _code(self, word: str) -> int:
        head = re.split(r"[^\w]", word.lstrip(_PUNCTUATION), maxsplit=1)[0]
        code = 0
        for index in self.single.get(head, ()):
            code |= 1 << index
        return code

    def _codes_of(self, view: TokenView) -> np.ndarray:
        return TYPE_TABLE.values(self.code_column, view)

    def decode(self, code: int) -> tuple[int, ...]:
        indices = self.decoded.get(code)
        if indices is None:
            indices = self.decoded[code] = tuple(i for i in range(len(self.anatomy_names)) if code >> i & 1)
        return indices

    def hits(self, lower_text: str, view: TokenView, limits: Limits | None = None) -> list[tuple[int, tuple[int, ...]]]:
        """(char offset, anatomy indices) of every vocabulary word / phrase, ascending; phrases are
        bounded by their span of ``limits`` (default: the whole text). Hits outside every span may be
        returned: the caller keeps those of its sentences."""
        if view.lowers.size == 0:
            return []
        codes = self._codes_of(view)
        single_tokens = np.flatnonzero(codes)
        decoded, decode = self.decoded, self.decode
        found: list[tuple[int, tuple[int, ...]]] = [
            (position, decoded[code] if code in decoded else decode(code))
            for position, code in zip(view.starts[single_tokens].tolist(), codes[single_tokens].tolist(), strict=False)
        ]
        if self.phrase_pattern is not None:
            end_of = (limits or Limits.whole(lower_text)).end_of
            for position in self.type_filter.positions(view).tolist():
                while position < len(lower_text) and not lower_text[position].isalnum():
                    position += 1
                end = end_of(position)
                if end < 0:
                    continue
                match = self.phrase_pattern.match(lower_text, position, end)
                if match:
                    found.append((position, self.phrase_anatomies[_norm(match.group(0))]))
            found.sort()
        # a token with leading punctuation ("-lung") points at its word
        return [(p + _lead(lower_text, p), i) for p, i in found] if found and _has_lead(lower_text, found) else found

    def anatomies_in(self, text: str) -> set[int]:
        """Anatomies named anywhere in ``text`` (convenience; the pipeline uses :meth:`hits`)."""
        lower = text.lower()
        view = TokenView.from_text(lower)
        return {index for _, indices in self.hits(lower, view) for index in indices}


def _norm(phrase: str) -> str:
    return re.sub(r"[\s-]+", " ", phrase.lower())


CLAUSE_RULES_FILE = Path(__file__).with_name("anatomy_clauses.yaml")


@functools.cache
def clause_rules() -> dict:
    """The clause-level rules as data (``anatomy_clauses.yaml``)."""
    return yaml.safe_load(CLAUSE_RULES_FILE.read_text(encoding="utf-8")) or {}


@functools.cache
def labels_outside_text() -> frozenset[str]:
    """Labels whose present mention flags their anatomy abnormal without putting the sentence in its text."""
    return frozenset(clause_rules().get("labels_outside_text") or ())


@functools.cache
def keep_flagged_text() -> bool:
    """An anatomy flagged abnormal keeps the sentences that flagged it when it has no other text."""
    return bool(clause_rules().get("keep_flagged_text", True))


def clause_rules_for(anatomy_names: tuple[str, ...]) -> ClauseRules:
    """``anatomy_clauses.yaml`` for the anatomies of one set (names the set lacks are left out)."""
    table = clause_rules()
    dependent: dict[str, set[int]] = {}
    for name, words in (table.get("dependent_words") or {}).items():
        if name in anatomy_names:
            for word in words:
                dependent.setdefault(_norm(word), set()).add(anatomy_names.index(name))
    companions = tuple(
        (anatomy_names.index(name), re.compile(r"\b(?:" + "|".join(patterns) + r")\b"))
        for name, patterns in (table.get("companions") or {}).items()
        if name in anatomy_names and patterns
    )
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(dependent))) + r")\b") if dependent else None
    return ClauseRules(
        {word: frozenset(indices) for word, indices in dependent.items()},
        pattern,
        companions,
        frozenset(anatomy for anatomy, _ in companions),
    )


@functools.cache
def anatomy_matcher(anatomy_set_name: str) -> AnatomyMatcher:
    from core.anatomy_sets import load_anatomy_set

    anatomy_set = load_anatomy_set(anatomy_set_name)
    single: dict[str, list[int]] = {}
    phrases: dict[str, list[int]] = {}
    for index, anatomy in enumerate(anatomy_set.anatomies):
        for phrase in anatomy.vocabulary:
            normalised = _norm(phrase)
            target = phrases if " " in normalised else single
            if index not in target.setdefault(normalised, []):
                target[normalised].append(index)
    pattern = None
    if phrases:
        ordered = sorted(phrases, key=lambda p: (-len(p), p))
        pattern = re.compile(r"(?:" + "|".join(r"[\s-]+".join(map(re.escape, p.split())) for p in ordered) + r")\b")
    return AnatomyMatcher(
        anatomy_set.anatomy_names,
        {k: tuple(v) for k, v in single.items()},
        pattern,
        {k: tuple(v) for k, v in phrases.items()},
        frozenset(p.split()[0] for p in phrases),
        clause_rules_for(anatomy_set.anatomy_names),
    )
