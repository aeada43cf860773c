"""Negation / uncertainty policy, finding labels and anatomy assignment on CT-RATE-style sentences
(written here; no CT-RATE sentence is copied)."""

from __future__ import annotations

import pytest

from report_parsing.analyze import analyze_text
from report_parsing.labels import LABEL_INDEX, finding_matches, finding_matches_full_scan
from report_parsing.negation import AFFIRMED, NEGATED, UNCERTAIN, SentenceCues, report_cues, report_cues_full_scan
from report_parsing.tokens import TokenView


def _polarity(sentence: str, mention: str) -> str:
    lower = sentence.lower()
    start = lower.index(mention)
    return SentenceCues(lower).classify(start, start + len(mention))


@pytest.mark.parametrize(
    ("sentence", "mention", "expected"),
    [
        ("No pleural effusion was seen.", "pleural effusion", NEGATED),
        ("Pleural effusion-thickening was not observed.", "pleural effusion", NEGATED),
        ("Consolidation was not detected in both lungs.", "consolidation", NEGATED),
        ("The mediastinal lymph nodes are within normal limits.", "lymph nodes", NEGATED),
        ("Bone structures are natural and the hernia sac is absent.", "hernia", NEGATED),
        ("Minimal atelectasis in both lungs and no pleural effusion.", "atelectasis", AFFIRMED),
        ("Minimal atelectasis in both lungs and no pleural effusion.", "pleural effusion", NEGATED),
        ("Nodule in the right lung (granuloma?).", "granuloma", UNCERTAIN),
        ("Findings suspicious for consolidation.", "consolidation", UNCERTAIN),
        ("Malignancy cannot be excluded for the nodule.", "nodule", UNCERTAIN),
        ("A lymph node that did not reach pathological size.", "lymph node", AFFIRMED),
        ("No significant change in the size of the nodule.", "nodule", AFFIRMED),
        ("Emphysematous changes are observed in both lungs.", "emphysematous", AFFIRMED),
    ],
)
def test_negation_policy(sentence: str, mention: str, expected: str) -> None:
    assert _polarity(sentence, mention) == expected


def _labels(text: str) -> set[str]:
    analysis = analyze_text(text, "ctrate4")
    return {label for label, index in LABEL_INDEX.items() if analysis.labels[index]}


def test_normal_report_has_no_label() -> None:
    text = (
        "Trachea and both main bronchi are open. Heart contour and size are normal. Pericardial effusion-thickening "
        "was not observed. No enlarged lymph nodes were detected in the mediastinum. Aeration of both lungs is "
        "normal and no nodular or infiltrative lesion is detected. Pleural effusion-thickening was not detected. "
        'Bone structures are natural. " Thoracic CT within normal limits.'
    )
    assert _labels(text) == set()


def test_abnormal_report_labels() -> None:
    text = (
        "Calcific atheroma plaques are observed in the thoracic aorta and coronary arteries. Cardiomegaly. "
        "A sliding hiatal hernia is seen. Centriacinar emphysema and subsegmental atelectasis in both lungs. "
        "A 4 mm nodule in the right upper lobe. Ground-glass opacities and consolidation in the left lower lobe. "
        "Bilateral minimal pleural effusion. Mosaic attenuation pattern. Peribronchial thickening and "
        "bronchiectasis. Interlobular septal thickening. Fibrotic sequelae in the apex. A central venous catheter. "
        "Minimal pericardial effusion. Millimetric lymph nodes in the mediastinum."
    )
    assert _labels(text) == set(LABEL_INDEX)


def test_effusion_is_placed_by_its_location() -> None:
    assert _labels("Effusion reaching 12 mm is observed in the pericardial space.") == {"Pericardial effusion"}
    assert _labels("Bilateral effusion reaching 2 cm was observed.") == {"Pleural effusion"}
    assert _labels("Minimal free effusion around both kidneys.") == set()


def test_coronary_only_calcification_is_not_arterial_wall_calcification() -> None:
    assert _labels("Calcified atheroma plaques in the coronary arteries.") == {"Coronary artery wall calcification"}
    assert _labels("Wall calcifications in the aorta and coronary arteries.") == {
        "Coronary artery wall calcification",
        "Arterial wall calcification",
    }


def test_lung_labels_need_a_lung_context() -> None:
    assert _labels("Hypodense nodule in the left lobe of the thyroid gland.") == set()
    assert _labels("Leukemic infiltration in the bone structures.") == set()


def test_anatomy_assignment_and_other() -> None:
    text = "Nodule in the right lung and aortic wall calcification. Liver is normal."
    analysis = analyze_text(text, "ctrate4")
    assert analysis.sentence_anatomies == [[0, 3], []]  # lung + aorta; the liver sentence is `other`
    assert analysis.anatomy_abnormal == [True, False, False, True]
    normal = analyze_text("The heart is normal in size. No pleural effusion in either lung.", "ctrate4")
    assert normal.anatomy_abnormal == [False, False, False, False]


def test_abnormal_only_in_findings_still_counts() -> None:
    # fVLM's impression-only rule would call the lung normal here
    analysis = analyze_text(
        'Findings: Subsegmental atelectasis in the left lung.\nImpression: No acute finding.', "ctrate4"
    )
    assert analysis.anatomy_abnormal[0] is True


def test_candidate_scan_equals_full_scan_on_written_text() -> None:
    text = (
        "-Budding tree appearance in the right lung. Calcified plaques (aorta). Pleural or pericardial effusion "
        "was not observed; lymph nodes that did not reach pathological size. Cardiothoracic index increased."
    )
    view = TokenView.from_text(text)
    assert [m.span() for m in finding_matches(text.lower(), view)] == [
        m.span() for m in finding_matches_full_scan(text)
    ]
    lower = text.lower()
    assert report_cues(lower, TokenView.from_text(lower)) == report_cues_full_scan(lower)
