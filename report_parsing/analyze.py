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
from typing import NamedTuple

from core.anatomy_sets import CTRATE_LABELS
from report_parsing.anatomy import OTHER_ANATOMY, anatomy_matcher, keep_flagged_text, labels_outside_text
from report_parsing.clauses import assign_clauses
from report_parsing.labels import (
    LABEL_INDEX,
    finding_matches,
    finding_pattern,
    labels_with_location,
    may_need_location,
    resolve_effusion,
)
from report_parsing.lexicon import (
    EFFUSION_BY_LOCATION,
    EXTRAPULMONARY_CONTEXT,
    GENERIC_ABNORMAL,
    LUNG_LABELS,
    PULMONARY_CONTEXT,
)
from report_parsing.negation import AFFIRMED, NEGATED, UNCERTAIN, SentenceCues, location_text, report_cues
from report_parsing.sections import FINDINGS, IMPRESSION, detect_sections
from report_parsing.sentence_cache import sentence_cache
from report_parsing.sentences import sentence_spans
from report_parsing.tokens import Limits, TokenView

_EXTRAPULMONARY = re.compile(EXTRAPULMONARY_CONTEXT)  # applied to lower-case text
_PULMONARY = re.compile(PULMONARY_CONTEXT)

# labels that state a device, not a disease: they never make an anatomy abnormal
NOT_DISEASE_LABELS: frozenset[str] = frozenset({"Medical material"})


@dataclass
class ReportAnalysis:
    sentences: list[tuple[int, int]] = field(default_factory=list)  # char spans in the text
    sentence_sections: list[str] = field(default_factory=list)  # findings | impression | other
    sentence_anatomies: list[list[int]] = field(default_factory=list)  # anatomy indices per sentence
    sentence_abnormal: list[bool] = field(default_factory=list)
    mentions: list[tuple[int, int, list[str], int, str]] = field(
        default_factory=list
    )  # start, end, labels, sentence, polarity
    labels: list[int] = field(default_factory=lambda: [0] * len(CTRATE_LABELS))  # CT-RATE order, 0/1
    anatomy_abnormal: list[bool] = field(default_factory=list)
    # per sentence, [anatomy, start, end] of the clauses an anatomy gets when it gets only part of the
    # sentence (absolute offsets; an anatomy with no entry gets the whole sentence)
    sentence_pieces: list[list[list[int]]] = field(default_factory=list)
    has_findings: bool = False
    has_impression: bool = False

    def to_dict(self) -> dict:
        """Plain (shallow) dict: lists, ints, strings, bools (msgpack-safe)."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, raw: dict) -> ReportAnalysis:
        analysis = cls(**raw)
        analysis.sentences = [tuple(span) for span in analysis.sentences]
        return analysis


@dataclass
class ReportScratch:
    """What the steps of one report share and do not output: the lower-case text, its tokens, each
    sentence's memo key (its lower-case text) and vocabulary hits (offsets relative to the sentence)."""

    lower_text: str
    view: TokenView
    keys: list[str] = field(default_factory=list)
    sentence_hits: list[tuple[tuple[int, tuple[int, ...]], ...]] = field(default_factory=list)
    missed_view: tuple[tuple[int, ...], TokenView] | None = None  # (missed sentences, their tokens)

    @classmethod
    def of(cls, text: str, view: TokenView) -> ReportScratch:
        return cls(lower_keeping_offsets(text), view)


def analyze_text(text: str, anatomy_set_name: str, *, uncertain_is_positive: bool = True) -> ReportAnalysis:
    """All steps on one text (what the spaCy pipeline's components do one after the other)."""
    scratch = ReportScratch.of(text, TokenView.from_text(text))
    analysis = ReportAnalysis()
    add_sentences(text, analysis)
    add_anatomies(analysis, scratch, anatomy_set_name)
    add_findings(analysis, scratch, anatomy_set_name, uncertain_is_positive=uncertain_is_positive)
    return analysis


def lower_keeping_offsets(text: str) -> str:
    """``text.lower()`` with every character offset kept: a character whose lower case is longer
    (``İ`` -> ``i̇``) keeps only the first character of it."""
    lower = text.lower()
    if len(lower) == len(text):
        return lower
    return "".join([(char.lower() or char)[0] for char in text])


def add_sentences(text: str, analysis: ReportAnalysis) -> None:
    """Sections, then sentences inside each section."""
    for section in detect_sections(text):
        for span in sentence_spans(text, section.start, section.end):
            analysis.sentences.append(span)
            analysis.sentence_sections.append(section.name)
        analysis.has_findings |= section.name == FINDINGS
        analysis.has_impression |= section.name == IMPRESSION


def _sentence_keys(analysis: ReportAnalysis, scratch: ReportScratch) -> list[str]:
    if len(scratch.keys) != len(analysis.sentences):
        lower = scratch.lower_text
        scratch.keys = [lower[start:end] for start, end in analysis.sentences]
    return scratch.keys


def _missed(analysis: ReportAnalysis, scratch: ReportScratch, missed: list[int]) -> tuple[Limits, TokenView]:
    """The spans of the ``missed`` sentences and a view of only their tokens (plus the token before each,
    which may run into it: ``-Lung``), so a report with one new sentence costs one sentence's work."""
    limits = Limits([analysis.sentences[i][0] for i in missed], [analysis.sentences[i][1] for i in missed])
    if len(missed) == len(analysis.sentences):
        return limits, scratch.view
    key = tuple(missed)
    if scratch.missed_view is not None and scratch.missed_view[0] == key:
        return limits, scratch.missed_view[1]
    view = scratch.view.tokens_within(limits.starts, limits.ends)
    scratch.missed_view = (key, view)
    return limits, view


def add_anatomies(analysis: ReportAnalysis, scratch: ReportScratch, anatomy_set_name: str) -> None:
    """Anatomies named by each sentence's words (vocabulary of the anatomy set), memoised per sentence."""
    matcher = anatomy_matcher(anatomy_set_name)
    cache = sentence_cache("anatomy", anatomy_set_name)
    keys = _sentence_keys(analysis, scratch)
    get = cache.entries.get
    results = [get(key) for key in keys]  # (anatomies, hits relative to the sentence start)
    missed = [index for index, result in enumerate(results) if result is None]
    cache.count(len(keys), len(missed))
    if missed:
        limits, view = _missed(analysis, scratch, missed)
        per_sentence: dict[int, list[tuple[int, tuple[int, ...]]]] = {index: [] for index in missed}
        starts = limits.starts
        for position, indices in matcher.hits(scratch.lower_text, view, limits):
            slot = bisect.bisect_right(starts, position) - 1
            if slot >= 0 and position < limits.ends[slot]:
                per_sentence[missed[slot]].append((position - starts[slot], indices))
        for index in missed:
            # only the hits that name the organ assign; clause pieces when a sentence names several
            hits, pieces = assign_clauses(keys[index], per_sentence[index], matcher.clause_rules)
            result = results[index] = (tuple(sorted({i for _, indices in hits for i in indices})), hits, pieces)
            cache.put(keys[index], result)
    analysis.sentence_anatomies = [list(result[0]) for result in results]
    scratch.sentence_hits = [result[1] for result in results]
    # per sentence, only when some sentence is split (most reports: none, an empty list)
    if any(result[2] for result in results):
        analysis.sentence_pieces = [
            [[anatomy, start + offset, end + offset] for anatomy, start, end in result[2]]
            for (offset, _), result in zip(analysis.sentences, results, strict=False)
        ]
    analysis.anatomy_abnormal = [False] * len(matcher.anatomy_names)


@functools.cache
def _label_anatomy(anatomy_set_name: str) -> tuple[int, dict[str, int]]:
    """(number of anatomies, label -> anatomy index) of an anatomy set."""
    from core.anatomy_sets import load_anatomy_set

    anatomy_set = load_anatomy_set(anatomy_set_name)
    names = anatomy_set.anatomy_names
    return len(names), {label: names.index(name) for label, name in anatomy_set.label_anatomy.items() if name}


class SentenceFindings(NamedTuple):
    """The findings of one sentence (offsets relative to its start); immutable: it is memoised."""

    mentions: tuple[tuple[int, int, tuple[str, ...], str], ...]  # start, end, labels, polarity
    anatomies: tuple[int, ...]  # the sentence's anatomies, grown by its findings
    abnormal: bool
    label_indices: tuple[int, ...]  # CT-RATE labels present (indices into CTRATE_LABELS)
    abnormal_anatomies: tuple[int, ...]


def add_findings(
    analysis: ReportAnalysis, scratch: ReportScratch, anatomy_set_name: str, *, uncertain_is_positive: bool = True
) -> None:
    """Finding mentions with polarity; labels; sentence and anatomy abnormal flags (memoised per sentence)."""
    n_anatomies, _ = _label_anatomy(anatomy_set_name)
    if not analysis.anatomy_abnormal:
        analysis.anatomy_abnormal = [False] * n_anatomies
    if len(scratch.sentence_hits) != len(analysis.sentences):
        add_anatomies(analysis, scratch, anatomy_set_name)
    cache = sentence_cache("findings", anatomy_set_name, uncertain_is_positive)
    keys = _sentence_keys(analysis, scratch)
    get = cache.entries.get
    results = [get(key) for key in keys]
    missed = [index for index, result in enumerate(results) if result is None]
    cache.count(len(keys), len(missed))
    if missed:
        computed = _findings_of_sentences(analysis, scratch, missed, anatomy_set_name, uncertain_is_positive)
        for index, result in zip(missed, computed, strict=False):
            results[index] = result
            cache.put(keys[index], result)
    mentions = analysis.mentions
    labels_out = analysis.labels
    anatomy_abnormal = analysis.anatomy_abnormal
    for index, ((offset, _), result) in enumerate(zip(analysis.sentences, results, strict=False)):
        for start, end, labels, polarity in result.mentions:
            mentions.append((start + offset, end + offset, list(labels), index, polarity))
        for label_index in result.label_indices:
            labels_out[label_index] = 1
        for anatomy_index in result.abnormal_anatomies:
            anatomy_abnormal[anatomy_index] = True
    analysis.sentence_anatomies = [list(result.anatomies) for result in results]
    analysis.sentence_abnormal = [result.abnormal for result in results]
    if any(anatomy_abnormal) and keep_flagged_text():
        _keep_flagged_text(analysis, anatomy_set_name, uncertain_is_positive)


def _keep_flagged_text(analysis: ReportAnalysis, anatomy_set_name: str, uncertain_is_positive: bool) -> None:
    """An anatomy flagged abnormal keeps the sentences that flagged it when it would otherwise have no
    text at all: a label outside the text (``anatomy_clauses.yaml``) adds its sentences back then, so an
    abnormal flag never comes with an empty text ("Small hiatal hernia." alone stays the esophagus')."""
    present_anatomies = {index for names in analysis.sentence_anatomies for index in names}
    textless = {i for i, flag in enumerate(analysis.anatomy_abnormal) if flag and i not in present_anatomies}
    if not textless:
        return
    outside_text = labels_outside_text()
    _, label_anatomy = _label_anatomy(anatomy_set_name)
    present = {AFFIRMED, UNCERTAIN} if uncertain_is_positive else {AFFIRMED}
    for _, _, labels, sentence, polarity in analysis.mentions:
        if polarity not in present:
            continue
        for label in labels:
            anatomy = label_anatomy.get(label)
            if label in outside_text and anatomy in textless and anatomy not in analysis.sentence_anatomies[sentence]:
                analysis.sentence_anatomies[sentence] = sorted([*analysis.sentence_anatomies[sentence], anatomy])


def _findings_of_sentences(
    analysis: ReportAnalysis,
    scratch: ReportScratch,
    missed: list[int],
    anatomy_set_name: str,
    uncertain_is_positive: bool,
) -> list[SentenceFindings]:
    """:class:`SentenceFindings` of the ``missed`` sentences (every expression bounded by its sentence)."""
    _, label_anatomy = _label_anatomy(anatomy_set_name)
    outside_text = labels_outside_text()
    present = {AFFIRMED, UNCERTAIN} if uncertain_is_positive else {AFFIRMED}
    group_labels = _group_labels()
    lower_text = scratch.lower_text
    limits, view = _missed(analysis, scratch, missed)
    starts, ends = limits.starts, limits.ends
    cues_in_report = report_cues(lower_text, view, limits)
    mentions_of: list[list[tuple[int, int, tuple[str, ...], str]]] = [[] for _ in missed]
    grown: dict[int, set[int]] = {}  # slot -> anatomies, for sentences a finding extends
    abnormal = [False] * len(missed)
    label_indices: list[set[int]] = [set() for _ in missed]
    abnormal_anatomies: list[set[int]] = [set() for _ in missed]
    cues_of: dict[int, SentenceCues] = {}
    for match in finding_matches(lower_text, view, limits):
        match_start, match_end = match.span()
        slot = bisect.bisect_right(starts, match_start) - 1
        if slot < 0 or match_start >= ends[slot]:
            continue
        index = missed[slot]
        labels = group_labels[match.lastgroup]
        offset = starts[slot]
        cues = cues_of.get(slot)
        if cues is None:
            cues = cues_of[slot] = SentenceCues(scratch.keys[index], cues_in_report, offset)
        sentence = cues.sentence
        mention_start, mention_end = match_start - offset, match_end - offset
        mention_text = sentence[mention_start:mention_end]
        polarity, clause_start, clause_end = cues.classify_in_clause(mention_start, mention_end)
        if EFFUSION_BY_LOCATION in labels:
            labels = resolve_effusion(mention_text, sentence[clause_start:clause_end], labels)
        is_present = polarity in present
        if is_present:
            if LUNG_LABELS.intersection(labels):
                if names_only_other_organ(sentence[clause_start:clause_end]):
                    labels = tuple(label for label in labels if label not in LUNG_LABELS) or (GENERIC_ABNORMAL,)
            if may_need_location(mention_text):
                labels = labels_with_location(mention_text, location_text(sentence, clause_start), labels)
        mentions_of[slot].append((mention_start, mention_end, tuple(labels), polarity))
        if not is_present:
            continue
        base = analysis.sentence_anatomies[index]
        for label in labels:
            if label in LABEL_INDEX:
                label_indices[slot].add(LABEL_INDEX[label])
            if label in NOT_DISEASE_LABELS:
                continue
            abnormal[slot] = True
            if label in label_anatomy:
                target = {label_anatomy[label]}
            else:  # generic finding (or a label without anatomy in this set): the anatomies of its clause
                target = {
                    i
                    for position, indices in scratch.sentence_hits[index]
                    if clause_start <= position < clause_end
                    for i in indices
                }
                if not target:
                    target = set(grown[slot] if slot in grown else base)
            abnormal_anatomies[slot].update(target)
            if label in outside_text:
                continue  # its finding is beside the anatomy (anatomy_clauses.yaml): flag, not text
            found = grown.get(slot)
            if found is None:
                found = grown[slot] = set(base)
            found.update(target)
    return [
        SentenceFindings(
            tuple(mentions_of[slot]),
            tuple(sorted(grown[slot])) if slot in grown else tuple(analysis.sentence_anatomies[index]),
            abnormal[slot],
            tuple(sorted(label_indices[slot])),
            tuple(sorted(abnormal_anatomies[slot])),
        )
        for slot, index in enumerate(missed)
    ]


@functools.lru_cache(maxsize=1 << 14)  # pure; report templates repeat the same clauses
def names_only_other_organ(lower_clause: str) -> bool:
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
    order = sorted(
        range(len(analysis.sentences)),
        key=lambda i: (section_rank.get(analysis.sentence_sections[i], 0), analysis.sentences[i][0]),
    )
    per_anatomy: list[list[int]] = [[] for _ in range(n_anatomies + 1)]
    for index in order:
        for target in analysis.sentence_anatomies[index] or [n_anatomies]:
            per_anatomy[target].append(index)
    return per_anatomy


def anatomy_text_pieces(analysis: ReportAnalysis, n_anatomies: int) -> list[list[tuple[int, int, int]]]:
    """Per anatomy (plus a last slot for ``other``), the (start, end, sentence index) pieces of text it
    gets, Findings before Impression: a whole sentence, or only its own clauses of a sentence that
    names several anatomies (``analysis.sentence_pieces``)."""
    per_anatomy = anatomy_sentence_indices(analysis, n_anatomies)
    pieces_of = analysis.sentence_pieces
    out: list[list[tuple[int, int, int]]] = []
    for anatomy, indices in enumerate(per_anatomy):
        pieces: list[tuple[int, int, int]] = []
        for index in indices:
            own = [(a, b) for target, a, b in pieces_of[index] if target == anatomy] if pieces_of else []
            if own:
                pieces.extend((a, b, index) for a, b in own)
            else:
                start, end = analysis.sentences[index]
                pieces.append((start, end, index))
        out.append(pieces)
    return out


__all__ = [
    "ReportAnalysis",
    "anatomy_text_pieces",
    "analyze_text",
    "anatomy_sentence_indices",
    "OTHER_ANATOMY",
    "NEGATED",
]
