"""Finding mentions and the 18 CT-RATE labels of a report.

One compiled alternation of the lexicon (``report_parsing.lexicon``) is run once over the whole report
text; each match becomes a mention with its label(s), its sentence and its polarity
(``report_parsing.negation``). A label is present (1) when at least one mention of it is affirmed
(or uncertain, under the default policy), absent (0) otherwise.
"""

from __future__ import annotations

import functools
import re

from core.anatomy_sets import CTRATE_LABELS
from report_parsing.lexicon import (
    ARTERIAL_PLACE,
    EFFUSION_BY_LOCATION,
    EXTRAPULMONARY_CONTEXT,
    FINDING_ENTRIES,
    GENERIC_ABNORMAL,
    LOCATION_RULES,
    NOT_ARTERIAL_PLACE,
    TRIGGER_STEMS,
)
from report_parsing.tokens import Limits, TokenView, WordTypeFilter, glued_word_starts

LABEL_INDEX: dict[str, int] = {label: i for i, label in enumerate(CTRATE_LABELS)}


@functools.lru_cache(maxsize=2)
def finding_pattern(ignore_case: bool = True) -> tuple[re.Pattern[str], tuple[tuple[str, ...], ...]]:
    """The combined finding regex and, per named group ``g<i>``, the labels it states.

    ``ignore_case=False`` is the fast form for text that is already lower-case."""
    groups = []
    labels_of_group = []
    for index, (labels, pattern) in enumerate(FINDING_ENTRIES):
        for label in labels:
            if label not in (GENERIC_ABNORMAL, EFFUSION_BY_LOCATION) and label not in LABEL_INDEX:
                raise ValueError(f"lexicon entry {index}: unknown label {label!r}")
        groups.append(f"(?P<g{index}>{pattern})")
        labels_of_group.append(labels)
    combined = re.compile(r"\b(?:" + "|".join(groups) + r")(?![\w])", re.IGNORECASE if ignore_case else 0)
    return combined, tuple(labels_of_group)


_LEADING_PUNCTUATION = "-\u2013\u2014\u00b7\u2022*\"'(\u201c\u201d/.,;:"
_TRIGGERS = WordTypeFilter(lambda word: word.lstrip(_LEADING_PUNCTUATION).startswith(TRIGGER_STEMS))


def finding_matches(lower_text: str, view: TokenView, limits: Limits | None = None) -> list[re.Match[str]]:
    """Non-overlapping lexicon matches in a lower-case text, tried only at tokens whose word type starts
    with a trigger stem; each bounded by its span of ``limits`` (default: the whole text)."""
    pattern, _ = finding_pattern(ignore_case=False)
    limits = limits or Limits.whole(lower_text)
    end_of = limits.end_of
    found: list[re.Match[str]] = []
    skip_until = -1
    positions = _TRIGGERS.positions(view).tolist()
    glued = [start for _, start, word in glued_word_starts(lower_text) if word.startswith(TRIGGER_STEMS)]
    if glued:
        positions = sorted(set(positions).union(glued))
    text_length = len(lower_text)
    for position in positions:
        while position < text_length and not lower_text[position].isalnum():
            position += 1  # a token like "-Budding": the word starts after its punctuation
        if position < skip_until:
            continue
        end = end_of(position)
        if end < 0:
            continue
        match = pattern.match(lower_text, position, end)
        if match:
            found.append(match)
            skip_until = match.end()
    return found


def finding_matches_full_scan(text: str) -> list[re.Match[str]]:
    """Reference: the same lexicon run over every position (slow; used by tests)."""
    pattern, _ = finding_pattern(ignore_case=True)
    return list(pattern.finditer(text))


@functools.lru_cache(maxsize=1)
def location_rules() -> tuple[tuple[re.Pattern[str], re.Pattern[str], str], ...]:
    return tuple(
        (re.compile(rf"\b(?:{mention})", re.IGNORECASE), re.compile(location, re.IGNORECASE), label)
        for mention, location, label in LOCATION_RULES
    )


_LOCATION_STEMS = ("calcif", "atherom", "atheroscl", "plaque")


@functools.lru_cache(maxsize=1 << 14)
def may_need_location(mention_text: str) -> bool:
    """Cheap pre-check: only calcification-like mentions have location rules."""
    return any(stem in mention_text for stem in _LOCATION_STEMS)


_ARTERIAL = "Arterial wall calcification"
_ARTERIAL_PLACE = re.compile(ARTERIAL_PLACE, re.IGNORECASE)
_NOT_ARTERIAL_PLACE = re.compile(NOT_ARTERIAL_PLACE, re.IGNORECASE)


@functools.lru_cache(maxsize=1 << 14)  # pure; report templates repeat the same clauses
def labels_with_location(mention_text: str, clause_text: str, labels: tuple[str, ...]) -> tuple[str, ...]:
    """``labels`` plus those a location rule adds for this mention in this clause; an arterial wall
    calcification placed only in the coronaries / a valve / the pleura is dropped."""
    added = [
        label
        for mention, location, label in location_rules()
        if label not in labels and mention.search(mention_text) and location.search(clause_text)
    ]
    labels = labels + tuple(added) if added else labels
    if (
        _ARTERIAL in labels
        and _NOT_ARTERIAL_PLACE.search(clause_text)
        and not _ARTERIAL_PLACE.search(_NOT_ARTERIAL_PLACE.sub(" ", clause_text))
    ):
        labels = tuple(label for label in labels if label != _ARTERIAL) or (GENERIC_ABNORMAL,)
    return labels


_PERICARDIAL_PLACE = re.compile(r"\bpericardi\w*", re.IGNORECASE)
_PLEURAL_PLACE = re.compile(
    r"\bpleura\w*|hemithora\w*|\bthora\w*|\bcostophrenic|\bsinus(?:es)?\b|\blungs?\b|\bfissures?\b", re.IGNORECASE
)
_ELSEWHERE = re.compile(
    EXTRAPULMONARY_CONTEXT + r"|\bcysts?\b|\blesions?\b|\bjoints?\b|\bperitone\w*|\bascites\b", re.IGNORECASE
)


@functools.lru_cache(maxsize=1 << 14)  # pure; report templates repeat the same clauses
def resolve_effusion(mention_text: str, location: str, labels: tuple[str, ...]) -> tuple[str, ...]:
    """A bare effusion / fluid: pericardial when its place is the pericardium, pleural when it is the
    pleura / hemithorax (or, for 'effusion', unspecified), a generic finding otherwise."""
    if EFFUSION_BY_LOCATION not in labels:
        return labels
    pericardial = bool(_PERICARDIAL_PLACE.search(location))
    pleural = bool(_PLEURAL_PLACE.search(location))
    resolved: list[str] = []
    if pericardial:
        resolved.append("Pericardial effusion")
    unspecified_effusion = mention_text.lower().startswith("effusion") and not _ELSEWHERE.search(location)
    if pleural or (not pericardial and unspecified_effusion):
        resolved.append("Pleural effusion")
    return tuple(resolved) or (GENERIC_ABNORMAL,)
