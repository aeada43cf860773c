"""Clause-level anatomy assignment inside one sentence.

The anatomy step finds the vocabulary hits of a sentence (spaCy token offsets, ``report_parsing.anatomy``);
this module decides which of them assign the sentence, and which part of the sentence each anatomy gets:

1. **Not a mention of the organ**: a hit inside a phrase naming an organ outside the anatomy set
   (``main bronchi``, ``pulmonary artery``, ``thyroid lobe``) or after a cause / comparison / place cue in
   its clause (``secondary to heart failure``, ``compared with the prior``, ``adjacent to the heart``,
   ``because the cardiac examination ...``) is dropped. A *weak* hit (a finding word of the vocabulary:
   ``nodule``, ``lobe``, ``hernia``, ``atheroma``, ``infectious``) in a segment that names another organ
   (``a nodule in the thyroid``), another anatomy by its organ word, or a dropped dependent word
   (``plaques in the coronary arteries``) is dropped too.
2. **Dependent words** (data: ``anatomy_clauses.yaml``, ``dependent_words``): ``pleural``, ``coronary``,
   ``hiatal hernia`` name an organ beside the anatomy (pleural space, coronary arteries, the herniated
   stomach); they assign their anatomy only when another word of it assigns the same sentence.
3. **Companions** (``anatomy_clauses.yaml``, ``companions``): organs outside the set that join an
   anatomy's clauses in a sentence the anatomy's own organ words assign (the great vessels with the
   aorta: ``Dilatation of the ascending aorta and pulmonary trunk.`` is the aorta's, whole).
4. **Framing** (``When examined in the lung parenchyma window;``, technique limits such as ``... could
   not be evaluated optimally because no contrast was given``) assigns nothing; the framing part of a
   sentence that goes on with a finding (``..., and the heart contour and size are normal``) and a
   leading ``As far as can be seen:`` are left out of every anatomy's text.
5. **Several anatomies (or an anatomy and another organ)**: the sentence is cut into segments at
   coordination and list separators (``,`` ``;`` ``(`` ``)`` ``and`` ``or`` ``as well as``). Each anatomy keeps its
   own segments and the segments that name no organ (the shared predicate: ``..., heart contour, size
   are normal``); segments of another anatomy or organ are left out, except the text before the first
   organ word of the first one (``No`` of ``No pericardial or mediastinal fluid``) for a member without
   a head of its own, and a predicate after the organ word of the last one (``effusion was detected``).

Everything works on one lower-case sentence and is memoised with it (``report_parsing.analyze``).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Hit = tuple[int, tuple[int, ...]]  # (offset in the sentence, anatomy indices)
Piece = tuple[int, int, int]  # (anatomy index, start, end) relative to the sentence

# organs outside every anatomy's own words: a hit inside one of these phrases is not that anatomy
_OTHER_ORGAN = re.compile(
    r"\b(?:aortic(?= valves?\b)|aort\w*[\s-]?pulmonary(?: window)?|"
    r"trachea\w*|(?:both |right |left )?main(?:[\s-]?stem)? bronch\w*|carina|"
    r"pulmonary (?:trunk|arter\w*|vein\w*|vascular\w*|vessels?|embol\w*)|"
    r"mediastin\w*(?: main)?(?: major)?(?: vascular structures?)?|vascular structures?|vena cava|"
    r"thyroid(?: gland)?(?: lobes?)?|(?:right |left )?lobes? of the (?:thyroid|liver)|(?:liver|hepatic|thyroid) lobes?|"
    r"breasts?|axilla\w*|liver|hepat\w*|kidneys?|renal|adrenal\w*|spleen|splenic|pancrea\w*|gallbladder|bile\w*|"
    r"stomach|gastric|intestin\w*|bowel|colon|abdom\w*(?![\w\s-]{0,20}aort)|bones?|osseous|vertebra\w*|spin\w*|ribs?|costal|sternum|"
    r"scapula\w*|clavic\w*|lymph(?:\s*nodes?)?|lymphadenopath\w*|hil(?:ar|um|us)|subcutaneous|chest wall|skin|"
    r"muscles?|thymus|thymic|nasopharyn\w*|neck|schmorl|(?:pericardial |paracardiac |epicardial )?fat pads?)\b"
)
# cue words after which, in the same clause, an organ word is a cause, a comparison or a place, not the
# organ the clause describes
_REFERENCE_CUE = re.compile(
    r"\b(?:secondary to|due to|because(?: of)?|caused by|compared (?:with|to)|in comparison (?:with|to)|than|"
    r"adjacent to|close to|near(?:by)?|next to|neighbou?ring|"
    r"(?:posterior|anterior|lateral|medial|superior|inferior) to|"
    r"together with|described in|extend\w* (?:to|into|from)|tip of|ends? in|terminat\w* in|"
    r"(?:in )?the (?:previous|prior)|previous|prior)\b"
)
# separators of coordinated / listed segments (the separator itself belongs to no segment)
_SEPARATOR = re.compile(r"[,;()]|\b(?:and/or|and|or|as well as)\b")
_CLAUSE_END = re.compile(r"[,;()]")
# a predicate: what makes the text after the last organ word a shared statement, not part of its noun phrase
_PREDICATE = re.compile(
    r"\b(?:is|are|was|were|be|been|has|have|had|observed|detected|seen|noted|present|normal|natural|"
    r"appear\w*|measur\w*|increas\w*|decreas\w*)\b"
)
# a lead-in phrase at the start of a sentence: no anatomy's text
_LEAD_PHRASE = re.compile(
    r"^(?:as far as (?:it )?(?:can be |could be )?(?:observed|seen|evaluated)(?: within the sections?)?|"
    r"when examined in the (?:lung )?parenchyma window)\s*[:;,]\s*"
)
# what makes the text before a list worth sharing with every member (a negation, a predicate, a finding),
# unlike a bare noun ("Calibration of vascular structures, heart contour ...")
_HEAD_CONTENT = re.compile(
    r"\b(?:no|not|without|there|is|are|was|were|observed|detected|seen|noted|present)\b|"
    r"calcif|plaque|atherom|atheroscl|effusion|thicken|nodul|lesion|mass|dilat|enlarg|increas"
)
# an organ word's own place modifiers ("the left lung", "the thoracic aorta"): part of the member, not a head
_MODIFIER = re.compile(
    r"\b(?:left|right|bilateral|upper|middle|lower|thoracic|ascending|descending|abdominal|main|major|distal|proximal)\b\s*"
)
_FUNCTION_WORD = re.compile(r"\b(?:in|on|of|at|within|along|to|into|the|both|its|their|a|an)\b\s*")
# framing sentences: a lead-in (ends with ';' or ':') or a technique limit
_LEAD_IN = re.compile(
    r"^(?:when|while|in (?:the )?(?:evaluation|examination)|as far as|on (?:the )?(?:lung|parenchyma)|"
    r"in (?:the )?(?:lung|parenchyma))\b[^;:]{0,80}[;:]$"
)
_TECHNIQUE_LIMIT = re.compile(
    r"(?:not|(?:could|can) ?not) (?:be )?(?:evaluated|assessed|examined) (?:optimally|adequately)"
    r"|(?:optimal|optimally) (?:evaluation|assessment)"
)
_CONTRAST = re.compile(r"\bcontrast\b")
# where a technique-limit clause ends when the sentence goes on with a finding ("..., and the heart ...")
_LIMIT_END = re.compile(r",? and (?=the |there |its |heart|cardiac|calibration)|;")
# a fragment left by "... heart examination IV. (contrast was not given ...)": the technique limit's start
_LIMIT_FRAGMENT = re.compile(r"\b(?:examination|evaluation)s? i\.?v\.?$")

# vocabulary words that name a finding, not an organ: they assign a clause only when it names no other organ
WEAK_WORDS: frozenset[str] = frozenset(
    """
    nodule nodules nodular micronodule micronodules micronodular lobe lobes lobar segmental subsegmental apical basal
    opacity opacities infiltrate infiltration cavity cavitary granuloma reticular interstitial fibrosis fibrotic
    sequela sequelae septal interlobular aeration hernia hiatus aneurysm aneurysmal aneurysmatic atherosclerosis
    atherosclerotic atheromatous atheroma calcified calcific infection infections infectious infective viral covid
    fungal
    """.split()
)
_WORD = re.compile(r"[\w-]+")
_BARE_WORD = re.compile(r"\w+")


def is_framing(lower_sentence: str) -> bool:
    """A lead-in or technique-limit sentence: it describes no organ's state."""
    return framing_end(lower_sentence) >= len(lower_sentence)


def framing_end(lower_sentence: str) -> int:
    """End of the sentence's framing part (a lead-in, a technique limit: no anatomy's text): 0 when
    there is none, ``len(lower_sentence)`` when the whole sentence frames."""
    text = lower_sentence
    if _LEAD_IN.match(text):
        return len(text)
    tail = text[-6:].rstrip()
    if tail.endswith(("iv.", "iv", "i.v.", "i.v")) and _LIMIT_FRAGMENT.search(text.rstrip()):
        return len(text)
    limit = _TECHNIQUE_LIMIT.search(text)
    if limit:
        contrast = _CONTRAST.search(text)
        if contrast:
            after = _LIMIT_END.search(text, max(limit.end(), contrast.end()))
            return after.end() if after else len(text)
    lead = _LEAD_PHRASE.match(text)
    return lead.end() if lead else 0


def _spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    return [match.span() for match in pattern.finditer(text)]


def _inside(position: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)


def _word_at(text: str, position: int) -> str:
    match = _WORD.match(text, position)
    return match.group(0) if match else ""


@dataclass(frozen=True)
class ClauseRules:
    """The data-table rules of an anatomy set (``anatomy_clauses.yaml``, resolved to anatomy indices)."""

    # word -> the anatomies it does not assign by itself
    dependent: Mapping[str, frozenset[int]] = field(default_factory=dict)
    # any of the dependent words (a sentence without one skips the check)
    dependent_pattern: re.Pattern[str] | None = None
    # (anatomy, pattern): organs that join the anatomy's clauses in a sentence its own words assign
    companions: tuple[tuple[int, re.Pattern[str]], ...] = ()
    companion_anatomies: frozenset[int] = frozenset()  # the anatomies of ``companions``


NO_RULES = ClauseRules()


def assign_clauses(
    lower_sentence: str, hits: Sequence[Hit], rules: ClauseRules = NO_RULES
) -> tuple[tuple[Hit, ...], tuple[Piece, ...]]:
    """(the hits that assign the sentence, the clause pieces of the anatomies that get only part of it).

    An anatomy of the kept hits without a piece gets the whole sentence; no kept hit: the sentence is
    ``other``."""
    if not hits:
        return (), ()
    text = lower_sentence
    lead_end = framing_end(text)
    if lead_end >= len(text):
        return (), ()
    if lead_end:
        hits = [hit for hit in hits if hit[0] >= lead_end]
        if not hits:
            return (), ()
    others = _spans(_OTHER_ORGAN, text)
    cues = [match.end() for match in _REFERENCE_CUE.finditer(text)]
    clause_ends = [match.start() for match in _CLAUSE_END.finditer(text)] if cues else []
    kept: list[Hit] = []
    for position, indices in hits:
        if others and _inside(position, others):
            continue
        if cues and any(cue <= position and not any(cue <= end < position for end in clause_ends) for cue in cues):
            continue  # a cause / comparison / place cue earlier in the same clause
        kept.append((position, indices))
    dropped: list[int] = []  # dependent words no other word supports: they still block finding words
    if rules.dependent_pattern is not None and kept and rules.dependent_pattern.search(text):
        kept, dropped = _supported(text, kept, rules.dependent)
    if not kept:
        return (), ()
    if rules.companions and any(not rules.companion_anatomies.isdisjoint(indices) for _, indices in kept):
        kept, others, dropped = _with_companions(text, kept, others, dropped, rules.companions)
    if not others and not dropped and not lead_end and len({index for _, indices in kept for index in indices}) == 1:
        return tuple(kept), ()  # one anatomy, nothing else named: the whole sentence (most sentences)
    # the segments between separators (after a lead-in phrase), their anatomies, whether they name another organ
    bounds: list[tuple[int, int]] = []
    start = lead_end
    for match in _SEPARATOR.finditer(text, start):
        end = match.start()
        while end > start and text[end - 1] == " ":
            end -= 1
        if end > start:
            bounds.append((start, end))
        start = match.end()
        while start < len(text) and text[start] == " ":
            start += 1
    if start < len(text):
        bounds.append((start, len(text)))
    if not bounds:
        return (), ()
    bound_starts = [a for a, _ in bounds]
    segment_anatomies: list[set[int]] = [set() for _ in bounds]
    segment_first_hit: list[int] = [-1] * len(bounds)
    segment_last_end: list[int] = [-1] * len(bounds)  # end of the last organ word (own or other)
    segment_other = [any(a < end and start < b for a, b in others) for start, end in bounds]
    # a segment naming another organ, or a dependent word's organ ("plaques in the coronary arteries")
    blocked = [
        other or any(start <= p < end for p in dropped)
        for other, (start, end) in zip(segment_other, bounds, strict=True)
    ]
    strong: list[set[int]] = [set() for _ in bounds]  # anatomies named by an organ word (not a finding word)
    for position, indices in kept:
        segment = _segment_of(bounds, bound_starts, position)
        if segment >= 0 and _word_at(text, position) not in WEAK_WORDS:
            strong[segment].update(indices)
    final: list[Hit] = []
    for position, indices in kept:
        segment = _segment_of(bounds, bound_starts, position)
        if segment < 0:
            continue
        if _word_at(text, position) in WEAK_WORDS and (blocked[segment] or strong[segment] - set(indices)):
            continue  # "a nodule in the thyroid", "plaques in the coronary arteries": the other organ's finding
        final.append((position, indices))
        segment_anatomies[segment].update(indices)
        word = _word_at(text, position)
        if word not in WEAK_WORDS or not strong[segment] and not blocked[segment]:
            _widen(segment_first_hit, segment_last_end, segment, position, position + len(word))
        else:
            segment_last_end[segment] = max(segment_last_end[segment], position + len(word))
    for start, end in others:
        segment = _segment_of(bounds, bound_starts, start)
        if segment >= 0:
            _widen(segment_first_hit, segment_last_end, segment, start, end)
    anatomies = sorted({index for _, indices in final for index in indices})
    if not anatomies:
        return (), ()
    if len(anatomies) == 1 and not any(segment_other):
        return tuple(final), ((anatomies[0], lead_end, len(text)),) if lead_end else ()
    organ_segments = [i for i, names in enumerate(segment_anatomies) if names or segment_other[i]]
    first, last = organ_segments[0], organ_segments[-1]
    pieces: list[Piece] = []
    for anatomy in anatomies:
        # a clause with its own predicate ("the heart is enlarged") does not take the list's
        own_predicate = any(
            anatomy in names and _PREDICATE.search(text, *bounds[index])
            for index, names in enumerate(segment_anatomies)
        )
        ranges: list[tuple[int, int]] = []
        for index, (start, end) in enumerate(bounds):
            names = segment_anatomies[index]
            if anatomy in names or (not names and not segment_other[index]):
                ranges.append((start, end))
            elif (
                index == first and segment_first_hit[index] > start and not _has_own_head(text, bounds, final, anatomy)
            ):
                head_end = _head_end(text, start, segment_first_hit[index])
                if _HEAD_CONTENT.search(text, start, head_end):
                    ranges.append((start, head_end))  # the shared head of the list
            elif index == last and index != first and segment_last_end[index] >= 0 and not own_predicate:
                after = segment_last_end[index]
                if _PREDICATE.search(text, after, end):
                    ranges.append((after, end))  # the shared predicate of the list
        merged = _merged(text, ranges)
        if merged == [(0, len(text))]:
            continue  # the whole sentence
        pieces.extend((anatomy, start, end) for start, end in merged)
    return tuple(final), tuple(pieces)


def _supported(text: str, hits: list[Hit], dependent: Mapping[str, frozenset[int]]) -> tuple[list[Hit], list[int]]:
    """(the hits without their dependent anatomies that no other word of the sentence assigns, the
    positions of the hits dropped so)."""
    marked = []
    assigned: set[int] = set()
    for position, indices in hits:
        match = _BARE_WORD.match(text, position)
        weak = dependent.get(match.group(0), frozenset()) if match else frozenset()
        marked.append(weak)
        assigned.update(index for index in indices if index not in weak)
    out: list[Hit] = []
    dropped: list[int] = []
    for (position, indices), weak in zip(hits, marked, strict=True):
        if weak and not weak <= assigned:
            indices = tuple(index for index in indices if index not in weak or index in assigned)
            if not indices:
                dropped.append(position)
                continue
        out.append((position, indices))
    return out, dropped


def _with_companions(
    text: str,
    hits: list[Hit],
    others: list[tuple[int, int]],
    dropped: list[int],
    companions: tuple[tuple[int, re.Pattern[str]], ...],
) -> tuple[list[Hit], list[tuple[int, int]], list[int]]:
    """Companion spans of the sentence's anatomies become hits of that anatomy (replacing the hits, the
    other-organ spans and the dropped dependent words they overlap)."""
    # assigned by an organ word (not a finding word: "atheroma plaques in the coronary arteries" is no aorta's)
    assigned = {index for position, indices in hits if _word_at(text, position) not in WEAK_WORDS for index in indices}
    spans: list[tuple[int, int, int]] = []
    for anatomy, pattern in companions:
        if anatomy in assigned:
            spans.extend((start, end, anatomy) for start, end in _spans(pattern, text))
    if not spans:
        return hits, others, dropped
    kept = [hit for hit in hits if not any(start <= hit[0] < end for start, end, _ in spans)]
    kept.extend((start, (anatomy,)) for start, _, anatomy in spans)
    kept.sort()
    others = [(a, b) for a, b in others if not any(a < end and start < b for start, end, _ in spans)]
    dropped = [p for p in dropped if not any(start <= p < end for start, end, _ in spans)]
    return kept, others, dropped


def _has_own_head(text: str, bounds: list[tuple[int, int]], hits: list[Hit], anatomy: int) -> bool:
    """The anatomy's first word stands after words of its own segment ("calcified plaques in the aorta" of
    "Increased heart size, calcified plaques in the aorta"): it is a finding of its own, not a bare member
    of a list sharing the first member's head ("pericardial" of "No pleural or pericardial effusion")."""
    position = min((p for p, indices in hits if anatomy in indices), default=-1)
    if position < 0:
        return False
    start = next((a for a, b in bounds if a <= position < b), position)
    return bool(_MODIFIER.sub("", _FUNCTION_WORD.sub("", text[start:position])).strip(" ,;-"))


def _head_end(text: str, start: int, first_organ: int) -> int:
    """End of the head before a list: the organ word's own modifiers (``the thoracic`` of ``the thoracic
    aorta``) stay with it; the head ends after the last preposition / determiner."""
    last = None
    for match in _FUNCTION_WORD.finditer(text, start, first_organ):
        last = match
    return last.end() if last else first_organ


def _segment_of(bounds: list[tuple[int, int]], starts: list[int], position: int) -> int:
    index = bisect.bisect_right(starts, position) - 1
    return index if index >= 0 and position < bounds[index][1] else -1


def _widen(firsts: list[int], last_ends: list[int], segment: int, start: int, end: int) -> None:
    if firsts[segment] < 0 or start < firsts[segment]:
        firsts[segment] = start
    last_ends[segment] = max(last_ends[segment], end)


def _merged(text: str, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent ranges (only a separator between them) joined into one, trimmed of white space."""
    merged: list[list[int]] = []
    for start, end in ranges:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end <= start:
            continue
        if merged and not text[merged[-1][1] : start].strip(" ,;").replace("and", "").replace("or", "").strip():
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]
