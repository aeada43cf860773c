"""Sentence segmentation and section detection on radiology text."""

from __future__ import annotations

from report_parsing.sections import FINDINGS, IMPRESSION, OTHER, detect_sections, join_columns
from report_parsing.sentences import sentence_spans


def _sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]


def test_measurements_vertebrae_and_lists_do_not_split() -> None:
    text = (
        "1. A 3.5 mm nodule in the right lobe; 22x14.5 mm mass. 2. Fracture of T12. "
        "Pericardial effusion-thickening was not observed."
    )
    assert _sentences(text) == [
        "A 3.5 mm nodule in the right lobe;",
        "22x14.5 mm mass.",
        "Fracture of T12.",
        "Pericardial effusion-thickening was not observed.",
    ]


def test_abbreviations_do_not_split() -> None:
    assert _sentences("Compared with Dr. Smith's study e.g. the prior one vs. today. Stable.") == [
        "Compared with Dr. Smith's study e.g. the prior one vs. today.",
        "Stable.",
    ]


def test_semicolon_question_mark_and_bullets_split() -> None:
    assert _sentences("When examined in the lung window; Nodules are seen. Hernia? \u2022 Atelectasis") == [
        "When examined in the lung window;",
        "Nodules are seen.",
        "Hernia?",
        "Atelectasis",
    ]


def test_ctrate_quote_starts_impression_items() -> None:
    text = 'Bone structures are natural. " Thoracic CT examination within normal limits " Minimal effusion.'
    sections = detect_sections(text)
    assert [s.name for s in sections] == [FINDINGS, IMPRESSION]
    impression = sections[1]
    assert [text[a:b] for a, b in sentence_spans(text, impression.start, impression.end)] == [
        "Thoracic CT examination within normal limits",
        "Minimal effusion.",
    ]


def test_separate_columns_and_headers() -> None:
    text = join_columns("No effusion. Heart normal.", "Normal study.")
    sections = detect_sections(text)
    assert [(s.name, text[s.start : s.end].strip()) for s in sections] == [
        (FINDINGS, "No effusion. Heart normal."),
        (IMPRESSION, "Normal study."),
    ]
    text = "Clinical history: cough. FINDINGS: Small nodule.\nCONCLUSION: Nodule."
    assert [(s.name, text[s.start : s.end].strip()) for s in detect_sections(text)] == [
        (OTHER, "cough."),
        (FINDINGS, "Small nodule."),
        (IMPRESSION, "Nodule."),
    ]


def test_plain_text_is_findings() -> None:
    assert [s.name for s in detect_sections("Minimal atelectasis in both lungs.")] == [FINDINGS]
