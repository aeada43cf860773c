"""Clause-level anatomy text: the systematic cases of issue #30 on sentences written in the CT-RATE style
(paraphrases written for these tests, not copies of the licensed reports)."""

from __future__ import annotations

import pytest

from report_parsing.analyze import analyze_text, anatomy_text_pieces

NAMES = ("lung", "heart", "esophagus", "aorta", "other")


def texts(report: str) -> dict[str, str]:
    analysis = analyze_text(report, "ctrate4")
    pieces = anatomy_text_pieces(analysis, 4)
    return {name: " ".join(report[a:b] for a, b, _ in pieces[i]) for i, name in enumerate(NAMES) if pieces[i]}


def test_shared_framing_sentence_goes_where_its_finding_is() -> None:
    got = texts("Mediastinal main vascular structures, heart contour and size are normal.")
    assert got == {"heart": "heart contour and size are normal."}


def test_list_in_the_x_and_y_gives_each_anatomy_its_member_with_the_shared_head() -> None:
    got = texts("Calcified atheroma plaques are noted in the wall of the thoracic aorta and coronary arteries.")
    assert got["aorta"] == "Calcified atheroma plaques are noted in the wall of the thoracic aorta"
    assert got["heart"] == "Calcified atheroma plaques are noted in the wall of the coronary arteries."


def test_long_list_of_vessels_splits_between_aorta_and_heart() -> None:
    got = texts("Widespread calcific plaques in the thoracic aorta, its supraaortic branches, coronary arteries.")
    assert "coronary" not in got["aorta"] and "supraaortic" in got["aorta"]
    assert got["heart"].endswith("coronary arteries.") and "thoracic aorta" not in got["heart"]


def test_coordinated_modifiers_keep_the_negation_for_both() -> None:
    got = texts("No pleural or pericardial effusion was seen.")
    assert got["lung"] == "No pleural effusion was seen."
    assert got["heart"] == "No pericardial effusion was seen."


def test_independent_clauses_split_at_and() -> None:
    got = texts("The heart is enlarged and a small sliding hiatal hernia is present.")
    assert got["heart"] == "The heart is enlarged"
    assert got["esophagus"] == "a small sliding hiatal hernia is present."


@pytest.mark.parametrize(
    ("sentence", "absent"),
    [
        ("Ground-glass areas in both lungs (congestion findings secondary to heart failure).", "heart"),
        ("Septal thickening in the lower lobes of both lungs due to cardiac decompensation.", "heart"),
        (
            "Vascular structures were not assessed optimally because the cardiac study was done without contrast.",
            "heart",
        ),
        ("A 12 mm soft tissue lesion lies in the fat pad adjacent to the heart.", "heart"),
        ("A central venous catheter extends to the right atrium.", "heart"),
        ("The nodule in the right lung is smaller than in the prior aortic study.", "aorta"),
    ],
)
def test_mention_by_cause_comparison_or_place_does_not_assign(sentence: str, absent: str) -> None:
    assert absent not in texts(sentence)


def test_cause_does_not_stop_the_sentence_being_the_lungs() -> None:
    got = texts("Ground-glass areas in both lungs (congestion findings secondary to heart failure).")
    assert got == {"lung": "Ground-glass areas in both lungs (congestion findings secondary to heart failure)."}


@pytest.mark.parametrize(
    "sentence",
    [
        "Trachea and both main bronchi are patent.",
        "A hypodense nodule of 6 mm is seen in the left thyroid lobe.",
        "A small cyst is seen in the right lobe of the liver.",
        "When evaluated in the lung parenchyma window;",
        "The pulmonary trunk measures 31 mm.",
    ],
)
def test_other_organs_and_lead_ins_are_other(sentence: str) -> None:
    assert set(texts(sentence)) == {"other"}


def test_lead_in_phrase_is_left_out_of_the_anatomy_text() -> None:
    assert texts("As far as can be seen: heart contour and size are normal.") == {
        "heart": "heart contour and size are normal."
    }


def test_single_anatomy_sentences_stay_whole() -> None:
    report = "Thoracic esophageal calibre is normal and no wall thickening was seen. Emphysema in both upper lobes."
    got = texts(report)
    assert got["esophagus"] == "Thoracic esophageal calibre is normal and no wall thickening was seen."
    assert got["lung"] == "Emphysema in both upper lobes."


def test_abnormal_flags_follow_the_clauses() -> None:
    analysis = analyze_text("A 2 cm mass lies adjacent to the heart. Heart size is normal.", "ctrate4")
    assert analysis.anatomy_abnormal[NAMES.index("heart")] is False
    coronary = analyze_text("Calcified plaques are noted in the aorta and coronary arteries.", "ctrate4")
    assert coronary.anatomy_abnormal[NAMES.index("heart")] and coronary.anatomy_abnormal[NAMES.index("aorta")]


def test_pieces_are_offsets_into_the_text_and_survive_the_pipeline() -> None:
    from report_parsing.pipeline import analyze_many

    report = "Findings: No pleural or pericardial effusion was seen.\nImpression: Normal study."
    fresh = analyze_text(report, "ctrate4")
    (piped,) = list(analyze_many([report], "ctrate4"))
    assert piped.sentence_pieces == fresh.sentence_pieces
    for pieces in fresh.sentence_pieces:
        for _, start, end in pieces:
            assert 0 <= start < end <= len(report)
