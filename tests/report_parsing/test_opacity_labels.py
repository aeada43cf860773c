"""Lung opacity does not take sequela / fibrotic linear densities nor ground-glass nodules (sentences
written here, paraphrasing the reports' wording; no CT-RATE sentence is copied)."""

from __future__ import annotations

import pytest

from core.anatomy_sets import CTRATE_LABELS
from report_parsing.pipeline import analyze_many

OPACITY, SEQUELA, NODULE = (
    CTRATE_LABELS.index(n) for n in ("Lung opacity", "Pulmonary fibrotic sequela", "Lung nodule")
)


def _labels(sentence: str) -> list[int]:
    (analysis,) = analyze_many([f"Findings: {sentence} Impression: See findings."], "ctrate4")
    return list(analysis.labels)


@pytest.mark.parametrize(
    "sentence",
    [
        "Linear densities consistent with sequelae changes are seen in the right lower lobe.",  # the generator's
        "Linear density compatible with sequela is noted in the lingula.",
        "There are linear densities at both lung bases, probably sequelae.",
        "A linear increase in density in keeping with sequelae is seen in the left upper lobe.",
        "Fibrotic linear densities are present in the left upper lobe.",
        "Linear fibrotic densities at the right lung apex.",
        "Subpleural linear density increases suggesting fibrotic sequelae in both lower lobes.",
        "Sequelae linear densities in the right middle lobe.",
    ],
)
def test_sequela_linear_densities_are_sequelae_not_opacities(sentence: str) -> None:
    labels = _labels(sentence)
    assert labels[SEQUELA] == 1 and labels[OPACITY] == 0, sentence


@pytest.mark.parametrize(
    "sentence",
    [
        "A ground-glass nodule of 6 mm is seen in the right upper lobe.",
        "Nonspecific ground glass nodules are present in the left lung.",
    ],
)
def test_a_ground_glass_nodule_is_a_nodule(sentence: str) -> None:
    labels = _labels(sentence)
    assert labels[NODULE] == 1 and labels[OPACITY] == 0, sentence


@pytest.mark.parametrize(
    "sentence",
    [
        "Linear densities are observed in the left lower lobe.",  # no sequela / fibrotic word: still an opacity
        "Patchy densities in the left lower lobe.",
        "Ground-glass densities are seen in the right lower lobe.",
        "Ground-glass opacity and a nodule are seen in the right lower lobe.",
        "Linear densities in the left lower lobe. Fibrotic sequelae in the right upper lobe.",  # another sentence
    ],
)
def test_other_densities_stay_opacities(sentence: str) -> None:
    assert _labels(sentence)[OPACITY] == 1, sentence
