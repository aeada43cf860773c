"""Section detection: Findings / Impression, from separate columns or inside one text.

Rules, in order:

1. explicit headers (``FINDINGS:``, ``IMPRESSION:``, ``CONCLUSION:``, ``RESULT(S):``, ``OPINION:``,
   ``SUMMARY:``; case-insensitive, at the start of a line or of the text, or after a sentence end);
2. CT-RATE style (Findings and Impression joined by a double quote): the first ``"`` that opens an
   item after a sentence end starts the Impression;
3. otherwise the whole text is Findings.

Text before the first header (clinical history, technique) is kept as section ``other``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FINDINGS = "findings"
IMPRESSION = "impression"
OTHER = "other"

_HEADER_NAMES = (
    r"findings|impressions?|conclusions?|results?|opinion|summary|clinical (?:history|information)|history|indication|"
    r"technique|comparison"
)
# checked only at each ':' (found with str.find): the header name must end right before it
_HEADER_BEFORE_COLON = re.compile(rf"(?:^|(?<=[\n.;])|(?<=[.;]\s))\s*(?P<name>{_HEADER_NAMES})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class _Header:
    name: str
    header_start: int
    body_start: int

    def start(self) -> int:
        return self.header_start

    def end(self) -> int:
        return self.body_start


def _headers(text: str) -> list[_Header]:
    found: list[_Header] = []
    colon = text.find(":")
    while colon != -1:
        window_start = max(0, colon - 40)
        match = _HEADER_BEFORE_COLON.search(text, window_start, colon)
        if match:
            body = colon + 1
            while body < len(text) and text[body] in " \t":
                body += 1
            found.append(_Header(match.group("name").lower(), match.start("name"), body))
        colon = text.find(":", colon + 1)
    return found


_HEADER_SECTION = {
    "findings": FINDINGS,
    "impression": IMPRESSION,
    "impressions": IMPRESSION,
    "conclusion": IMPRESSION,
    "conclusions": IMPRESSION,
    "result": IMPRESSION,
    "results": IMPRESSION,
    "opinion": IMPRESSION,
    "summary": IMPRESSION,
}
# CT-RATE: 'preserved. " Thoracic CT examination within normal limits'
# (the sentence end is matched, not looked behind for: a leading character class lets the engine skip
# ahead fast; group 1 is the quote with its white space, a section start is never right after [.!?])
_CTRATE_IMPRESSION = re.compile(r"[.!?](\s*[\"\u201c\u201d\u2022]\s*(?=\S))")


@dataclass(frozen=True)
class Section:
    name: str  # findings | impression | other
    start: int  # character offsets into the report text (header words excluded)
    end: int


def join_columns(findings: str, impression: str) -> str:
    """One report text from separate columns, with headers the section detector finds again."""
    parts = []
    if findings.strip():
        parts.append(f"Findings: {findings.strip()}")
    if impression.strip():
        parts.append(f"Impression: {impression.strip()}")
    return "\n".join(parts)


def detect_sections(text: str) -> list[Section]:
    """Sections of ``text`` in order, covering every non-header character."""
    headers = _headers(text)
    if headers and not any(_HEADER_SECTION.get(h.name) in (FINDINGS, IMPRESSION) for h in headers):
        headers = []  # only "Comparison:" / "Technique:" style fields: the rest reads as one CT-RATE text
    if headers:
        sections: list[Section] = []
        if text[: headers[0].start()].strip():
            sections.append(Section(OTHER, 0, headers[0].start()))
        for position, header in enumerate(headers):
            end = headers[position + 1].start() if position + 1 < len(headers) else len(text)
            name = _HEADER_SECTION.get(header.name, OTHER)
            if name == FINDINGS and not any(s.name == FINDINGS for s in sections):
                # CT-RATE style impression inside a findings block without its own header
                if not any(_HEADER_SECTION.get(h.name) == IMPRESSION for h in headers):
                    sections.extend(_split_ctrate(text, header.end(), end))
                    continue
            sections.append(Section(name, header.end(), end))
        return [s for s in sections if s.end > s.start]
    return _split_ctrate(text, 0, len(text))


def _split_ctrate(text: str, start: int, end: int) -> list[Section]:
    quote = _CTRATE_IMPRESSION.search(text, start, end)
    if quote is None:
        return [Section(FINDINGS, start, end)] if end > start else []
    return [Section(FINDINGS, start, quote.start(1)), Section(IMPRESSION, quote.start(1), end)]
