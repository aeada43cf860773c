"""report_parsing.phi: names in common report positions, identifiers, dates, phones, addresses and
e-mail are replaced; clinical text (measurements, vertebra levels, segments, findings) is left alone."""

from __future__ import annotations

import pytest

from report_parsing.phi import scrub_phi

# (text, needles that must be gone, placeholder expected)
PHI_CASES = [
    ("Patient: John Smith. CT chest without contrast.", ["John", "Smith"], "[NAME]"),
    ("Patient: SMITH, John\nFindings: clear lungs.", ["SMITH", "John"], "[NAME]"),
    ("Patient name: Quentina Zyxwvut", ["Quentina", "Zyxwvut"], "[NAME]"),
    ("Compared by Dr. Ayse Yilmaz with the prior study.", ["Ayse", "Yilmaz"], "[NAME]"),
    ("Assist.Prof.Dr.Rukiye KILICARSLAN Radiology Specialist", ["Rukiye", "KILICARSLAN"], "[NAME]"),
    ("No effusion.\nSigned by Bartholomew Plonk", ["Bartholomew", "Plonk"], "[NAME]"),
    ("No effusion.\nElectronically signed: Jane Doe", ["Jane", "Doe"], "[NAME]"),
    ("Dictated by: Jane Doe", ["Jane", "Doe"], "[NAME]"),
    ("Heart size normal.\n\nMehmet Kaya\n", ["Mehmet", "Kaya"], "[NAME]"),
    ("Heart size normal. -- Mehmet Kaya", ["Mehmet", "Kaya"], "[NAME]"),
    ("Lungs clear.\nGregory House, MD", ["Gregory", "House"], "[NAME]"),
    ("MRN 12345679, stable nodule.", ["12345679"], "[ID]"),
    ("MRN: 12345679", ["12345679"], "[ID]"),
    ("Accession A99887766.", ["A99887766"], "[ID]"),
    ("Compared with A99887766 from last year.", ["A99887766"], "[ID]"),
    ("Reference 88776655 on file.", ["88776655"], "[ID]"),
    ("Case 12345 reviewed.", ["12345"], "[ID]"),
    ("Prior 2024-01-31 study.", ["2024-01-31"], "[DATE]"),
    ("Prior 31/01/2024 study.", ["31/01/2024"], "[DATE]"),
    ("Prior 01.31.2024 study.", ["01.31.2024"], "[DATE]"),
    ("Prior Jan 31, 2024 study.", ["Jan 31, 2024"], "[DATE]"),
    ("Prior 31 January 2024 study.", ["31 January 2024"], "[DATE]"),
    ("Prior 31-Jan-2024 study.", ["31-Jan-2024"], "[DATE]"),
    ("Prior March 2021 study.", ["March 2021"], "[DATE]"),
    ("Call 555-123-4567 with results.", ["555-123-4567"], "[PHONE]"),
    ("Tel: +90 212 555 12 34", ["555 12 34"], "[PHONE]"),
    ("Phone (555) 123-4567.", ["123-4567"], "[PHONE]"),
    ("Lives at 123 Main Street, Springfield.", ["Main Street", "Springfield"], "[ADDRESS]"),
    ("Address: 12 Elm Road, Leeds", ["Elm Road", "Leeds"], "[ADDRESS]"),
    ("Ataturk Caddesi No: 5", ["Ataturk"], "[ADDRESS]"),
    ("Questions to john.smith@example.org please.", ["john.smith@example.org"], "[EMAIL]"),
    ("Performed at Saint Qwerty Hospital.", ["Qwerty"], "[INSTITUTION]"),
]


@pytest.mark.parametrize(("text", "needles", "placeholder"), PHI_CASES, ids=[c[0][:40] for c in PHI_CASES])
def test_phi_is_replaced(text: str, needles: list[str], placeholder: str) -> None:
    result = scrub_phi(text)
    for needle in needles:
        assert needle not in result.text, (needle, result.text)
    assert placeholder in result.text and result.counts[placeholder] >= 1


CLINICAL = [
    "A 12 mm nodule in the right upper lobe; a 3.5 cm mass in liver segment 6 (segment VII is clear).",
    "Compression fracture of T12 and L1; C7 spinous process intact; disc bulge at L4-L5 and L5-S1.",
    "Lesion measures 22x14 mm on series 5 image 379. Density 45 HU. Volume 1200 ml.",
    "DLP 1234 mGy.cm. Slice thickness 1.25 mm. Bilateral pleural effusion, 2 cm thick.",
    "Findings:\nThe lungs are clear.\nImpression:\nRight Lower Lobe Pneumonia",
    "Impression: Normal Study",
    "No acute findings.\nBilateral Pleural Effusion",
    "Mild emphysema. 4th and 5th ribs intact. Aorta 35 mm. Heart size normal.",
]


@pytest.mark.parametrize("text", CLINICAL)
def test_clinical_text_survives(text: str) -> None:
    result = scrub_phi(text)
    assert result.text == text and result.replaced == 0


def test_known_values_from_headers_are_replaced() -> None:
    result = scrub_phi("Quentina was seen; nodule stable.", known_values=["Zyxwvut^Quentina", "Quentina"])
    assert "Quentina" not in result.text


def test_scrubbing_ctrate_reports_keeps_every_label(ctrate_texts: list[str]) -> None:
    """The 800 CT-RATE reports (already anonymised: only exam dates to find): the labels parsed from
    the scrubbed text equal those of the original on every report the scrubber touched."""
    import re

    from report_parsing.pipeline import analyze_many

    scrubbed = [scrub_phi(text).text for text in ctrate_texts]
    changed = [i for i, (a, b) in enumerate(zip(ctrate_texts, scrubbed, strict=False)) if a != b]
    assert len(changed) < 0.3 * len(ctrate_texts)
    measurements = re.compile(r"\b\d+(?:\.\d+)?\s?(?:mm|cm)\b|\b[TLC]\d{1,2}\b")
    for index in changed:
        assert measurements.findall(ctrate_texts[index]) == measurements.findall(scrubbed[index])
    before = list(analyze_many([ctrate_texts[i] for i in changed], "ctrate4"))
    after = list(analyze_many([scrubbed[i] for i in changed], "ctrate4"))
    differing = [i for i, a, b in zip(changed, before, after, strict=False) if list(a.labels) != list(b.labels)]
    assert not differing, differing[:5]
