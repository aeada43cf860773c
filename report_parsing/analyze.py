"""The report analysis: sections -> sentences -> anatomies -> finding mentions -> labels.

The three ``add_*`` steps are what the spaCy components run (``report_parsing.pipeline``); they fill a
:class:`ReportAnalysis` made of plain values (msgpack-serialisable as a dict, so it travels back from
``nlp.pipe(n_process=...)`` workers inside ``Doc.user_data``). :func:`analyze_text` runs them on one
text without a pipeline.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass, field

from report_parsing.anatomy import OTHER_ANATOMY, anatomies_between, anatomy_matcher
from report_parsing.labels import (
    LABEL_INDEX,
    finding_matches,
    finding_pattern,
    labels_with_location,
    may_need_location,
    resolve_effusion,
)
from report_parsing.lexicon import EFFUSION_BY_LOCATION, EXTRAPULMONARY_CONTEXT, GENERIC_ABNORMAL, LUNG_LABELS, PULMONARY_CONTEXT
from report_parsing.negation import AFFIRMED, NEGATED, UNCERTAIN, SentenceCues, clause_bounds, location_text, report_cues
from report_parsing.sections import FINDINGS, IMPRESSION, detect_sections
from report_parsing.sentences import sentence_spans
from report_parsing.tokens import TokenView
from segmentation.anatomy_sets import CTRATE_LABELS

_EXTRAPULMONARY = re.compile(EXTRAPULMONARY_CONTEXT)   # applied to lower-case text
_PULMONARY = re.compile(PULMONARY_CONTEXT)

# labels that state a device, not a disease: they never make an anatomy abnormal
NOT_DISEASE_LABELS: frozenset[str] = frozenset({"Medical material"})


@dataclass
class ReportAnalysis:
    sentences: list[tuple[int, int]] = field(default_factory=list)       # char spans in the text
    sentence_sections: list[str] = field(default_factory=list)           # findings | impression | other
    sentence_anatomies: list[list[int]] = field(default_factory=list)    # anatomy indices per sentence
    sentence_abnormal: list[bool] = field(default_factory=list)
    mentions: list[tuple[int, int, list[str], int, str]] = field(default_factory=list)  # start, end, labels, sentence, polarity
    labels: list[int] = field(default_factory=lambda: [0] * len(CTRATE_LABELS))          # CT-RATE order, 0/1
    anatomy_abnormal: list[bool] = field(default_factory=list)
    anatomy_hits: list[tuple[int, list[int]]] = field(default_factory=list)             # vocabulary word offsets
    has_findings: bool = False
    has_impression: bool = False

    def to_dict(self) -> dict:
        """Plain (shallow) dict: lists, ints, strings, bools (msgpack-safe)."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, raw: dict) -> "ReportAnalysis":
        analysis = cls(**raw)
        analysis.sentences = [tuple(span) for span in analysis.sentences]
        return analysis


def analyze_text(text: str, anatomy_set_name: str, *, uncertain_is_positive: bool = True) -> ReportAnalysis:
    """All steps on one text (what the spaCy pipeline's components do one after the other)."""
    view = TokenView.from_text(text)
    analysis = ReportAnalysis()
    add_sentences(text, analysis)
    add_anatomies(text, analysis, anatomy_set_name, view)
    add_findings(text, analysis, anatomy_set_name, view, uncertain_is_positive=uncertain_is_positive)
    return analysis


def lower_keeping_offsets(text: str) -> str | None:
    """``text.lower()`` when it keeps every character offset (always for ASCII), else None."""
    lower = text.lower()
    return lower if len(lower) == len(text) else None


def add_sentences(text: str, analysis: ReportAnalysis) -> None:
    """Sections, then sentences inside each section."""
    for section in detect_sections(text):
        for span in sentence_spans(text, section.start, section.end):
            analysis.sentences.append(span)
            analysis.sentence_sections.append(section.name)
        analysis.has_findings |= section.name == FINDINGS
        analysis.has_impression |= section.name == IMPRESSION


def _sentence_of(starts: list[int], ends: list[int], position: int) -> int:
    index = bisect.bisect_right(starts, position) - 1
    return index if index >= 0 and position < ends[index] else -1


def add_anatomies(text: str, analysis: ReportAnalysis, anatomy_set_name: str, view: TokenView) -> None:
    """Anatomies named by each sentence's words (vocabulary of the anatomy set)."""
    matcher = anatomy_matcher(anatomy_set_name)
    lower = lower_keeping_offsets(text) or text.lower()
    hits = matcher.hits(lower, view) if len(lower) == len(text) else []
    analysis.anatomy_hits = hits  # (offset, anatomy indices) pairs
    starts = [span[0] for span in analysis.sentences]
    ends = [span[1] for span in analysis.sentences]
    per_sentence: dict[int, set[int]] = {}   # only the sentences that name an anatomy
    bisect_right = bisect.bisect_right
    for position, indices in hits:
        index = bisect_right(starts, position) - 1   # _sentence_of, inlined
        if index >= 0 and position < ends[index]:
            found = per_sentence.get(index)
            if found is None:
                per_sentence[index] = set(indices)
            else:
                found.update(indices)
    analysis.sentence_anatomies = [sorted(per_sentence[i]) if i in per_sentence else [] for i in range(len(starts))]
    analysis.anatomy_abnormal = [False] * len(matcher.anatomy_names)


@functools.lru_cache(maxsize=None)
def _label_anatomy(anatomy_set_name: str) -> tuple[int, dict[str, int]]:
    """(number of anatomies, label -> anatomy index) of an anatomy set."""
    from segmentation.anatomy_sets import load_anatomy_set

    anatomy_set = load_anatomy_set(anatomy_set_name)
    names = anatomy_set.anatomy_names
    return len(names), {label: names.index(name) for label, name in anatomy_set.label_anatomy.items() if name}


def add_findings(
    text: str, analysis: ReportAnalysis, anatomy_set_name: str, view: TokenView, *, uncertain_is_positive: bool = True
) -> None:
    """Finding mentions with polarity; labels; sentence and anatomy abnormal flags."""
    n_anatomies, label_anatomy = _label_anatomy(anatomy_set_name)
    present = {AFFIRMED, UNCERTAIN} if uncertain_is_positive else {AFFIRMED}
    if not analysis.anatomy_abnormal:
        analysis.anatomy_abnormal = [False] * n_anatomies
    starts = [span[0] for span in analysis.sentences]
    ends = [span[1] for span in analysis.sentences]
    base_anatomies = analysis.sentence_anatomies or [[] for _ in starts]
    grown: dict[int, set[int]] = {}   # sentences whose anatomies a finding extends (the others keep theirs)
    abnormal = [False] * len(starts)
    hits = analysis.anatomy_hits
    hit_starts = [position for position, _ in hits]
    group_labels = _group_labels()
    labels_out = analysis.labels
    anatomy_abnormal = analysis.anatomy_abnormal
    mentions = analysis.mentions
    bisect_right = bisect.bisect_right

    lower = lower_keeping_offsets(text)
    lower_text = lower if lower is not None else text.lower()
    cues_of: dict[int, SentenceCues] = {}
    cues_in_report = report_cues(lower_text, view) if lower is not None else None
    for match in finding_matches(text, lower, view):
        match_start, match_end = match.span()
        sentence_index = bisect_right(starts, match_start) - 1   # _sentence_of, inlined
        if sentence_index < 0 or match_start >= ends[sentence_index]:
            continue  # header words, punctuation between sentences
        labels = group_labels[match.lastgroup]
        offset = starts[sentence_index]
        sentence_end = ends[sentence_index]
        cues = cues_of.get(sentence_index)
        if cues is None:
            # offsets of the original text; lower-case copy (same length for ASCII, else a best effort)
            sentence = lower_text[offset:sentence_end] if lower is not None else text[offset:sentence_end].lower()
            cues = cues_of[sentence_index] = SentenceCues(sentence, cues_in_report, offset) if cues_in_report else SentenceCues(sentence)
        sentence = cues.sentence
        mention_start, mention_end = match_start - offset, min(match_end, sentence_end) - offset
        mention_text = sentence[mention_start:mention_end]
        polarity, clause_start, clause_end = cues.classify_in_clause(mention_start, mention_end)
        if EFFUSION_BY_LOCATION in labels:
            labels = resolve_effusion(mention_text, sentence[clause_start:clause_end], labels)
        is_present = polarity in present
        if is_present:
            if LUNG_LABELS.intersection(labels):
                if _names_only_other_organ(sentence[clause_start:clause_end]):
                    labels = tuple(label for label in labels if label not in LUNG_LABELS) or (GENERIC_ABNORMAL,)
            if may_need_location(mention_text):
                labels = labels_with_location(mention_text, location_text(sentence, clause_start), labels)
        mentions.append((match_start, match_end, list(labels), sentence_index, polarity))
        if not is_present:
            continue
        for label in labels:
            if label in LABEL_INDEX:
                labels_out[LABEL_INDEX[label]] = 1
            if label in NOT_DISEASE_LABELS:
                continue
            abnormal[sentence_index] = True
            if label in label_anatomy:
                target = {label_anatomy[label]}
            else:  # generic finding (or a label without anatomy in this set): the anatomies of its clause
                target = anatomies_between(hits, hit_starts, offset + clause_start, offset + clause_end) or set(
                    grown[sentence_index] if sentence_index in grown else base_anatomies[sentence_index]
                )
            found = grown.get(sentence_index)
            if found is None:
                found = grown[sentence_index] = set(base_anatomies[sentence_index])
            found.update(target)
            for anatomy_index in target:
                anatomy_abnormal[anatomy_index] = True
    analysis.sentence_anatomies = [
        sorted(grown[i]) if i in grown else sorted(set(found)) for i, found in enumerate(base_anatomies)
    ]
    analysis.sentence_abnormal = abnormal


@functools.lru_cache(maxsize=1 << 14)   # pure; report templates repeat the same clauses
def _names_only_other_organ(lower_clause: str) -> bool:
    """The clause names an organ outside the lungs and nothing pulmonary (thyroid nodule ...)."""
    return bool(_EXTRAPULMONARY.search(lower_clause)) and not _PULMONARY.search(lower_clause)


@functools.lru_cache(maxsize=1)
def _group_labels() -> dict[str, tuple[str, ...]]:
    """Finding-pattern group name (``g<i>``) -> the labels it states."""
    _, labels_of_group = finding_pattern()
    return {f"g{index}": labels for index, labels in enumerate(labels_of_group)}


def anatomy_sentence_indices(analysis: ReportAnalysis, n_anatomies: int) -> list[list[int]]:
    """Per anatomy (plus a last slot for ``other``), the indices of its sentences in report order,
    Findings before Impression."""
    section_rank = {FINDINGS: 1, IMPRESSION: 2}
    order = sorted(range(len(analysis.sentences)),
                   key=lambda i: (section_rank.get(analysis.sentence_sections[i], 0), analysis.sentences[i][0]))
    per_anatomy: list[list[int]] = [[] for _ in range(n_anatomies + 1)]
    for index in order:
        for target in analysis.sentence_anatomies[index] or [n_anatomies]:
            per_anatomy[target].append(index)
    return per_anatomy


__all__ = ["ReportAnalysis", "analyze_text", "anatomy_sentence_indices", "OTHER_ANATOMY", "NEGATED"]
