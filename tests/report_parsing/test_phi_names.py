"""report_parsing.names: person names with no cue the rules know are found (spaCy's NER on candidate
sentences + cue rules) and replaced; clinical text, eponyms and the 800 CT-RATE reports stay as they are."""

from __future__ import annotations

import random

import pytest

from report_parsing.names import candidate_sentences, find_names
from report_parsing.phi import scrub_phi, scrub_phi_many
from tests.report_parsing.name_plants import FIRST_NAMES, LAST_NAMES, PATTERNS, plant, planted_names_left

REPORT = (
    "Trachea, both main bronchi are open. Mediastinal main vascular structures, heart contour, size are normal. "
    "No pleural effusion was detected. Lumens are clear. Findings are consistent with Klippel Feil anomaly. "
    "Segmentary atelectasis in the left lung lingula. Covid-19 pneumonia is not considered."
)

PLANTED = [
    ("Wilhelmina Pemberton was scanned for dyspnea.", ["Wilhelmina", "Pemberton"]),
    ("The results were discussed with her son Tobias Pemberton.", ["Tobias", "Pemberton"]),
    ("Compared with the prior examination of Pemberton, Wilhelmina.", ["Pemberton", "Wilhelmina"]),
    ("Patient Ayse Yilmaz tolerated the procedure well.", ["Ayse", "Yilmaz"]),
    ("His wife Rose Baker accompanied the patient.", ["Rose", "Baker"]),  # dictionary words, after a cue
    ("Mehmet Kaya underwent the examination without complication.", ["Mehmet", "Kaya"]),
    ("Findings were explained to Wilhelmina Pemberton on the phone.", ["Wilhelmina", "Pemberton"]),  # model: ORG
    ("Wilhelmina underwent the examination.", ["Wilhelmina"]),
    ("Patient name Wilhelmina Pemberton.", ["Wilhelmina", "Pemberton"]),
    ("Her husband, Tobias, was present.", ["Tobias"]),
]


@pytest.mark.parametrize(("sentence", "needles"), PLANTED, ids=[p[0][:30] for p in PLANTED])
def test_names_without_a_cue_are_replaced(sentence: str, needles: list[str]) -> None:
    result = scrub_phi(f"{REPORT} {sentence}")
    for needle in needles:
        assert needle not in result.text, (needle, result.text)
    assert result.counts["[NAME]"] >= 1
    assert result.text.startswith(REPORT)  # the clinical sentences are untouched


def test_clinical_text_and_eponyms_survive() -> None:
    assert scrub_phi(REPORT).text == REPORT
    assert find_names([REPORT, "Lumens are clear.", "Hypertrophic osteophytic taperings are observed."]) == [[], [], []]


def test_names_can_be_switched_off() -> None:
    text = "Wilhelmina Pemberton was scanned for dyspnea."
    assert scrub_phi(text, names=False).text == text
    assert "Pemberton" not in scrub_phi(text).text


def test_a_last_first_pair_becomes_one_placeholder() -> None:
    assert scrub_phi("Compared with the prior examination of Pemberton, Wilhelmina.").text == (
        "Compared with the prior examination of [NAME]."
    )


def test_every_plant_pattern_is_caught_on_a_synthetic_report() -> None:
    rng = random.Random(7)
    plants = [plant(REPORT, rng, kind) for kind in {kind for kind, _ in PATTERNS} for _ in range(6)]
    results = scrub_phi_many([p.text for p in plants])
    missed = [(p.sentence, r.text) for p, r in zip(plants, results, strict=True) if planted_names_left(p, r.text)]
    assert not missed, missed[:3]
    assert len(FIRST_NAMES) >= 40 and len(LAST_NAMES) >= 40


def test_ctrate_reports_keep_their_text_and_planted_names_go(ctrate_texts: list[str]) -> None:
    """The 800 CT-RATE reports: the name detector changes none of them (the rules' output stays), the
    candidate filter keeps every planted name word, every planted name is replaced, and the 18 labels
    of the scrubbed planted reports equal those of the originals."""
    from report_parsing.pipeline import analyze_many

    with_names = [result.text for result in scrub_phi_many(ctrate_texts)]
    without = [result.text for result in scrub_phi_many(ctrate_texts, names=False)]
    assert with_names == without
    rng = random.Random(0)
    plants = [plant(text, rng) for text in ctrate_texts]
    for p in plants:
        offset = p.text.find(p.sentence)
        spans = candidate_sentences(p.text)
        for name in (p.first, p.last):
            index = p.text.find(name, offset)
            if index >= 0 and p.kind not in ("title", "signature"):  # the rules own titles and signatures
                assert any(a <= index < b for a, b in spans), (p.sentence, name)
    scrubbed = [result.text for result in scrub_phi_many([p.text for p in plants])]
    missed = [p.sentence for p, text in zip(plants, scrubbed, strict=True) if planted_names_left(p, text)]
    assert not missed, missed[:5]
    before = [list(a.labels) for a in analyze_many(without, "ctrate4")]
    after = [list(a.labels) for a in analyze_many(scrubbed, "ctrate4")]
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert not changed, [plants[i].sentence for i in changed[:5]]


def test_the_ner_model_tokenizer_is_the_one_it_was_saved_with() -> None:
    """ner_model() skips reading the model's tokenizer from disk (the default built from its config is used):
    only valid while the two are the same tokenizer, byte for byte."""
    import spacy

    from report_parsing.names import NER_EXCLUDE, _model_dir, ner_model

    saved = spacy.load(_model_dir(), exclude=list(NER_EXCLUDE))
    assert ner_model().tokenizer.to_bytes(exclude=["vocab"]) == saved.tokenizer.to_bytes(exclude=["vocab"])
    assert ner_model().pipe_names == saved.pipe_names == ["tok2vec", "ner"]
