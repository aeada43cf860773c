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


@pytest.mark.parametrize(
    "sentence",
    [
        "Calibration of the mediastinal vascular structures, heart contour and size are natural.",
        "The heart and mediastinal vascular structures look natural.",
    ],
)
def test_vessels_coordinated_with_the_heart_in_one_subject_stay_with_it(sentence: str) -> None:
    assert texts(sentence) == {"heart": sentence}


HEART = "Heart contour and size are normal."  # so the heart has text of its own (see test_flagged_...)


def test_coronary_plaques_listed_with_the_aorta_are_the_aortas_whole() -> None:
    got = texts(
        f"{HEART} Calcified atheroma plaques are noted in the wall of the thoracic aorta and coronary arteries."
    )
    assert (
        got["aorta"] == "Calcified atheroma plaques are noted in the wall of the thoracic aorta and coronary arteries."
    )
    assert got["heart"] == HEART


def test_long_list_of_vessels_stays_with_the_aorta() -> None:
    sentence = "Widespread calcific plaques in the thoracic aorta, its supraaortic branches, coronary arteries."
    got = texts(f"{HEART} {sentence}")
    assert got["aorta"] == sentence and got["heart"] == HEART


@pytest.mark.parametrize(
    "sentence",
    [
        "Dilatation of the ascending aorta and pulmonary trunk.",
        "Calcified plaques on the walls of the thoracic aorta and coronary vascular structures.",
        "The ascending aorta measures 41 mm and the pulmonary trunk 32 mm in diameter.",
    ],
)
def test_great_vessels_beside_the_aorta_join_its_text(sentence: str) -> None:
    assert texts(f"{HEART} {sentence}") == {"heart": HEART, "aorta": sentence}


def test_coronary_plaques_alone_are_no_anatomys_text_but_flag_the_heart() -> None:
    report = f"{HEART} Calcific atherosclerotic plaques are seen in the coronary arteries."
    got = texts(report)
    assert got == {"heart": HEART, "other": "Calcific atherosclerotic plaques are seen in the coronary arteries."}
    assert analyze_text(report, "ctrate4").anatomy_abnormal[NAMES.index("heart")]


def test_pleural_and_pericardial_effusion_sentence_is_the_hearts_whole() -> None:
    assert texts("No pleural or pericardial effusion was seen.") == {
        "heart": "No pleural or pericardial effusion was seen."
    }
    assert texts("Pericardial, pleural effusion or thickening was not detected.") == {
        "heart": "Pericardial, pleural effusion or thickening was not detected."
    }


@pytest.mark.parametrize(
    "sentence",
    [
        "Pleural effusion-thickening was not detected in both hemithorax.",
        "No pleural effusion or thickening was seen.",
        "Both hemithorax are symmetrical.",
    ],
)
def test_pleura_alone_is_not_the_lung(sentence: str) -> None:
    assert texts(f"Emphysema in both upper lobes. {sentence}") == {
        "lung": "Emphysema in both upper lobes.",
        "other": sentence,
    }


def test_pleura_with_a_lung_word_stays_with_the_lung() -> None:
    sentence = "Minimal pleural effusion and compressive atelectasis in the right lower lobe."
    assert texts(sentence) == {"lung": sentence}


def test_hiatal_hernia_is_the_esophagus_only_when_it_names_the_esophagus() -> None:
    normal = "The thoracic esophagus is of normal calibre."
    got = texts(f"{normal} A small sliding hiatal hernia is seen.")
    assert got == {"esophagus": normal, "other": "A small sliding hiatal hernia is seen."}
    named = "A sliding hiatal hernia is seen at the lower end of the esophagus."
    assert texts(named) == {"esophagus": named}
    junction = "Sliding type hiatal hernia at the esophagogastric junction."
    assert texts(junction) == {"esophagus": junction}


@pytest.mark.parametrize(
    ("report", "anatomy"),
    [
        ("Small hiatal hernia.", "esophagus"),
        ("Moderate pleural effusion on the right.", "lung"),
        ("Calcified plaques in the coronary arteries.", "heart"),
    ],
)
def test_flagged_anatomy_without_other_text_keeps_the_flagging_sentence(report: str, anatomy: str) -> None:
    analysis = analyze_text(report, "ctrate4")
    assert analysis.anatomy_abnormal[NAMES.index(anatomy)]
    assert texts(report)[anatomy] == report


def test_coordinated_anatomies_get_their_own_clauses() -> None:
    got = texts("Cardiomegaly and bilateral ground-glass opacities in both lungs.")
    assert got == {"heart": "Cardiomegaly", "lung": "bilateral ground-glass opacities in both lungs."}


def test_a_list_member_with_its_own_finding_does_not_take_the_first_members_head() -> None:
    got = texts(
        "Increased heart size, minimal pericardial effusion, calcified plaques in the aorta and coronary arteries."
    )
    assert got["heart"] == "Increased heart size, minimal pericardial effusion"
    assert got["aorta"] == "calcified plaques in the aorta and coronary arteries."


def test_independent_clauses_split_at_and() -> None:
    got = texts("The heart is enlarged and the distal esophagus shows a small sliding hiatal hernia.")
    assert got["heart"] == "The heart is enlarged"
    assert got["esophagus"] == "the distal esophagus shows a small sliding hiatal hernia."


@pytest.mark.parametrize(
    "sentence",
    [
        "The findings were evaluated in favour of an infectious process.",
        "Viral pneumonia should be considered in the differential diagnosis.",
        "It was interpreted primarily as a fungal infection.",
    ],
)
def test_infection_and_pneumonia_are_the_lungs(sentence: str) -> None:
    assert texts(sentence) == {"lung": sentence}


def test_an_infection_named_in_another_organ_is_not_the_lungs() -> None:
    assert set(texts("An infected cyst is seen in the left kidney.")) == {"other"}


def test_technique_limit_frames_only_its_own_clause() -> None:
    report = (
        "It could not be assessed optimally because no contrast was given, and the heart contour and size are normal."
    )
    assert texts(report) == {"heart": "the heart contour and size are normal."}


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
        "Mediastinal vascular structures and heart examination IV.",
        "The heart could not be evaluated optimally because the study was done without contrast.",
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
