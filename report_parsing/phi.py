"""PHI scrubbing of report text: person names, dates, identifiers, phone numbers, e-mail / web
addresses and institutions are replaced by bracketed placeholders (``[NAME]``, ``[DATE]``, ``[ID]``,
``[PHONE]``, ``[EMAIL]``, ``[URL]``, ``[ADDRESS]``, ``[INSTITUTION]``).

Rules are conservative towards medicine: measurements (``3.5 mm``, ``22x14 mm``), vertebra names
(``T12``), series / section numbers (``series 5 section 379``) and rib numbers survive. Person names
are found through their cues (titles ``Dr.``/``Prof.``/``Mr.``..., ``Name:``/``Patient:``/
``Physician:`` fields, ``signed / dictated / reported / reviewed / approved by``), institutions through
their head nouns (``... Hospital``, ``... University``, ``... Medical Center``, ``... Clinic``),
signatures as a last line of 2-4 capitalised non-clinical words (or ``-- Name`` / ``Signature:``).
Identifiers: labelled (``MRN 123``), letters + >= 5 digits (``A99887766``), bare runs of >= 5 digits.
A name with no cue at all (``John Smith was scanned``, ``her son Tobias Smith``) is found after the rules by
:mod:`report_parsing.names` (spaCy's English NER model on the sentences a cheap filter marks as candidates);
callers that know the patient's name from the DICOM header can also pass it as ``known_values``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from report_parsing.names import CLINICAL_WORDS, find_names, replace_spans

_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
    r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_NAME_WORD = r"[A-Z\u00c0-\u00d6\u00d8-\u00de\u011e\u0130\u015e][^\W\d_]+(?:['\-][^\W\d_]+)?"
_TITLE = r"(?:Assoc\.?\s?Prof|Assist\.?\s?Prof|Uzm\.?\s?Dr|Op\.?\s?Dr|Prof|Dr|Doc|Mr|Mrs|Ms|Miss)"
_TITLES = rf"(?:\b{_TITLE}(?:\.\s*|\s+))+"  # a chain: "Prof. Dr. ", "Assist.Prof.Dr."
_NOT_TITLE = r"(?!(?:Dr|Prof|Doc|Mr|Mrs|Ms|Miss|Assoc|Assist|Uzm|Op)\b)"
_NAME = (
    rf"{_NOT_TITLE}{_NAME_WORD}(?:,\s*{_NOT_TITLE}{_NAME_WORD}(?=\s*(?:[.;\n]|$)))?"  # "SMITH, John" (last, first)
    rf"(?:\s+(?:[A-Z]\.?\s+)?{_NOT_TITLE}{_NAME_WORD}){{0,3}}"
)
_STREET = (
    r"(?:Street|St\.|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Court|Way|Place|Square|"
    r"Sokak|Sokagi|Sok\.|Caddesi|Cadde|Cad\.|Mahallesi|Mah\.|Bulvari)"
)
# (placeholder, compiled pattern, group to replace (0 = whole match))
_RULES: list[tuple[str, re.Pattern[str], int]] = [
    ("[EMAIL]", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), 0),
    ("[URL]", re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE), 0),
    # labelled fields: "MRN: 12345", "Patient ID 99-123", "Accession No: A123", "Protocol no. 5"
    (
        "[ID]",
        re.compile(
            r"\b(?:mrn|medical record(?: number| no\.?)?|patient id|patient no\.?|protocol(?: no\.?| number)?|accession(?: number| no\.?| #)?|acc(?:ession)?\.? ?no\.?|"
            r"id(?: number| no\.?)?|file(?: number| no\.?)|record(?: number| no\.?)|tc(?: kimlik)?(?: no\.?)?|ssn|national id)\b\s*[:#]?\s*((?=[A-Z\-/.]*\d)[A-Z0-9][A-Z0-9\-/.]*[A-Z0-9])",
            re.IGNORECASE,
        ),
        1,
    ),
    # record / accession numbers without a label: letters + >= 5 digits ("A99887766", "ACC-1234567")
    ("[ID]", re.compile(r"\b[A-Z]{1,4}-?\d{5,}\b"), 0),
    # addresses: "Address: ..." to the end of the line, "123 Main Street", "Ataturk Caddesi No: 5"
    ("[ADDRESS]", re.compile(r"(?i:\b(?:home |mailing |postal )?address\s*:\s*)([^\n]+)"), 1),
    (
        "[ADDRESS]",
        re.compile(
            rf"\b\d{{1,5}}[A-Za-z]?\s+(?:{_NAME_WORD}\s+){{1,3}}{_STREET}(?:\s*,\s*{_NAME_WORD}(?:\s+{_NAME_WORD})?)?"
        ),
        0,
    ),
    ("[ADDRESS]", re.compile(rf"\b(?:{_NAME_WORD}\s+){{1,3}}{_STREET}(?:\s+No\s*[:.]?\s*\d+[A-Za-z]?)"), 0),
    # dates: 2021-03-12, 12/03/2021, 12.03.2021, 12-03-21, "March 3, 2021", "3 March 2021", "March 2021"
    (
        "[DATE]",
        re.compile(
            rf"\b(?:\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}|\d{{1,2}}[-/.]\d{{1,2}}[-/.]\d{{2,4}}|{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}|"
            rf"\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{4}}|\d{{1,2}}[-/ ]{_MONTHS}[-/ ]\d{{2,4}}|{_MONTHS}\.?,?\s+\d{{4}})\b",
            re.IGNORECASE,
        ),
        0,
    ),
    # phone numbers: +90 212 555 12 34, (555) 123-4567, 555-123-4567
    (
        "[PHONE]",
        re.compile(
            r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\b\d{3,4}[\s.-])\d{3}[\s.-]?\d{2,4}(?:[\s.-]?\d{2})?\b"
        ),
        0,
    ),
    # titles + names
    ("[NAME]", re.compile(rf"{_TITLES}({_NAME})"), 1),
    (
        "[NAME]",
        re.compile(
            rf"({_NAME})\s*,?\s+(?:M\.?D\.?|Ph\.?D\.?|Radiology Specialist|Specialist Radiologist|Radiologist)\b"
        ),
        1,
    ),
    (
        "[NAME]",
        re.compile(
            rf"(?i:\b(?:patient(?:'s)? name|name|patient|physician|referring(?: physician| doctor)?|radiologist|attending|technologist|"
            rf"surname|first name|last name)\s*:\s*)({_NAME})"
        ),
        1,
    ),
    (
        "[NAME]",
        re.compile(
            rf"(?i:\b(?:reported|dictated|signed|electronically signed|reviewed|approved|read|verified|confirmed)(?:\s+by\s*:?|\s*:)\s*)"
            rf"(?:{_TITLES})?({_NAME})"
        ),
        1,
    ),
    (
        "[INSTITUTION]",
        re.compile(
            rf"\b(?:{_NAME_WORD}\s+){{1,5}}(?:University Hospital|Hospital|University|Medical Cent(?:er|re)|Clinic|Clinics|Health Cent(?:er|re)|"
            rf"Institute|Infirmary|Medical School|Faculty of Medicine|Training and Research Hospital)\b"
        ),
        0,
    ),
    ("[INSTITUTION]", re.compile(r"\b(?:Hospital|University|Clinic|Institute) of (?:[A-Z][a-zA-Z'\-]+\s?){1,4}"), 0),
    # signatures: "-- Jane Doe" / "Signature: ..." lines
    (
        "[NAME]",
        re.compile(
            rf"(?m)(?:^|(?<=\s))[ \t]*(?:[-\u2013\u2014~]{{2,3}}|(?i:signature\s*:))[ \t]*(?:{_TITLES})?({_NAME})[ \t]*$"
        ),
        1,
    ),
    # long bare digit runs (>= 5 digits, not a measurement) are identifiers
    ("[ID]", re.compile(r"\b\d{5,}\b(?!\s*(?:mm|cm|ml|cc|hu|mg|mgy|mgy\.cm|dlp|x)\b)", re.IGNORECASE), 0),
]

# a report's last non-empty line made only of 2-4 capitalised words is a signature ("Jane Doe")
_LAST_LINE_NAME = re.compile(rf"(?:^|\n)[ \t]*(?:{_TITLES})?({_NAME})[ \t]*\n?\s*\Z")


@functools.lru_cache(maxsize=1)
def _clinical_pattern() -> re.Pattern[str]:
    """Any surface form of the finding lexicon (a last line "Pleural Effusion" is a finding, not a name)."""
    from report_parsing.lexicon import FINDING_ENTRIES

    return re.compile(r"\b(?:" + "|".join(f"(?:{pattern})" for _, pattern in FINDING_ENTRIES) + r")\b", re.IGNORECASE)


def _scrub_signature(text: str, start: int = 0) -> tuple[str, int]:
    match = _LAST_LINE_NAME.search(text, max(0, start))
    if match is None:
        return text, 0
    name = match.group(1)
    words = re.findall(r"[^\W\d_]+", name)
    if (
        not 2 <= len(words) <= 4
        or any(word.lower() in CLINICAL_WORDS for word in words)
        or _clinical_pattern().search(name)
    ):
        return text, 0
    if match.start() == 0 and "\n" not in text.strip():  # the whole report: not a signature under text
        return text, 0
    start, end = match.span(1)
    return text[:start] + "[NAME]" + text[end:], 1


# Necessary conditions of the rules above (same order), each far cheaper than the rule's scan: a rule whose
# condition is false cannot match, so skipping it changes nothing (tests/report_parsing/test_phi_gates.py checks
# gated == ungated on the 800 CT-RATE reports and the PHI cases). ``lower`` is ``text.lower()``. The gates are
# computed once, before the rules: a placeholder ("[", capitals, "]") holds no literal a later condition
# looks for and removes no character one needs, so no substitution can open a closed condition.
_STREET_GATE = re.compile(
    r"Street|St\.|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Court|Way|Place|Square|Sok|Cad|Mah|Bulvari"
)
# each head noun as a whole word, as both institution rules need it: "Clinical" (CT-RATE: "Clinical information")
# opens neither
_INSTITUTION_GATE = re.compile(
    r"(?:Hospital|University|Medical Cent(?:er|re)|Clinics?|Health Cent(?:er|re)|Institute|Infirmary|Medical School|"
    r"Faculty of Medicine)\b"
)
_TITLE_GATE = re.compile(r"Dr|Prof|Doc|Mr|Ms|Miss")
_DEGREE_GATE = re.compile(r"MD|M\.D|Ph|Radiolog|Specialist")
_ID_KEYWORDS = (
    "mrn",
    "medical record",
    "patient id",
    "patient no",
    "protocol",
    "accession",
    "accessionno",
    "acc",
    "accno",
    "id",
    "file",
    "record",
    "tc",
    "ssn",
    "national id",
)
_MONTH_SET = frozenset(
    "jan january feb february mar march apr april may jun june jul july aug august sep sept september oct october "
    "nov november dec december".split()
)
_MONTH_PREFIXES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DIGIT_AFTER_MONTH = re.compile(r"\.?,?\s*\d")
_FIELD_WORDS = ("name", "patient", "physician", "doctor", "radiologist", "attending", "technologist")
_SIGNED_WORDS = ("reported", "dictated", "signed", "reviewed", "approved", "read", "verified", "confirmed")
_DASHES = re.compile(r"[-\u2013\u2014~]{2}")


def _has_word(lower: str, word: str) -> bool:
    """``word`` occurs in ``lower`` with no word character on either side (as ``\\bword\\b`` would)."""
    index = lower.find(word)
    while index >= 0:
        end = index + len(word)
        before = lower[index - 1] if index else " "
        after = lower[end] if end < len(lower) else " "
        if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
            return True
        index = lower.find(word, index + 1)
    return False


def _keyword_before(lower: str, mark: str, keywords: tuple[str, ...], spaced: bool = False) -> bool:
    """Some ``mark`` has one of ``keywords`` right before it, past whitespace (``(?:kw)\\s*:``; ``spaced``:
    at least one whitespace, ``(?:kw)\\s+by``), read at each occurrence of the mark, not by a scan."""
    index = lower.find(mark)
    while index >= 0:
        before = lower[:index].rstrip()
        if (not spaced or len(before) < index) and before.endswith(keywords):
            return True
        index = lower.find(mark, index + 1)
    return False


def _month_date_possible(lower: str) -> bool:
    """A month name (whole word) with a digit right after it (past ``.``/``,``/spaces) or right before it."""
    for prefix in _MONTH_PREFIXES:
        index = lower.find(prefix)
        while index >= 0:
            end = index + 3
            while end < len(lower) and lower[end].isalpha():
                end += 1
            if _word_start(lower, index) and lower[index:end] in _MONTH_SET and not _continues_word(lower, end):
                if _DIGIT_AFTER_MONTH.match(lower, end) or _digit_before(lower, index):
                    return True
            index = lower.find(prefix, index + 1)
    return False


def _continues_word(text: str, end: int) -> bool:
    return end < len(text) and (text[end].isalnum() or text[end] == "_")


def _digit_before(lower: str, index: int) -> bool:
    """``\\d(?:st|nd|rd|th)?[\\s\\-/]*`` ends at ``index`` (read backwards, not a scan of the text before)."""
    cursor = index - 1
    while cursor >= 0 and (lower[cursor].isspace() or lower[cursor] in "-/"):
        cursor -= 1
    if cursor >= 0 and lower[cursor].isdecimal():
        return True
    return cursor >= 2 and lower[cursor - 1 : cursor + 1] in ("st", "nd", "rd", "th") and lower[cursor - 2].isdecimal()


def _gates(text: str, lower: str) -> list[bool]:
    """Per rule of ``_RULES``: can it match ``text`` at all?"""
    runs = [match.span() for match in (_ASCII_DIGIT_RUN if text.isascii() else _DIGIT_RUN).finditer(text)]
    digit = bool(runs)
    five = any(end - start >= 5 for start, end in runs)
    street = digit and _STREET_GATE.search(text) is not None
    institution = _INSTITUTION_GATE.search(text) is not None
    return [
        "@" in text,
        "http" in lower or "www." in lower,
        digit and any(_has_word(lower, word) for word in _ID_KEYWORDS),
        five,
        "address" in lower,
        street,
        street,
        digit and (_numeric_date_possible(text, runs) or _month_date_possible(lower)),
        digit and _phone_possible(text, runs),
        _TITLE_GATE.search(text) is not None,
        _DEGREE_GATE.search(text) is not None,
        _keyword_before(lower, ":", _FIELD_WORDS),
        _keyword_before(lower, ":", _SIGNED_WORDS) or _keyword_before(lower, "by", _SIGNED_WORDS, spaced=True),
        institution,
        institution,
        _has_dashes(text) or "signature" in lower,
        five,
    ]


def _numeric_date_possible(text: str, runs: list[tuple[int, int]]) -> bool:
    """``\\d[-/.]\\d{1,2}[-/.]\\d`` somewhere, read off the digit runs: a run, a separator, a run of 1-2
    digits, a separator, a digit."""
    for (_, end), (start, end2) in zip(runs, runs[1:], strict=False):
        if start == end + 1 and text[end] in "-/." and end2 - start <= 2 and end2 + 1 < len(text):
            if text[end2] in "-/." and text[end2 + 1].isdecimal():
                return True
    return False


def _phone_possible(text: str, runs: list[tuple[int, int]]) -> bool:
    r"""``(?:\)[\s.-]?|\d[\s.-])\d{3}[\s.-]?\d{2}`` somewhere (every phone match holds it), read off the digit
    runs: a run of >= 3 digits after ``)`` (and a separator) or after a digit and a separator, then two more
    digits: the same run goes on (>= 5 digits), or it has 3 and a separator and a run of >= 2 follows."""
    for position, (start, end) in enumerate(runs):
        if end - start < 3 or start == 0 or end - start == 4:
            continue
        before = text[start - 1]
        if before != ")":
            if not (before.isspace() or before in ".-") or start < 2:
                continue
            if not (text[start - 2] == ")" or text[start - 2].isdecimal()):
                continue
        if end - start >= 5:
            return True
        following = runs[position + 1] if position + 1 < len(runs) else None
        if following and following[0] == end + 1 and following[1] - following[0] >= 2:
            if text[end].isspace() or text[end] in ".-":
                return True
    return False


def _has_dashes(text: str) -> bool:
    """Two of ``-``, en dash, em dash, ``~`` in a row."""
    if "--" in text or "~~" in text or "-~" in text or "~-" in text:
        return True
    return ("\u2013" in text or "\u2014" in text) and _DASHES.search(text) is not None


_DIGIT_RUN = re.compile(r"\d+")
_ASCII_DIGIT_RUN = re.compile(r"[0-9]+")  # \d of an ASCII text, found faster
_DATE_RULE = 7  # index in _RULES


def _word_start(text: str, index: int) -> bool:
    return index == 0 or not (text[index - 1].isalnum() or text[index - 1] == "_")


def _date_starts(text: str, lower: str) -> list[int] | None:  # noqa: D401
    """Every position a date can start at (a digit or a month name at a word start), sorted; None when
    ``lower`` does not align with ``text`` (a letter whose lower case is longer)."""
    if len(lower) != len(text):
        return None
    runs = (_ASCII_DIGIT_RUN if text.isascii() else _DIGIT_RUN).finditer(text)
    starts = [match.start() for match in runs if _word_start(text, match.start())]
    for prefix in _MONTH_PREFIXES:
        index = lower.find(prefix)
        while index >= 0:
            if _word_start(lower, index):
                starts.append(index)
            index = lower.find(prefix, index + 1)
    return sorted(starts)


def _sub_at(pattern: re.Pattern[str], placeholder: str, text: str, starts: list[int]) -> tuple[str, int]:
    """``pattern.subn(placeholder, text)`` when every match starts at one of ``starts`` (a superset):
    ``match`` at those positions only, left to right, as the scan would find them (the pattern never
    matches empty)."""
    pieces: list[str] = []
    cursor = replaced = 0
    for position in starts:
        if position < cursor:
            continue
        match = pattern.match(text, position)
        if match is None:
            continue
        pieces.append(text[cursor : match.start()])
        pieces.append(placeholder)
        cursor, replaced = match.end(), replaced + 1
    if not replaced:
        return text, 0
    pieces.append(text[cursor:])
    return "".join(pieces), replaced


_SIGNATURE_TAIL = 500  # a last-line signature (2-4 words + titles) is searched in the text's last characters


@dataclass
class ScrubResult:
    text: str
    counts: Counter = field(default_factory=Counter)  # placeholder -> replacements

    @property
    def replaced(self) -> int:
        return sum(self.counts.values())


def _scrub_rules(text: str, known_values: Iterable[str] = (), gated: bool = True) -> ScrubResult:
    """The rules (known values, the patterns, the last-line signature) over ``text``; ``gated``: skip the
    rules whose necessary condition fails (same result, see ``_gates``)."""
    counts: Counter = Counter()
    for value in sorted({v.strip() for v in known_values if v and len(v.strip()) >= 3}, key=len, reverse=True):
        pattern = re.compile(
            r"\b" + r"[\s^,]+".join(map(re.escape, re.split(r"[\s^,]+", value))) + r"\b", re.IGNORECASE
        )
        text, replaced = pattern.subn("[NAME]", text)
        counts["[NAME]"] += replaced
    lower = text.lower()
    gates = _gates(text, lower) if gated else [True] * len(_RULES)
    for index, ((placeholder, pattern, group), gate) in enumerate(zip(_RULES, gates, strict=True)):
        if not gate:
            continue
        starts = _date_starts(text, text.lower()) if gated and index == _DATE_RULE else None
        if starts is not None:  # the costliest rule: tried only where a date can start
            text, replaced = _sub_at(pattern, placeholder, text, starts)
        elif group == 0:
            text, replaced = pattern.subn(placeholder, text)
        else:
            replaced = 0

            def swap(match: re.Match[str], placeholder: str = placeholder, group: int = group) -> str:
                nonlocal replaced
                replaced += 1
                start, end = match.span(group)
                whole_start = match.start()
                return match.group(0)[: start - whole_start] + placeholder + match.group(0)[end - whole_start :]

            text = pattern.sub(swap, text)
        counts[placeholder] += replaced
    text, replaced = _scrub_signature(text, len(text) - _SIGNATURE_TAIL if gated else 0)
    counts["[NAME]"] += replaced
    return ScrubResult(text, counts)


def scrub_phi(text: str, known_values: Iterable[str] = (), names: bool = True) -> ScrubResult:
    """``text`` with PHI replaced by placeholders, and how many of each kind were replaced. ``names``: also
    the person names no rule has a cue for (report_parsing.names: spaCy's NER on candidate sentences)."""
    return scrub_phi_many([text], known_values, names=names)[0]


def scrub_phi_many(texts: Sequence[str], known_values: Iterable[str] = (), names: bool = True) -> list[ScrubResult]:
    """:func:`scrub_phi` of each text; the name detector's model runs once over all candidate sentences."""
    known = list(known_values)
    results = [_scrub_rules(text, known) for text in texts]
    if names:
        for result, spans in zip(results, find_names([result.text for result in results]), strict=True):
            result.text, replaced = replace_spans(result.text, spans)
            result.counts["[NAME]"] += replaced
    for result in results:
        result.counts = +result.counts
    return results
