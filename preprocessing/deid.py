"""De-identification for everything `fvlm convert` writes: pseudonyms and free-text scrubbing.

Identifiers become keyed hashes (:func:`core.privacy.pseudonym`). Free text that leaves the stage
(series descriptions, quarantine reasons, warnings) goes through :func:`scrub_text`: the study's own
PHI values (patient name parts, IDs, accession number, institution, dates, the study key) are
removed, then anything date-like or any long digit run / UID, then characters outside a small
whitelist. NIfTI headers carry a fixed description only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from core.privacy import pseudonym

NIFTI_DESCRIPTION = b"fvlm convert: int16 HU, RAS"
_DATE = re.compile(
    r"(?<![\d.])(19|20)\d{2}[-./]?(0[1-9]|1[0-2])[-./]?(0[1-9]|[12]\d|3[01])(?![\d.])"
    r"|(?<![\d.])\d{1,2}([-/])\d{1,2}\4(\d{4}|\d{2})(?![\d.])"
    r"|(?<![\d.])\d{1,2}\.\d{1,2}\.(19|20)\d{2}(?![\d.])"
)
_STANDARD_UID = re.compile(r"\b1\.2\.840\.10008(\.\d+)+\b")
_UID_OR_LONG_NUMBER = re.compile(r"\b(?!1\.2\.840\.10008\.)\d+(\.\d+){3,}\b|(?<![\d.])\d{6,}")
_ALLOWED = re.compile(r"[^A-Za-z0-9 .,:;_+/()=<>\[\]#%'\\\-]")
MAX_TEXT = 400


def study_pseudonym(study_key: str, salt: str, length: int = 16) -> str:
    return pseudonym(study_key, salt, kind="study", length=length)


def patient_pseudonym(patient_key: str | None, salt: str, length: int = 16) -> str | None:
    return pseudonym(patient_key, salt, kind="patient", length=length) if patient_key else None


OWN_PATIENT_WARNING = (
    "no PatientID: the study is its own patient (patient_id derived from the study key; docs/convert.md, Identity)"
)


def study_patient_pseudonym(patient_key: str | None, study_key: str, salt: str, length: int = 16) -> tuple[str, bool]:
    """The study's patient pseudonym and whether it is the fallback: without a PatientID (anonymised
    exports blank it) the study is its own patient, ``pa_`` of the study key (in its own namespace, so it
    never equals a real PatientID's pseudonym). Decided once, here at convert; later stages take it as is."""
    if patient_key and patient_key.strip():
        return pseudonym(patient_key, salt, kind="patient", length=length), False
    return pseudonym(f"own-study:{study_key}", salt, kind="patient", length=length), True


def series_pseudonym(series_uid: str, salt: str, length: int = 16) -> str:
    return pseudonym(series_uid, salt, kind="series", length=length)


def scrub_text(text: str, phi_terms: Iterable[str] = (), *, max_length: int = MAX_TEXT) -> str:
    """``text`` without the given PHI values, dates, UIDs / long numbers and unusual characters."""
    if not text:
        return ""
    cleaned = str(text)
    for term in sorted({t.strip() for t in phi_terms if t and len(t.strip()) >= 2}, key=len, reverse=True):
        cleaned = re.sub(re.escape(term), "[x]", cleaned, flags=re.IGNORECASE)
        if "^" in term:
            cleaned = re.sub(re.escape(term.replace("^", " ")), "[x]", cleaned, flags=re.IGNORECASE)
    standard_uids: list[str] = []

    def protect(match: re.Match[str]) -> str:
        standard_uids.append(match.group(0))
        return f"\x00{len(standard_uids) - 1}\x00"

    cleaned = _STANDARD_UID.sub(protect, cleaned)
    cleaned = _DATE.sub("[date]", cleaned)
    cleaned = _UID_OR_LONG_NUMBER.sub("[n]", cleaned)
    cleaned = re.sub("\x00(\\d+)\x00", lambda m: standard_uids[int(m.group(1))], cleaned)
    cleaned = _ALLOWED.sub("", cleaned)
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    return cleaned[:max_length]
