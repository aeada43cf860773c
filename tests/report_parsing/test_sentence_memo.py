"""The per-sentence memo (report_parsing.sentence_cache): a memoised sentence gives exactly what
computing it afresh gives, whatever the order reports come in; every match stays inside its sentence;
the memo is bounded."""

from __future__ import annotations

import pytest

from core.anatomy_sets import CTRATE_LABELS
from report_parsing.analyze import analyze_text, lower_keeping_offsets
from report_parsing.pipeline import build_pipeline, forget_everything
from report_parsing.sentence_cache import SentenceCache, sentence_cache_stats

REPORTS = [
    "Findings: Trachea and both main bronchi are open. No pleural effusion was detected. "
    "Calcified atheroma plaques are observed in the aorta and coronary arteries. Heart size is normal.\n"
    "Impression: Coronary artery calcification. No pleural effusion.",
    "Trachea and both main bronchi are open. A 4 mm nodule in the right upper lobe of the lung. "
    "No pleural effusion was detected. Heart size is normal. \" Lung nodule.",
    "No pleural effusion was detected. Sliding hiatal hernia at the lower end of the esophagus. "
    "Minimal pericardial effusion. Heart size is normal. Calcified atheroma plaques are observed in the aorta.",
    "Heart size is normal. Ground-glass opacities in both lungs; consolidation cannot be excluded. "
    "No pleural effusion was detected.",
]


def _parse(texts: list[str], anatomy_set: str = "ctrate4", uncertain_is_positive: bool = True) -> list[dict]:
    nlp = build_pipeline(anatomy_set, uncertain_is_positive=uncertain_is_positive)
    return [
        dict(doc._.fvlm.to_dict(), sents=[(s.start_char, s.end_char) for s in doc.sents]) for doc in nlp.pipe(texts)
    ]


@pytest.mark.parametrize("anatomy_set", ["ctrate4", "radgenome_chest"])
@pytest.mark.parametrize("uncertain_is_positive", [True, False])
def test_memoised_sentences_give_what_fresh_ones_give(anatomy_set: str, uncertain_is_positive: bool) -> None:
    forget_everything()
    cold = _parse(REPORTS, anatomy_set, uncertain_is_positive)
    assert 0 < sentence_cache_stats()["hit_rate"] < 1  # the template sentences repeat across the reports
    warm = _parse(REPORTS, anatomy_set, uncertain_is_positive)
    assert warm == cold
    forget_everything()
    reverse = _parse(REPORTS[::-1], anatomy_set, uncertain_is_positive)[::-1]  # other sentences memoised first
    assert reverse == cold
    assert [
        analyze_text(text, anatomy_set, uncertain_is_positive=uncertain_is_positive).to_dict() for text in REPORTS
    ] == [{key: value for key, value in row.items() if key != "sents"} for row in cold]


def test_a_match_never_crosses_a_sentence_end() -> None:
    # "pericardium ... fluid" may span a few words, but not a line break that ends the sentence
    analysis = analyze_text("Pericardium normal\nFluid in the abdomen.", "ctrate4")
    assert analysis.labels[CTRATE_LABELS.index("Pericardial effusion")] == 0
    assert all(
        analysis.sentences[sentence][0] <= start and end <= analysis.sentences[sentence][1]
        for start, end, _, sentence, _ in analysis.mentions
    )


def test_lower_case_keeps_offsets_for_every_character() -> None:
    text = "İNCELEME: Nodule in the right lung."
    lower = lower_keeping_offsets(text)
    assert len(lower) == len(text) and lower.endswith("nodule in the right lung.")
    analysis = analyze_text(text, "ctrate4")
    assert analysis.labels[CTRATE_LABELS.index("Lung nodule")] == 1


def test_memo_is_bounded_and_keeps_the_newest() -> None:
    cache = SentenceCache(max_entries=4)
    for number in range(10):
        cache.put(f"sentence {number}", number)
        assert len(cache.entries) <= 4
    assert cache.entries.get("sentence 9") == 9
    with pytest.raises(ValueError, match="max_entries"):
        SentenceCache(max_entries=0)


def test_gc_pause_nests_and_restores_the_collector() -> None:
    import gc

    from report_parsing.pipeline import cyclic_gc_paused

    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
        with cyclic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # a collector the caller had disabled stays disabled
    finally:
        gc.enable()
