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
A name written with no cue at all (``John Smith saw ...``) is NOT detected (no NER model offline):
callers that know the patient's name from the DICOM header can pass it as ``known_values``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

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
# clinical words that never start a signature line (a last line "Normal Study" is not a name)
_CLINICAL_WORDS = frozenset(
    "normal abnormal study findings finding impression conclusion result results report no none negative positive "
    "unremarkable stable chest abdomen pelvis thorax lung lungs heart liver ct scan contrast axial images image series "
    "end page comment comments recommendation recommendations note notes follow up right left bilateral upper lower middle "
    "lobe lobes pleural effusion nodule nodules mass masses lesion lesions cyst cysts fracture opacity opacities "
    "consolidation atelectasis emphysema pneumonia pneumothorax hernia calcification calcifications lymphadenopathy "
    "thickening mild moderate severe small large acute chronic changes change suspicious benign malignant "
    "degenerative postoperative status technique comparison history indication clinical information".split()
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


def _scrub_signature(text: str) -> tuple[str, int]:
    match = _LAST_LINE_NAME.search(text)
    if match is None:
        return text, 0
    name = match.group(1)
    words = re.findall(r"[^\W\d_]+", name)
    if (
        not 2 <= len(words) <= 4
        or any(word.lower() in _CLINICAL_WORDS for word in words)
        or _clinical_pattern().search(name)
    ):
        return text, 0
    if match.start() == 0 and "\n" not in text.strip():  # the whole report: not a signature under text
        return text, 0
    start, end = match.span(1)
    return text[:start] + "[NAME]" + text[end:], 1


@dataclass
class ScrubResult:
    text: str
    counts: Counter = field(default_factory=Counter)  # placeholder -> replacements

    @property
    def replaced(self) -> int:
        return sum(self.counts.values())


def scrub_phi(text: str, known_values: Iterable[str] = ()) -> ScrubResult:
    """``text`` with PHI replaced by placeholders, and how many of each kind were replaced."""
    counts: Counter = Counter()
    for value in sorted({v.strip() for v in known_values if v and len(v.strip()) >= 3}, key=len, reverse=True):
        pattern = re.compile(
            r"\b" + r"[\s^,]+".join(map(re.escape, re.split(r"[\s^,]+", value))) + r"\b", re.IGNORECASE
        )
        text, replaced = pattern.subn("[NAME]", text)
        counts["[NAME]"] += replaced
    for placeholder, pattern, group in _RULES:
        if group == 0:
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
    text, replaced = _scrub_signature(text)
    counts["[NAME]"] += replaced
    return ScrubResult(text, +counts)
