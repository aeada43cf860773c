"""Clause-level anatomy assignment inside one sentence.

The anatomy step finds the vocabulary hits of a sentence (spaCy token offsets, ``report_parsing.anatomy``);
this module decides which of them assign the sentence, and which part of the sentence each anatomy gets:

1. **Not a mention of the organ**: a hit inside a phrase naming an organ outside the anatomy set
   (``main bronchi``, ``pulmonary artery``, ``thyroid lobe``) or after a cause / comparison / place cue in
   its clause (``secondary to heart failure``, ``compared with the prior``, ``adjacent to the heart``,
   ``because the cardiac examination ...``) is dropped. A *weak* hit (a finding word of the vocabulary:
   ``nodule``, ``lobe``, ``hernia``, ``atheroma``) in a segment that names another organ (``a nodule in the
   thyroid``) or another anatomy by its organ word (``plaques in the coronary arteries``) is dropped too.
2. **Framing sentences** (``When examined in the lung parenchyma window;``, technique limits such as
   ``... could not be evaluated optimally because no contrast was given``) assign nothing; a leading
   ``As far as can be seen:`` is left out of every anatomy's text.
3. **Several anatomies (or an anatomy and another organ)**: the sentence is cut into segments at
   coordination and list separators (``,`` ``;`` ``(`` ``)`` ``and`` ``or`` ``as well as``). Each anatomy keeps its
   own segments and the segments that name no organ (the shared predicate: ``..., heart contour, size
   are normal``); segments of another anatomy or organ are left out, except the text before the first
   organ word of the first one (``No`` of ``No pleural or pericardial effusion``, ``Plaques in the`` of
   ``Plaques in the aorta and coronary arteries``) and a predicate after the organ word of the last one
   (``effusion was detected``).

Everything works on one lower-case sentence and is memoised with it (``report_parsing.analyze``).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

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

# vocabulary words that name a finding, not an organ: they assign a clause only when it names no other organ
WEAK_WORDS: frozenset[str] = frozenset(
    """
    nodule nodules nodular micronodule micronodules micronodular lobe lobes lobar segmental subsegmental apical basal
    opacity opacities infiltrate infiltration cavity cavitary granuloma reticular interstitial fibrosis fibrotic
    sequela sequelae septal interlobular aeration hernia hiatus aneurysm aneurysmal aneurysmatic atherosclerosis
    atherosclerotic atheromatous atheroma calcified calcific
    """.split()
)
_WORD = re.compile(r"[\w-]+")


def is_framing(lower_sentence: str) -> bool:
    """A lead-in or technique-limit sentence: it describes no organ's state."""
    if _LEAD_IN.match(lower_sentence):
        return True
    return bool(_TECHNIQUE_LIMIT.search(lower_sentence) and _CONTRAST.search(lower_sentence))


def _spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    return [match.span() for match in pattern.finditer(text)]


def _inside(position: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)


def _word_at(text: str, position: int) -> str:
    match = _WORD.match(text, position)
    return match.group(0) if match else ""


def assign_clauses(lower_sentence: str, hits: Sequence[Hit]) -> tuple[tuple[Hit, ...], tuple[Piece, ...]]:
    """(the hits that assign the sentence, the clause pieces of the anatomies that get only part of it).

    An anatomy of the kept hits without a piece gets the whole sentence; no kept hit: the sentence is
    ``other``."""
    if not hits:
        return (), ()
    text = lower_sentence
    if is_framing(text):
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
    if not kept:
        return (), ()
    lead = _LEAD_PHRASE.match(text)
    if not others and not lead and len({index for _, indices in kept for index in indices}) == 1:
        return tuple(kept), ()  # one anatomy, nothing else named: the whole sentence (most sentences)
    # the segments between separators (after a lead-in phrase), their anatomies, whether they name another organ
    bounds: list[tuple[int, int]] = []
    start = lead.end() if lead else 0
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
        if _word_at(text, position) in WEAK_WORDS and (segment_other[segment] or strong[segment] - set(indices)):
            continue  # "a nodule in the thyroid", "plaques in the coronary arteries": the other organ's finding
        final.append((position, indices))
        segment_anatomies[segment].update(indices)
        word = _word_at(text, position)
        if word not in WEAK_WORDS or not strong[segment] and not segment_other[segment]:
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
        return tuple(final), ((anatomies[0], lead.end(), len(text)),) if lead and lead.end() < len(text) else ()
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
            elif index == first and segment_first_hit[index] > start:
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
