"""The spaCy pipeline: ``spacy.blank("en")`` + registered report components.

Components (in order), each working on character offsets of ``doc.text`` with compiled expressions
(a per-token Python loop would cost more than the tokenizer itself; see docs/report_parsing.md):

=====================  ========================================================================
``fvlm_sentences``     sections (Findings / Impression) and radiology-safe sentence boundaries;
                       sets ``token.is_sent_start`` so ``doc.sents`` works
``fvlm_anatomy``       anatomies per sentence from the anatomy set's vocabulary
``fvlm_findings``      finding mentions, NegEx/ConText-style negation + uncertainty, the 18
                       CT-RATE labels, sentence / anatomy abnormal flags
=====================  ========================================================================

``fvlm_anatomy`` and ``fvlm_findings`` memoise their result per sentence (``report_parsing.sentence_cache``:
report templates repeat sentences), so only sentences not met before are analysed.

Results live in ``doc.user_data["fvlm"]`` as a plain dict (:class:`ReportAnalysis`), which survives
``nlp.pipe(..., n_process=N)``; ``doc._.fvlm`` returns it as a :class:`ReportAnalysis`.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from report_parsing.analyze import ReportAnalysis, ReportScratch, add_anatomies, add_findings, add_sentences
from report_parsing.tokens import TokenView

USER_DATA_KEY = "fvlm"
TEXT_KEY = "fvlm_text"


class TextKeepingTokenizer:
    """spaCy's tokenizer, plus the input text kept in ``doc.user_data``: ``Doc.text`` re-joins every
    token in Python on each access (~0.3 ms for a CT report), more than the whole analysis costs."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> Any:
        doc = self.tokenizer(text)
        doc.user_data[TEXT_KEY] = text
        return doc

    def pipe(self, texts: Iterable[str], batch_size: int = 1000) -> Iterator[Any]:
        for text in texts:
            yield self(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


SCRATCH_KEY = "fvlm_scratch"


def _text(doc: Any) -> str:
    text = doc.user_data.get(TEXT_KEY)
    if text is None:
        text = doc.user_data[TEXT_KEY] = doc.text
    return text


def _scratch(doc: Any) -> ReportScratch:
    scratch = doc.user_data.get(SCRATCH_KEY)
    if scratch is None:
        scratch = doc.user_data[SCRATCH_KEY] = ReportScratch.of(_text(doc), TokenView.from_doc(doc))
    return scratch


def _state(doc: Any) -> ReportAnalysis:
    raw = doc.user_data.get(USER_DATA_KEY)
    if isinstance(raw, ReportAnalysis):
        return raw
    return ReportAnalysis.from_dict(raw) if raw is not None else ReportAnalysis()


def _store(doc: Any, analysis: ReportAnalysis, *, final: bool = False) -> None:
    # between components the object itself; the last component leaves a plain dict (picklable,
    # msgpack-serialisable: it crosses process boundaries with nlp.pipe(n_process=N))
    doc.user_data[USER_DATA_KEY] = analysis.to_dict() if final else analysis


_NOT_SENT_START = (1 << 64) - 1  # -1 as uint64


class SentenceComponent:
    def __init__(self) -> None:
        from spacy.attrs import SENT_START

        self.attrs = [SENT_START]

    def __call__(self, doc: Any) -> Any:
        analysis = ReportAnalysis()
        add_sentences(_text(doc), analysis)
        if len(doc):
            # -1 (not a start) as uint64, the dtype Doc.from_array takes
            sent_start = np.full(len(doc), _NOT_SENT_START, dtype=np.uint64)
            if analysis.sentences:
                first_tokens = _scratch(doc).view.starts.searchsorted(
                    [start for start, _ in analysis.sentences], side="right"
                )
                first_tokens -= 1
                sent_start[np.maximum(first_tokens, 0, out=first_tokens)] = 1  # token of each sentence start
            sent_start[0] = 1
            doc.from_array(self.attrs, sent_start.reshape(-1, 1))
        _store(doc, analysis)
        return doc


class AnatomyComponent:
    def __init__(self, anatomy_set: str) -> None:
        self.anatomy_set = anatomy_set

    def __call__(self, doc: Any) -> Any:
        analysis = _state(doc)
        add_anatomies(analysis, _scratch(doc), self.anatomy_set)
        _store(doc, analysis)
        return doc


class FindingsComponent:
    def __init__(self, anatomy_set: str, uncertain_is_positive: bool) -> None:
        self.anatomy_set = anatomy_set
        self.uncertain_is_positive = uncertain_is_positive

    def __call__(self, doc: Any) -> Any:
        analysis = _state(doc)
        add_findings(analysis, _scratch(doc), self.anatomy_set, uncertain_is_positive=self.uncertain_is_positive)
        _store(doc, analysis, final=True)
        doc.user_data.pop(TEXT_KEY, None)  # transient: not serialised with the Doc
        doc.user_data.pop(SCRATCH_KEY, None)
        return doc


_REGISTERED = False


def register_components() -> None:
    """Register the factories with spaCy (idempotent; also runs in worker processes on import)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from spacy.language import Language
    from spacy.tokens import Doc

    @Language.factory("fvlm_sentences")
    def make_sentences(nlp: Language, name: str) -> SentenceComponent:
        return SentenceComponent()

    @Language.factory("fvlm_anatomy", default_config={"anatomy_set": "ctrate4"})
    def make_anatomy(nlp: Language, name: str, anatomy_set: str) -> AnatomyComponent:
        return AnatomyComponent(anatomy_set)

    @Language.factory("fvlm_findings", default_config={"anatomy_set": "ctrate4", "uncertain_is_positive": True})
    def make_findings(nlp: Language, name: str, anatomy_set: str, uncertain_is_positive: bool) -> FindingsComponent:
        return FindingsComponent(anatomy_set, uncertain_is_positive)

    if not Doc.has_extension("fvlm"):
        Doc.set_extension("fvlm", getter=_state)
    _REGISTERED = True


def import_spacy_without_torch() -> None:
    """Import spaCy with PyTorch hidden from thinc, in a process that has imported neither yet (the
    one-shot ``fvlm parse-reports`` / ``label-reports``): thinc imports ``torch`` only to offer its PyTorch
    wrappers, and that import (~1.2 s of CPU) cost more than parsing 1,600 reports. The report pipeline and
    the NER model (``report_parsing.names``) run on thinc's numpy ops either way: same results. ``import
    torch`` works again afterwards; only thinc's PyTorch wrappers stay off in this process."""
    if any(name in sys.modules for name in ("spacy", "thinc", "torch")):
        return  # too late, or torch is wanted here: nothing changes
    from core.imports import import_hiding

    import_hiding("spacy", "torch")


def build_pipeline(anatomy_set: str = "ctrate4", *, uncertain_is_positive: bool = True) -> Any:
    """``spacy.blank("en")`` with the report components (no model files, works offline)."""
    import spacy

    register_components()
    nlp = spacy.blank("en")
    nlp.tokenizer = TextKeepingTokenizer(nlp.tokenizer)
    nlp.add_pipe("fvlm_sentences")
    nlp.add_pipe("fvlm_anatomy", config={"anatomy_set": anatomy_set})
    nlp.add_pipe("fvlm_findings", config={"anatomy_set": anatomy_set, "uncertain_is_positive": uncertain_is_positive})
    return nlp


def analyze_many(
    texts: Iterable[str],
    anatomy_set: str = "ctrate4",
    *,
    batch_size: int = 256,
    n_process: int = 1,
    uncertain_is_positive: bool = True,
) -> Iterator[ReportAnalysis]:
    """ReportAnalysis per text, in order, through ``nlp.pipe`` (multi-process when n_process > 1)."""
    nlp = build_pipeline(anatomy_set, uncertain_is_positive=uncertain_is_positive)
    for doc in nlp.pipe(texts, batch_size=batch_size, n_process=n_process):
        yield _state(doc)


_GC_LOCK = threading.Lock()
_GC_PAUSES = [0, False]  # [active pauses, whether the collector was enabled before the first]


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while reports are parsed and their results kept.

    The results accumulate and are long-lived, so they trigger full collections, and each one rescans
    every object of the process: 15-25 % of the parse time when a cohort's results are kept (measured,
    docs/report_parsing.md). The pipeline makes no reference cycles, so reference counting still frees
    everything. Nested and concurrent (threaded) pauses are counted; the last one out restores the
    collector's previous state."""
    with _GC_LOCK:
        if _GC_PAUSES[0] == 0:
            _GC_PAUSES[1] = gc.isenabled()
            gc.disable()
        _GC_PAUSES[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_PAUSES[0] -= 1
            if _GC_PAUSES[0] == 0 and _GC_PAUSES[1]:
                gc.enable()


def forget_everything() -> None:
    """A cold start: the sentence memos, the per-clause / per-piece caches and the learnt word types
    (benchmarks comparing a first pass over unseen reports)."""
    from report_parsing import analyze, labels, sentences
    from report_parsing.sentence_cache import clear_sentence_caches
    from report_parsing.tokens import TYPE_TABLE

    clear_sentence_caches()
    for text_cache in (
        analyze.names_only_other_organ,
        labels.may_need_location,
        labels.labels_with_location,
        labels.resolve_effusion,
    ):
        text_cache.cache_clear()
    sentences.clear_text_caches()
    TYPE_TABLE.forget()
